"""Optimisers as static arguments of compiled code, equal when built alike.

An optax optimiser is a pair of closures. Built twice with the same
hyperparameters, ``optax.adam(0.01)`` gives two different pairs of function
objects, which as static arguments of a compiled loop would compile it again.
:class:`StaticOptimizer` compares optimisers by what their closures are made
of (code, defaults and captured values, recursively), so an optimiser built
again with the same hyperparameters reuses the compiled loop, and one with
other hyperparameters (baked into the compiled code) does not.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import numpy as np

# Arrays captured by a closure compare by value up to this size, by identity beyond.
_MAX_COMPARED_ELEMENTS = 4096


class _Same:
    """Compares equal only to itself's target (``is``), for values we cannot look into."""

    __slots__ = ("target",)

    def __init__(self, target):
        self.target = target

    def __eq__(self, other):
        return isinstance(other, _Same) and other.target is self.target

    def __hash__(self):
        return id(self.target)


def structural_key(obj: Any, _seen: frozenset = frozenset()) -> Any:
    """A hashable description of ``obj`` that is equal for functions built alike."""
    if id(obj) in _seen:
        return ("cycle",)
    seen = _seen | {id(obj)}
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, type, types.CodeType)):
        return (type(obj), obj)
    if isinstance(obj, types.FunctionType):
        cells = tuple(structural_key(c.cell_contents, seen) if _filled(c) else ("empty",)
                      for c in obj.__closure__ or ())
        defaults = structural_key(obj.__defaults__, seen)
        kwdefaults = structural_key(obj.__kwdefaults__, seen)
        return ("function", obj.__code__, id(obj.__globals__), cells, defaults, kwdefaults)
    if isinstance(obj, functools.partial):
        return ("partial", structural_key(obj.func, seen), structural_key(obj.args, seen),
                structural_key(obj.keywords, seen))
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(structural_key(x, seen) for x in obj))
    if isinstance(obj, dict):
        return (type(obj), tuple(sorted((repr(k), structural_key(v, seen)) for k, v in obj.items())))
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and np.size(obj) <= _MAX_COMPARED_ELEMENTS:
        try:
            arr = np.asarray(obj)
        except Exception:  # a tracer, or an array that cannot be read
            return ("object", _Same(obj))
        return ("array", arr.dtype.str, arr.shape, arr.tobytes())
    return ("object", _Same(obj))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


class StaticOptimizer:
    """An optax optimiser that hashes and compares by its structure (see above)."""

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        self._key = structural_key(value)

    def __eq__(self, other):
        return isinstance(other, StaticOptimizer) and self._key == other._key

    def __hash__(self):
        return hash(self._key)
