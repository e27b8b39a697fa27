"""Exp unit: 2^(−u/256) in Q1.15 (docs/numerics.md §7). Hardware: ``hw.exp.Exp``."""
import numpy as np

from .fixed import check_range, round_half_up, rshift_round, to_int

__all__ = ["exp", "EXP_LUT", "U_BITS", "E_ONE"]

U_BITS = 16
E_ONE = 1 << 15
# 2^(−f/256) for the fractional part f; the integer part of u becomes a shift.
EXP_LUT = round_half_up(E_ONE * 2.0 ** (-np.arange(256) / 256.0))


def exp(u):
    """``e = round(2^15 · 2^(−u/256))`` via LUT and shift; u uint16 (Q8.8), e uint16 (Q1.15)."""
    u = check_range(to_int(u, "u"), 0, (1 << U_BITS) - 1, name="u")
    n, f = u >> 8, u & 255
    return np.where(n < 16, rshift_round(EXP_LUT[f], np.minimum(n, 15)), 0)
