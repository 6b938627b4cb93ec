"""Variants registered by name (advantage estimators, recipes' stages, executors, unit kinds, experiments):
one decorator to file them, one lookup that fails listing the valid names.

    STAGES: dict[str, Callable] = {}
    stage = registrar(STAGES)        # then @stage("rl") over a function
    run = lookup(STAGES, "rl", "stage")
"""

from __future__ import annotations

from typing import Callable

from excursions.errors import UserError


def lookup(registry: dict, name: str, what: str):
    """registry[name], or a UserError listing the valid names.

    >>> lookup({"a": 1}, "b", "thing")
    Traceback (most recent call last):
    ...
    excursions.errors.UserError: unknown thing 'b'; choose one of a
    """
    if name not in registry:
        raise UserError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def registrar(registry: dict) -> Callable:
    """A decorator factory that files functions (or classes) in `registry` by name."""

    def named(name: str):
        def register(fn):
            registry[name] = fn
            return fn

        return register

    return named
