"""Attention operations (docs/numerics.md §14): single-head, multi-head, linear."""
import numpy as np

from .activation import activation
from .divide import divide
from .fixed import INT8, INT9, INT32, clip, rshift_round, to_int
from .mac import matmul, wrap32
from .requant import requant
from .softmax import exp_weights

__all__ = ["attention", "mha", "linear_attention", "linear_mha", "mantissa15", "DEN_MIN"]

DEN_MIN = 1 << 8


def mantissa15(r, sh):
    """Round a reciprocal ``r`` to a uint15 multiplier: ``(m, sh')`` with ``m/2**sh' ≈ r/2**sh``.

    ``k = max(0, bit_length(r) − 15)`` low bits are rounded off (relative error ≤ 2⁻¹⁵), so that the
    product with an accumulator fits the lanes' 33×15 multiplier (docs/numerics.md §9).
    """
    r = to_int(r, "r")
    k = np.maximum(0, np.frexp(np.maximum(r, 1).astype(np.float64))[1].astype(np.int64) - 15)
    if np.any(k > sh):
        raise ValueError("reciprocal too large for its shift")
    m = rshift_round(r, k)
    # Rounding up can reach 2^15 (r = 65535): the same value as (2^14, one less shift), in 15 bits.
    top = m == 1 << 15
    return np.where(top, 1 << 14, m), sh - k - top


def attention(q, k, v, c_e, sh_e, m_a, sh_a, trace=None, out=INT9):
    """One head: ``softmax(q·kᵀ)·v`` with deferred normalization; q, k, v int8 (..., N, d) → int8.

    The unnormalized weights ``w = exp_weights(S)`` (uint8, the row maximum ≈ 255) multiply V;
    each output row is divided by ``Σw`` afterwards (one divide per row), then requantized per
    column to ``out`` (int9: the result is the A operand of Wo). The 1/√d scale is folded into Wq;
    ``c_e, sh_e`` encode the score scale.
    """
    s = matmul(q, np.swapaxes(to_int(k, "k"), -1, -2))
    w = exp_weights(s, c_e, sh_e)
    m_r, sh_r = mantissa15(divide(np.full(w.shape[:-1], 1 << 32), w.sum(axis=-1)), 24)
    t = rshift_round(matmul(w, v) * m_r[..., None], sh_r[..., None])   # Σ_j p_j v_j in units of 1/256
    a = requant(t, m_a, sh_a, *out)
    if trace is not None:
        trace.setdefault("scores", []).append(s)
        trace.setdefault("expw", []).append(w)
    return a


def mha(q, k, v, heads, c_e, sh_e, m_a, sh_a, trace=None, out=INT9):
    """Multi-head attention: heads are column slices of q, k, v (offset h·d, width d)."""
    dim = q.shape[-1]
    if heads < 1 or dim % heads:
        raise ValueError(f"{dim} columns cannot be split into {heads} heads")
    d = dim // heads
    m_a, sh_a = np.broadcast_to(m_a, (dim,)), np.broadcast_to(sh_a, (dim,))
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        outs.append(attention(q[..., sl], k[..., sl], v[..., sl], c_e, sh_e, m_a[sl], sh_a[sl], trace, out))
    if trace is not None:
        for key in ("scores", "expw"):
            trace[key] = np.stack(trace[key], axis=-3)  # (..., heads, N, N)
    return np.concatenate(outs, axis=-1)


def linear_attention(q, k, v, lut_q, lut_k, m_t, sh_t, m_o, sh_o, out=INT9):
    """Linear attention φ(Q)(φ(K)ᵀV) / φ(Q)Σφ(K), φ = elu+1 by table; one head, int8 in, int9 out.

    ``m_t, sh_t`` are per-column multipliers of the (d+1)-column ``T = φkᵀ·[v | 1]`` (the last
    column is Σφk); ``m_o, sh_o`` rescale the quotient to the output scale.
    """
    phq = activation(q, lut_q)
    phk = activation(k, lut_k)
    v = to_int(v, "v")
    ones = np.ones(v.shape[:-1] + (1,), dtype=np.int64)
    t = matmul(np.swapaxes(phk, -1, -2), np.concatenate([v, ones], axis=-1))
    t8 = requant(t, m_t, sh_t, *INT8)
    u = matmul(phq, t8)
    num, den = u[..., :-1], u[..., -1]
    # den below 2^8 is clamped: r < 2^25, so its 15-bit mantissa keeps a right shift ≥ 6, and
    # |t| ≤ 2^8·|num| < 2^31 for d ≤ 256 (|num| ≤ d·255·128; the compiler checks d). t wraps to
    # 32 bits as the RSCALE stage does (never for such d).
    r = divide(np.full(den.shape, 1 << 32), np.clip(den, DEN_MIN, INT32[1]))
    m_r, sh_r = mantissa15(r, 16)
    t = np.where(den[..., None] > 0,
                 wrap32(rshift_round(num * m_r[..., None], sh_r[..., None])), 0)
    return clip(rshift_round(t * to_int(m_o, "m_o"), sh_o), *out)


def linear_mha(q, k, v, heads, lut_q, lut_k, m_t, sh_t, m_l, sh_l, out=INT9):
    """Multi-head linear attention: heads are column slices of int8 q, k, v (offset h·d,
    width d), each :func:`linear_attention` with the φ tables ``lut_q``, ``lut_k``;
    ``m_t, sh_t`` hold heads·(d+1) columns (head h at h·(d+1)), ``m_l, sh_l`` one per output
    column."""
    dim = q.shape[-1]
    if heads < 1 or dim % heads:
        raise ValueError(f"{dim} columns cannot be split into {heads} heads")
    d = dim // heads
    m_t, sh_t = np.broadcast_to(m_t, (heads * (d + 1),)), np.broadcast_to(sh_t, (heads * (d + 1),))
    m_l, sh_l = np.broadcast_to(m_l, (dim,)), np.broadcast_to(sh_l, (dim,))
    outs = []
    for h in range(heads):
        sl, st = slice(h * d, (h + 1) * d), slice(h * (d + 1), (h + 1) * (d + 1))
        outs.append(linear_attention(q[..., sl], k[..., sl], v[..., sl], lut_q, lut_k, m_t[st],
                                     sh_t[st], m_l[sl], sh_l[sl], out))
    return np.concatenate(outs, axis=-1)
