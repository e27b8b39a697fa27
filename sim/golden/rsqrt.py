"""Rsqrt unit: R·2^(−22−p) ≈ 1/√v (docs/numerics.md §11). Hardware: ``hw.rsqrt.Rsqrt``."""
import numpy as np

from .fixed import check_range, round_half_up, to_int

__all__ = ["rsqrt", "RSQRT_LUT", "V_BITS", "R_FRAC"]

V_BITS = 48
R_FRAC = 22
# 1/√ of each bucket's midpoint (the bucket is the top 10 bits of a 16-bit mantissa), uint15 so
# that it is a lane multiplier.
RSQRT_LUT = round_half_up(2.0 ** R_FRAC / np.sqrt(64.0 * (np.arange(256, 1024) + 0.5)))


def _bit_length(v):
    # Exact for v < 2**53: float64 frexp returns the binary exponent.
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def rsqrt(v):
    """Return ``(R, p)``: R uint15 mantissa and p (−7..16) with ``R·2**(−22−p) ≈ 1/√max(v,1)``."""
    v = check_range(to_int(v, "v"), 0, (1 << V_BITS) - 1, name="v")
    v = np.maximum(v, 1)
    p = (_bit_length(v) - 15) // 2
    mant = np.where(p >= 0, v >> np.maximum(2 * p, 0), v << np.maximum(-2 * p, 0))
    return RSQRT_LUT[(mant >> 6) - 256], p
