"""Aggregation strategies, found by name: `register(name)`, `get(name)`, `names()`.

Owns the registry. Every module of this package is imported once, on first use, so a strategy
in a new module registers itself: adding one touches that module only. The node, config and
privacy ask the registry (`get(config.aggregation)`) instead of comparing names.

Must not touch: what a strategy does (its module owns that) and the node's state.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from p2pfl.strategies.base import RoundContext, Strategy

__all__ = ["RoundContext", "Strategy", "register", "get", "names"]

_REGISTRY: dict[str, Strategy] = {}
_HELPERS = {"base", "secure"}  # modules of this package that define no strategy
_loaded = False


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make the strategy selectable as `aggregation = name`."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"aggregation strategy {name!r} is registered twice "
                             f"({type(_REGISTRY[name]).__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return add


def _load() -> None:
    """Import every strategy module of the package (sorted, so the registry order is fixed)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in _HELPERS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def get(name: str) -> Strategy:
    """The strategy registered as `name`; ValueError naming the known ones otherwise."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown aggregation {name!r}: use one of {', '.join(names())}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered strategy name: the built-in ones first, then the rest alphabetically."""
    _load()
    builtin = [n for n in ("gossip", "fedavg") if n in _REGISTRY]
    return tuple(builtin + sorted(n for n in _REGISTRY if n not in builtin))
