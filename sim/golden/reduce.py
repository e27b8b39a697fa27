"""Reduction tree (docs/numerics.md §6). Hardware: ``hw.reduce.Reduce``."""

from .fixed import to_int

__all__ = ["reduce_sum", "reduce_max"]


def reduce_sum(x, axis=-1):
    """Exact integer sum over ``axis`` (0 for an empty row)."""
    return to_int(x, "x").sum(axis=axis)


def reduce_max(x, axis=-1):
    """Integer maximum over ``axis``; an empty row has no maximum."""
    x = to_int(x, "x")
    if x.shape[axis] == 0:
        raise ValueError("reduce_max of an empty row")
    return x.max(axis=axis)
