"""Divide unit: floor(n / d) (docs/numerics.md §8). Hardware: ``hw.div.Divide``."""
import numpy as np

from .fixed import check_range, to_int

__all__ = ["divide", "N_BITS", "D_BITS"]

N_BITS = 33
D_BITS = 32


def divide(n, d):
    """``floor(n/d)`` for n uint33, d uint32; ``d == 0`` saturates to 2**33 − 1."""
    n = check_range(to_int(n, "n"), 0, (1 << N_BITS) - 1, name="n")
    d = check_range(to_int(d, "d"), 0, (1 << D_BITS) - 1, name="d")
    return np.where(d == 0, (1 << N_BITS) - 1, n // np.maximum(d, 1))
