"""Integer LayerNorm, row-local in a PE (docs/numerics.md §10)."""
import numpy as np

from .fixed import INT16, INT32, check_range, clip, round_half_up, rshift_round, to_int
from .reduce import reduce_sum
from .rsqrt import rsqrt

__all__ = ["layernorm", "layernorm_constants", "MAX_D"]

MAX_D = 1024


def layernorm_constants(gamma, beta, s_h, s_out, eps):
    """Per-row constants: ``r_D``, ``E``, per-column ``G`` (int16), ``B`` (int32) and ``sh_o``."""
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    d = gamma.shape[0]
    if not 1 <= d <= MAX_D or beta.shape != gamma.shape:
        raise ValueError(f"LayerNorm width must be 1..{MAX_D} with matching beta, got {gamma.shape}, {beta.shape}")
    g = gamma * np.sqrt(d) / s_out
    sh_o = 47
    while sh_o > 0 and np.max(np.abs(round_half_up(g * 2.0 ** (sh_o - 15)))) >= 1 << 15:
        sh_o -= 1
    G = round_half_up(g * 2.0 ** (sh_o - 15))
    B = np.clip(round_half_up(beta / s_out * 2.0 ** sh_o), *INT32)
    r_d = int(round_half_up(2.0 ** 24 / d))
    E = int(min((1 << 40) - 1, round_half_up(eps * d / s_h ** 2)))  # a 40-bit field
    return dict(r_d=r_d, E=E, G=G, B=B, sh_o=sh_o)


def layernorm(h, r_d, E, G, B, sh_o, lo=-128, hi=127):
    """LayerNorm over the last axis of int16 ``h``; returns ``clip(..., lo, hi)`` (int8 by default)."""
    h = check_range(to_int(h, "h"), *INT16, name="h")
    if h.shape[-1] == 0:
        return h.copy()
    mu = rshift_round(reduce_sum(h) * int(r_d), 24)
    c = h - mu[..., None]
    v = reduce_sum(c * c) + int(E)
    R, p = rsqrt(v)
    n = clip(rshift_round(c * R[..., None], 7 + p[..., None]), *INT16)
    G = check_range(to_int(G, "G"), -(1 << 15), (1 << 15) - 1, name="G")
    B = check_range(to_int(B, "B"), *INT32, name="B")
    return clip(rshift_round(n * G + B, int(sh_o)), lo, hi)
