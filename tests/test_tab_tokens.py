"""Tab tokens: unguessable, one per tab, bounded, forgotten with the tab."""

from __future__ import annotations

from components.page.tab_tokens import TabTokens


def test_one_token_per_tab_and_back() -> None:
    tokens = TabTokens()
    a, b = tokens.token_for("tab-a"), tokens.token_for("tab-b")
    assert a != b and len(a) >= 24
    assert tokens.token_for("tab-a") == a
    assert tokens.owner_of(a) == "tab-a" and tokens.owner_of(b) == "tab-b"
    assert tokens.owner_of(a[:-1]) is None
    tokens.forget("tab-a")
    assert tokens.owner_of(a) is None
    assert tokens.token_for("tab-a") != a  # a new tab gets a new link


def test_the_oldest_tab_is_forgotten_beyond_the_limit() -> None:
    tokens = TabTokens(limit=2)
    first = tokens.token_for("1")
    second = tokens.token_for("2")
    tokens.token_for("1")  # used again: now the newest
    tokens.token_for("3")
    assert tokens.owner_of(first) == "1"
    assert tokens.owner_of(second) is None
