"""Float64 NumPy reference of the KWT-1 transformer (MFCC features in, 12 logits out).

Structure (verified against the TFLite graph of the authors' release):

- tokens: ``mfcc @ in_w.T + in_b`` (98 x dim), a learned class token prepended (token 0), then
  the learned positional embedding (99 x dim) added;
- ``num_layers`` post-norm blocks::

      q, k, v = x Wq^T * attn_scale, x Wk^T, x Wv^T        (no biases)
      attn    = softmax(q k^T) v                           (per head, heads concatenated)
      x       = LN1(x + attn Wo^T + bo)
      x       = LN2(x + GELU_tanh(x W1^T + b1) W2^T + b2)

  LayerNorm over the feature axis with eps 1e-6; ``attn_scale`` = 1/sqrt(head_dim);
- logits: ``x[:, 0] @ head_w.T + head_b``.

All kernels are stored [out, in], as TFLite's FULLY_CONNECTED keeps them.

Speed: the matrices are small, so multi-threaded BLAS mostly waits on its own threads; on a
busy machine ``OPENBLAS_NUM_THREADS=1`` runs this 5-10 times faster.
"""

from dataclasses import dataclass

import numpy as np

from sim.errors import InputError, ModelError
from sim.mfcc import NUM_FRAMES, NUM_MFCC
from sim.mfcc import mfcc as compute_mfcc

NUM_CLASSES = 12
NUM_TOKENS = NUM_FRAMES + 1  # class token + one token per MFCC frame


@dataclass
class LayerWeights:
    """Weights of one post-norm transformer block (kernels [out, in], float64)."""

    wq: np.ndarray  # (dim, dim)
    wk: np.ndarray  # (dim, dim)
    wv: np.ndarray  # (dim, dim)
    wo: np.ndarray  # (dim, dim)
    bo: np.ndarray  # (dim,)
    ln1_g: np.ndarray  # (dim,)
    ln1_b: np.ndarray  # (dim,)
    w1: np.ndarray  # (mlp_dim, dim)
    b1: np.ndarray  # (mlp_dim,)
    w2: np.ndarray  # (dim, mlp_dim)
    b2: np.ndarray  # (dim,)
    ln2_g: np.ndarray  # (dim,)
    ln2_b: np.ndarray  # (dim,)
    linear: bool = False  # linear attention φ(q)(φ(k)ᵀv) / φ(q)Σφ(k), φ = elu + 1


@dataclass
class KwtFloatWeights:
    """All weights and the configuration of a KWT model.

    Attributes
    ----------
    in_w, in_b : numpy.ndarray
        Input projection of the MFCC frames, (dim, 40) and (dim,).
    cls : numpy.ndarray
        Class token, (dim,).
    pos : numpy.ndarray
        Positional embedding, (99, dim); row 0 belongs to the class token.
    layers : list of LayerWeights
        The ``num_layers`` transformer blocks in order.
    head_w, head_b : numpy.ndarray
        Classifier on token 0, (12, dim) and (12,).
    dim, mlp_dim, heads, num_layers : int
        Model width, feed-forward width, attention heads, blocks.
    attn_scale : float
        Factor applied to the attention scores (1/sqrt(dim // heads)).
    eps : float
        LayerNorm epsilon.
    """

    in_w: np.ndarray
    in_b: np.ndarray
    cls: np.ndarray
    pos: np.ndarray
    layers: list[LayerWeights]
    head_w: np.ndarray
    head_b: np.ndarray
    dim: int
    mlp_dim: int
    heads: int
    num_layers: int
    attn_scale: float
    eps: float = 1e-6

    def __post_init__(self) -> None:
        d, f = self.dim, self.mlp_dim
        if self.heads < 1 or d % self.heads:
            raise ModelError(f"model width {d} is not a multiple of the head count {self.heads}")
        if len(self.layers) != self.num_layers:
            raise ModelError(f"{len(self.layers)} layers given, num_layers says {self.num_layers}")
        expected = {
            "in_w": (d, NUM_MFCC),
            "in_b": (d,),
            "cls": (d,),
            "pos": (NUM_TOKENS, d),
            "head_w": (NUM_CLASSES, d),
            "head_b": (NUM_CLASSES,),
        }
        layer_expected = {
            "wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "bo": (d,),
            "ln1_g": (d,), "ln1_b": (d,), "w1": (f, d), "b1": (f,), "w2": (d, f), "b2": (d,),
            "ln2_g": (d,), "ln2_b": (d,),
        }  # fmt: skip
        arrays = [(name, getattr(self, name), shape) for name, shape in expected.items()]
        for i, layer in enumerate(self.layers):
            arrays += [(f"layers[{i}].{n}", getattr(layer, n), s) for n, s in layer_expected.items()]
        for name, value, shape in arrays:
            if np.shape(value) != shape:
                raise ModelError(f"weight {name} has shape {np.shape(value)}, expected {shape}")
            if not np.all(np.isfinite(value)):
                raise ModelError(f"weight {name} holds NaN or infinite values")


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (the form the model uses): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * (x * x * x))))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def elu1(x: np.ndarray) -> np.ndarray:
    """φ(x) = elu(x) + 1, the linear-attention feature map."""
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def linear_attention_float(q: np.ndarray, k: np.ndarray, v: np.ndarray, record=None):
    """φ(q)(φ(k)ᵀ[v | 1]) with the last column as the normalizer, over the last two axes
    (..., tokens, d); ``record`` receives ``phq``, ``phk`` and ``lt`` (φ(k)ᵀ[v | 1])."""
    phq, phk = elu1(q), elu1(k)
    ones = np.ones(v.shape[:-1] + (1,))
    t = np.swapaxes(phk, -1, -2) @ np.concatenate([v, ones], axis=-1)
    u = phq @ t
    if record is not None:
        record("phq", phq)
        record("phk", phk)
        record("lt", t)
    return u[..., :-1] / u[..., -1:]


def layer_forward(lw: LayerWeights, x: np.ndarray, heads: int, attn_scale: float, eps: float,
                  record=None) -> np.ndarray:
    """One post-norm block on float tokens ``x`` (batch, tokens, dim); ``record(name, value)``
    receives ``q``, ``k``, ``v``, ``scores``, ``probs``, ``attn``, ``o``, ``h1``, ``x1``, ``ff1``,
    ``gelu``, ``ff2``, ``h2``, ``x2`` (the names of :func:`kwt_forward`'s trace without the
    layer prefix)."""
    b, t, d = x.shape
    hd = d // heads

    def split_heads(y: np.ndarray) -> np.ndarray:  # (b, t, d) -> (b, h, t, hd)
        return y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)

    q = (x @ lw.wq.T) * attn_scale
    k = x @ lw.wk.T
    v = x @ lw.wv.T
    if lw.linear:
        la = {}
        attn = linear_attention_float(split_heads(q), split_heads(k), split_heads(v),
                                      lambda name, value: la.__setitem__(name, value))
        attn = attn.transpose(0, 2, 1, 3).reshape(b, t, d)
        # T per head and column as the last axis: (b, hd, heads·(hd + 1))
        lt = la["lt"].transpose(0, 2, 1, 3).reshape(b, hd, heads * (hd + 1))
        extra = (("phq", la["phq"]), ("phk", la["phk"]), ("lt", lt))
    else:
        scores = split_heads(q) @ split_heads(k).transpose(0, 1, 3, 2)
        probs = _softmax(scores)
        attn = (probs @ split_heads(v)).transpose(0, 2, 1, 3).reshape(b, t, d)
        extra = (("scores", scores), ("probs", probs))
    o = attn @ lw.wo.T + lw.bo
    h1 = x + o
    x1 = _layer_norm(h1, lw.ln1_g, lw.ln1_b, eps)
    ff1 = x1 @ lw.w1.T + lw.b1
    g = gelu_tanh(ff1)
    ff2 = g @ lw.w2.T + lw.b2
    h2 = x1 + ff2
    x2 = _layer_norm(h2, lw.ln2_g, lw.ln2_b, eps)
    if record is not None:
        for name, value in (("q", q), ("k", k), ("v", v), *extra, ("attn", attn), ("o", o), ("h1", h1), ("x1", x1), ("ff1", ff1),
                            ("gelu", g), ("ff2", ff2), ("h2", h2), ("x2", x2)):  # fmt: skip
            record(name, value)
    return x2


def kwt_forward(weights: KwtFloatWeights, mfcc: np.ndarray, trace: dict | None = None) -> np.ndarray:
    """Run the transformer on MFCC features in float64.

    Parameters
    ----------
    weights : KwtFloatWeights
        The model.
    mfcc : numpy.ndarray
        Features, shape (98, 40) or (batch, 98, 40).
    trace : dict, optional
        If given, filled with float64 intermediates, each with a leading batch axis (of
        length 1 for a single clip):
        ``x0`` (batch, 99, dim) tokens after class token and positional embedding; for each
        layer i, ``l{i}.q``, ``l{i}.k``, ``l{i}.v`` (batch, 99, dim; q already times
        ``attn_scale``), ``l{i}.scores`` and ``l{i}.probs`` (batch, heads, 99, 99),
        ``l{i}.attn`` (batch, 99, dim; heads concatenated), ``l{i}.o``, ``l{i}.h1`` (x + o),
        ``l{i}.x1`` (LN1 out), ``l{i}.ff1`` (batch, 99, mlp_dim; before GELU), ``l{i}.gelu``,
        ``l{i}.ff2`` (batch, 99, dim), ``l{i}.h2`` (x1 + ff2), ``l{i}.x2`` (LN2 out); and
        ``logits`` (batch, 12).

    Returns
    -------
    numpy.ndarray
        float64 logits, shape (12,) or (batch, 12).

    Raises
    ------
    sim.errors.InputError
        If ``mfcc`` has the wrong shape or holds NaN/inf.
    """
    x = np.asarray(mfcc)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (NUM_FRAMES, NUM_MFCC):
        raise InputError(f"MFCC features must have shape (98, 40) or (batch, 98, 40), got {np.shape(mfcc)}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise InputError("MFCC features must be finite numbers")
    x = x.astype(np.float64, copy=False)
    w = weights
    b, d, h = x.shape[0], w.dim, w.heads

    def record(name: str, value: np.ndarray) -> None:
        if trace is not None:
            trace[name] = value

    tokens = x @ w.in_w.T + w.in_b
    x = np.concatenate([np.broadcast_to(w.cls, (b, 1, d)), tokens], axis=1) + w.pos
    record("x0", x)
    for i, lw in enumerate(w.layers):
        p = f"l{i}."
        x = layer_forward(lw, x, h, w.attn_scale, w.eps, None if trace is None else
                          (lambda name, value, p=p: record(p + name, value)))
    logits = x[:, 0] @ w.head_w.T + w.head_b
    record("logits", logits)
    return logits[0] if single else logits


def predict_float(weights: KwtFloatWeights, audio: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Compute logits of raw clips: MFCC front end then :func:`kwt_forward`.

    Parameters
    ----------
    weights : KwtFloatWeights
        The model.
    audio : numpy.ndarray
        Floating-point samples in [-1, 1), shape (16000,) or (batch, 16000).
    batch_size : int
        Clips per forward pass; bounds memory (the attention matrices of 256 clips take
        about 20 MB per layer in float64).

    Returns
    -------
    numpy.ndarray
        float64 logits, shape (12,) or (batch, 12).
    """
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return kwt_forward(weights, compute_mfcc(audio))
    if audio.ndim != 2:
        raise InputError(f"audio must have shape (16000,) or (batch, 16000), got {audio.shape}")
    parts = [kwt_forward(weights, compute_mfcc(audio[s : s + batch_size])) for s in range(0, len(audio), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, NUM_CLASSES))
