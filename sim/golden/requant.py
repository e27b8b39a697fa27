"""Requantization and the rescaling add (docs/numerics.md §4, §5). Hardware: lane operations."""
import math

import numpy as np

from .fixed import INT32, check_range, clip, rshift_round, to_int

__all__ = ["requant", "add", "encode_multiplier", "M_BITS", "MAX_SHIFT"]

M_BITS = 15
MAX_SHIFT = 47


def encode_multiplier(ratio):
    """Encode a real ratio as ``(m, sh)`` with ``m / 2**sh ≈ ratio``, m uint15, sh ≤ 47.

    Vectorized over ``ratio``; raises ``ValueError`` for a ratio ≥ 2**15, negative or not finite.
    """
    r = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"multiplier ratio must be finite and ≥ 0, got {ratio}")
    if np.any(r >= (1 << M_BITS) - 0.5):
        raise ValueError(f"multiplier ratio {r.max()} does not fit {M_BITS} bits with shift ≥ 0")
    m = np.zeros(r.shape, dtype=np.int64)
    sh = np.zeros(r.shape, dtype=np.int64)
    for idx, x in np.ndenumerate(r):
        s = MAX_SHIFT if x == 0 else min(MAX_SHIFT, max(0, M_BITS - 1 - math.floor(math.log2(x))))
        while s > 0 and math.floor(x * 2.0 ** s + 0.5) >= 1 << M_BITS:
            s -= 1
        m[idx], sh[idx] = math.floor(x * 2.0 ** s + 0.5), s
    return m, sh


def _check_ms(m, sh):
    m = check_range(to_int(m, "m"), 0, (1 << M_BITS) - 1, name="m")
    sh = check_range(to_int(sh, "sh"), 0, MAX_SHIFT, name="sh")
    return m, sh


def requant(acc, m, sh, lo, hi):
    """``clip(rshift_round(acc*m, sh), lo, hi)``; m, sh broadcast per column."""
    acc = check_range(to_int(acc, "acc"), *INT32, name="acc")
    m, sh = _check_ms(m, sh)
    return clip(rshift_round(acc * m, sh), lo, hi)


def add(a, b, m, sh, lo, hi):
    """Residual add with rescale: ``clip(a + rshift_round(b*m, sh), lo, hi)``."""
    a = check_range(to_int(a, "a"), *INT32, name="a")
    b = check_range(to_int(b, "b"), *INT32, name="b")
    m, sh = _check_ms(m, sh)
    return clip(a + rshift_round(b * m, sh), lo, hi)
