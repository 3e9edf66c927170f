"""The one reader of environment variables: every setting of every part goes through here.

Each part keeps its settings in a frozen dataclass with a ``from_env``; they all read a
variable the same way: an unset or blank variable takes the default, a value is stripped and
converted, and a value that does not convert is a :class:`SettingError` that names the
variable and what it wants (the page, the server and the container print it and stop). The
names read through :func:`read` are the ones ``tests/test_docs.py`` checks against
``docs/configuration.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar, overload

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}

# TypeVars rather than PEP 695 syntax: the image's supervisor and this module may run on an
# older Python than the app (container/serve runs under whatever python3 the image has).
T = TypeVar("T", int, float, bool, str)
N = TypeVar("N", int, float)


class SettingError(ValueError):
    """A variable's value is not what the setting takes."""


def environment(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``env`` if given (tests pass their own), else the process environment."""
    return os.environ if env is None else env


@overload
def read(env: Mapping[str, str], name: str, kind: type[T], default: T) -> T: ...
@overload
def read(env: Mapping[str, str], name: str, kind: type[T], default: None = None) -> T | None: ...
def read(env: Mapping[str, str], name: str, kind: type[T], default: T | None = None) -> T | None:
    """The value of ``name`` as ``kind``; ``default`` when it is unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if kind is bool:
        lowered = raw.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE  # type: ignore[return-value]
    else:
        try:
            return kind(raw)
        except ValueError:
            pass
    raise SettingError(f"{name}={raw!r} is not {_KIND_NAMES[kind]}")


def positive(name: str, value: N) -> N:
    """``value``, or a :class:`SettingError` naming ``name`` when it is not above zero."""
    if value <= 0:
        raise SettingError(f"{name} must be positive, got {value!r}")
    return value
