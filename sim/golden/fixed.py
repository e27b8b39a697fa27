"""Integer helpers shared by every golden unit: rounding shift, saturation, width checks.

docs/numerics.md §1: one rounding mode, round half up.
"""
import numpy as np

__all__ = ["rshift_round", "clip", "check_range", "to_int", "round_half_up", "INT8", "INT9", "INT16",
           "INT32", "UINT8"]

INT8 = (-128, 127)
INT9 = (-256, 255)
UINT8 = (0, 255)
INT16 = (-32768, 32767)
INT32 = (-(1 << 31), (1 << 31) - 1)


def to_int(x, name="value"):
    """Return ``x`` as an int64 array, refusing floats, NaN and non-numeric input."""
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a.astype(np.int64)


def check_range(x, lo, hi, name="value"):
    """Assert that every element of ``x`` lies in [lo, hi] (a hardware width)."""
    x = np.asarray(x)
    if x.size and (x.min() < lo or x.max() > hi):
        raise OverflowError(f"{name} outside [{lo}, {hi}]: found [{x.min()}, {x.max()}]")
    return x


def rshift_round(x, sh):
    """``(x + 2**(sh-1)) >> sh`` (round half up); ``x`` unchanged for ``sh == 0``.

    ``sh`` may be a scalar or broadcast against ``x`` (per-column shifts).
    """
    x = np.asarray(x, dtype=np.int64)
    sh = np.asarray(sh, dtype=np.int64)
    if np.any(sh < 0) or np.any(sh > 62):
        raise ValueError(f"shift out of range 0..62: {sh}")
    half = np.where(sh > 0, np.left_shift(np.int64(1), np.maximum(sh - 1, 0)), 0)
    return np.right_shift(x + half, sh)


def clip(x, lo, hi):
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def round_half_up(x):
    """Host-side float → integer rounding (same mode as the hardware): floor(x + 0.5)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)
