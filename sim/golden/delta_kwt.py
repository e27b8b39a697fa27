"""Delta KWT: the integer KWT with delta-threshold encoded matmul inputs (docs/numerics.md §13).

Every matmul whose A operand is a sequence of token rows can take ``X̂`` instead of ``X``:
``X̂(t) = X̂(t−1) + Δ(t)`` with ``Δ(t)`` the change ``X(t) − X̂(t−1)`` where it exceeds θ
(elementwise), else 0, and ``Δ(0) = X(0)``. The matmul then runs incrementally,
``y(t) = y(t−1) + Δ(t)·W``, and only the nonzero ``Δ`` cost MACs; ``y(t) = X̂(t)·W`` exactly, so
this model computes ``matmul(X̂, W)`` and counts ``nnz(Δ)·N`` executed MACs. With θ = 0,
``X̂ = X`` and the logits equal :func:`sim.golden.kwt` bit for bit.

Sites (each with its own θ, 0…255; ``None`` = dense, not delta-encoded):

============ ============================================ =========== =============
site         A operand (rows = tokens)                    range       matmul
============ ============================================ =========== =============
``embed``    MFCC frames (class-token row 0 = 0)           int8        · Wpᵀ
``qkv``      layer input x                                 int9        · [Wq;Wk;Wv]ᵀ
``scores``   q of each head                                int9        · kᵀ
``pv``       attention weights w of each head (§9)         uint8       · V
``wo``       attention output                              int9        · Woᵀ
``ffn1``     LayerNorm-1 output x1                         int9        · W1ᵀ
``ffn2``     GELU output                                   int9        · W2ᵀ
============ ============================================ =========== =============

Residuals, K, V and the LayerNorms use the exact values. For ``pv`` the row normalizer is
``Σ_j ŵ_j`` (at least 1), so that numerator and denominator come from the same weights.
"""
import numpy as np

from .activation import activation
from .attention import mantissa15
from .divide import divide
from .fixed import INT8, INT9, INT16, rshift_round, to_int
from .layernorm import layernorm
from .mac import matmul
from .requant import add, requant
from .softmax import exp_weights

__all__ = ["SITES", "delta_rows", "kwt_delta", "dense_macs", "normalize_thresholds"]

SITES = ("embed", "qkv", "scores", "pv", "wo", "ffn1", "ffn2")


def normalize_thresholds(theta):
    """``theta`` as a dict over :data:`SITES`: a number applies to every site, a dict names
    some sites (the rest dense); values must be integers 0…255 or ``None``."""
    if theta is None:
        out = dict.fromkeys(SITES)
    elif isinstance(theta, dict):
        bad = set(theta) - set(SITES)
        if bad:
            raise ValueError(f"unknown delta sites {sorted(bad)}; sites are {', '.join(SITES)}")
        out = {s: theta.get(s) for s in SITES}
    else:
        out = dict.fromkeys(SITES, theta)
    for s, t in out.items():
        if t is None:
            continue
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) <= 255:
            raise ValueError(f"delta threshold of site {s!r} must be an integer 0..255, got {t!r}")
        out[s] = int(t)
    return out


def delta_rows(x, theta):
    """Delta-encode token rows along axis −2 of ``x`` (..., T, D); returns ``(xhat, nnz)``.

    ``nnz`` (..., T) counts the nonzero Δ of each row — the (index, value) pairs the array must
    broadcast. ``theta=None`` returns ``x`` itself and its nonzero count (zero-skipping only).
    """
    x = to_int(x, "x")
    if theta is None or x.shape[-2] == 0:
        return x, np.count_nonzero(x, axis=-1)
    xhat = np.empty_like(x)
    nnz = np.empty(x.shape[:-1], dtype=np.int64)
    xhat[..., 0, :] = x[..., 0, :]
    nnz[..., 0] = np.count_nonzero(x[..., 0, :], axis=-1)
    for t in range(1, x.shape[-2]):
        d = x[..., t, :] - xhat[..., t - 1, :]
        send = np.abs(d) > theta
        xhat[..., t, :] = np.where(send, x[..., t, :], xhat[..., t - 1, :])
        nnz[..., t] = np.count_nonzero(send & (d != 0), axis=-1)
        # Row 0 sends its nonzero values; later rows send their nonzero changes above θ.
    return xhat, nnz


class _Count:
    """MAC counts per batch element (arrays of the batch shape)."""

    def __init__(self, batch_shape):
        self.dense = np.zeros(batch_shape, dtype=np.int64)
        self.executed = np.zeros(batch_shape, dtype=np.int64)

    def mm(self, nnz, a_shape, n_out, theta):
        """Account one matmul of A (..., T, K) by (K, n_out); ``nnz`` (..., T) from delta_rows."""
        t, k = a_shape[-2], a_shape[-1]
        lead = self.dense.ndim
        extra = int(np.prod(a_shape[lead:-2], dtype=np.int64))   # e.g. heads folded in
        self.dense += extra * t * k * n_out
        if theta is None:
            self.executed += extra * t * k * n_out
        else:
            self.executed += nnz.reshape(self.dense.shape + (-1,)).sum(axis=-1) * n_out


def _site(x, theta, count, n_out):
    xhat, nnz = delta_rows(x, theta)
    count.mm(nnz, x.shape, n_out, theta)
    return xhat


def kwt_delta(model, mfcc8, theta=None):
    """Logits of :class:`sim.qmodel.QKwt` with delta-encoded matmul inputs.

    Returns ``(logits, macs)``: int16 logits (..., classes) and a dict ``{"dense", "executed"}``
    of MAC counts, int64 arrays of the batch shape (...) (dense = every product of every matmul;
    executed = the products the delta/zero-skipping dataflow performs). ``theta``: see
    :func:`normalize_thresholds`.
    """
    th = normalize_thresholds(theta)
    if any(getattr(layer, "linear", False) for layer in model.layers):
        raise ValueError("Delta KWT is defined for softmax-attention layers; this model has "
                         "linear-attention layers")
    mfcc8 = to_int(mfcc8, "mfcc")
    count = _Count(mfcc8.shape[:-2])
    a = np.concatenate([np.zeros(mfcc8.shape[:-2] + (1, mfcc8.shape[-1]), np.int64), mfcc8], axis=-2)
    a = _site(a, th["embed"], count, model.embed_w.shape[0])
    x = requant(matmul(a, model.embed_w.T, model.embed_c0), model.embed_m, model.embed_sh, *INT9)
    heads = model.config["heads"]
    for layer in model.layers:
        x = _layer(x, layer, heads, th, count)
    x0 = x[..., 0:1, :]
    count.mm(None, x0.shape, model.head_w.shape[0], None)
    logits = requant(matmul(x0, model.head_w.T, model.head_b), model.head_m, model.head_sh, *INT16)
    return logits[..., 0, :], {"dense": count.dense, "executed": count.executed}


def _layer(x, layer, heads, th, count):
    dim = x.shape[-1]
    acc = matmul(_site(x, th["qkv"], count, 3 * dim), layer.wqkv.T)
    q = requant(acc[..., :dim], layer.m_qkv[:dim], layer.sh_qkv[:dim], *INT9)
    kv = requant(acc[..., dim:], layer.m_qkv[dim:], layer.sh_qkv[dim:], *INT8)
    k, v = kv[..., :dim], kv[..., dim:]
    d = dim // heads
    m_a, sh_a = np.broadcast_to(layer.m_a, (dim,)), np.broadcast_to(layer.sh_a, (dim,))
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh = _site(q[..., sl], th["scores"], count, k.shape[-2])
        s = matmul(qh, np.swapaxes(k[..., sl], -1, -2))
        w = _site(exp_weights(s, layer.c_e, layer.sh_e), th["pv"], count, d)
        sigma = np.maximum(w.sum(axis=-1), 1)
        m_r, sh_r = mantissa15(divide(np.full(sigma.shape, 1 << 32), sigma), 24)
        t = rshift_round(matmul(w, v[..., sl]) * m_r[..., None], sh_r[..., None])
        outs.append(requant(t, m_a[sl], sh_a[sl], *INT9))
    att = np.concatenate(outs, axis=-1)
    o = requant(matmul(_site(att, th["wo"], count, dim), layer.wo.T, layer.bo),
                layer.m_o, layer.sh_o, *INT16)
    h1 = add(o, x, layer.m_r1, layer.sh_r1, *INT16)
    x1 = layernorm(h1, **layer.ln1, lo=INT9[0], hi=INT9[1])
    mlp = layer.w1.shape[0]
    f = requant(matmul(_site(x1, th["ffn1"], count, mlp), layer.w1.T, layer.b1),
                layer.m_1, layer.sh_1, *INT8)
    g = activation(f, layer.gelu)
    f2 = requant(matmul(_site(g, th["ffn2"], count, dim), layer.w2.T, layer.b2),
                 layer.m_2, layer.sh_2, *INT16)
    h2 = add(f2, x1, layer.m_r2, layer.sh_r2, *INT16)
    return layernorm(h2, **layer.ln2, lo=INT9[0], hi=INT9[1])


def dense_macs(model):
    """MACs of one dense inference (every matmul over every token)."""
    cfg = model.config
    t, dim, mlp, heads = cfg["tokens"], cfg["dim"], cfg["mlp_dim"], cfg["heads"]
    nin = model.embed_w.shape[1]
    d = dim // heads
    layer = t * dim * 3 * dim + heads * (t * d * t + t * t * d) + t * dim * dim \
        + t * dim * mlp + t * mlp * dim
    return t * nin * dim + cfg["num_layers"] * layer + dim * model.head_w.shape[0]

