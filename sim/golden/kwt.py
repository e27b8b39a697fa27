"""The whole integer KWT: embedding, encoder layers, head (docs/numerics.md §14)."""
import numpy as np

from .encoder import encoder_layer
from .fixed import INT9, INT16
from .mac import matmul
from .requant import requant

__all__ = ["kwt", "embed"]


def embed(model, mfcc8):
    """``x0 = requant(mfcc·Wpᵀ + C0)`` (int9); the class token is row 0 with an all-zero A row."""
    mfcc8 = np.asarray(mfcc8, dtype=np.int64)
    a = np.concatenate([np.zeros(mfcc8.shape[:-2] + (1, mfcc8.shape[-1]), np.int64), mfcc8], axis=-2)
    return requant(matmul(a, model.embed_w.T, model.embed_c0), model.embed_m, model.embed_sh, *INT9)


def kwt(model, mfcc8, trace=None):
    """int16 logits of :class:`sim.qmodel.QKwt` ``model`` for int8 MFCC (..., 98, 40).

    ``trace`` (a dict) receives ``x0``, ``l{i}.<name>`` for every layer and ``logits``.
    """
    x = embed(model, mfcc8)
    if trace is not None:
        trace["x0"] = x
    for i, layer in enumerate(model.layers):
        t = {} if trace is not None else None
        x = encoder_layer(x, layer, model.config["heads"], t)
        if trace is not None:
            trace.update({f"l{i}.{k}": v for k, v in t.items()})
    logits = requant(matmul(x[..., 0:1, :], model.head_w.T, model.head_b), model.head_m, model.head_sh, *INT16)[..., 0, :]
    if trace is not None:
        trace["logits"] = logits
    return logits
