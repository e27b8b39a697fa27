"""Integer softmax, row-local in a PE (docs/numerics.md §9)."""
import math

import numpy as np

from .divide import divide
from .exp import exp
from .fixed import INT32, check_range, rshift_round, to_int
from .reduce import reduce_max, reduce_sum
from .requant import encode_multiplier

__all__ = ["softmax", "softmax_constants", "exp_weights", "P_ONE"]

P_ONE = 256  # scale of the uint8 probabilities


def softmax_constants(score_scale):
    """``(c_e, sh_e)`` with ``c_e/2**sh_e ≈ 256·score_scale·log2(e)``."""
    m, sh = encode_multiplier(256.0 * float(score_scale) * math.log2(math.e))
    return int(m), int(sh)


def _exp_q15(s, c_e, sh_e):
    """``e_j = exp(min(65535, rshift_round((max S − S_j)·c_e, sh_e)))``, Q1.15, row max = 2^15."""
    z = reduce_max(s)[..., None] - s                        # uint32
    return exp(np.minimum(65535, rshift_round(z * int(c_e), int(sh_e))))


def exp_weights(s, c_e, sh_e):
    """Unnormalized attention weights ``min(255, rshift_round(e_j, 7))`` (uint8, docs §9)."""
    s = check_range(to_int(s, "scores"), *INT32, name="scores")
    if s.shape[-1] == 0:
        return s.copy()
    return np.minimum(255, rshift_round(_exp_q15(s, c_e, sh_e), 7))


def softmax(s, c_e, sh_e):
    """Softmax over the last axis of int32 scores ``s``; returns uint8 probabilities (scale 1/256)."""
    s = check_range(to_int(s, "scores"), *INT32, name="scores")
    if s.shape[-1] == 0:
        return s.copy()
    e = _exp_q15(s, c_e, sh_e)
    r = divide(1 << 32, reduce_sum(e))                      # σ ≥ 2**15
    return np.minimum(255, rshift_round(e * r[..., None], 24))
