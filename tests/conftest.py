"""Shared fixtures: the evaluation set (skipped, saying so, where it is absent)."""

from __future__ import annotations

import pytest

from components.evaluation import Clip, eval_dir, load_clips


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    found = load_clips()
    if not found:
        pytest.skip(f"speech evaluation set not found at {eval_dir()} (set EVAL_DIR)")
    return {c.id: c for c in found}
