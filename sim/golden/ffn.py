"""Feed-forward block (docs/numerics.md §14): W1 + bias → int8 → GELU table → W2 + bias."""
import numpy as np

from .activation import activation
from .fixed import INT8, INT16
from .mac import matmul
from .requant import requant

__all__ = ["ffn"]


def ffn(x, w1, b1, m1, sh1, lut, w2, b2, m2, sh2, out=INT16, trace=None):
    """``requant(act(requant(x·W1ᵀ + b1))·W2ᵀ + b2)``; x int8 (..., N, dim), weights [out, in].

    Returns the W2 output saturated to ``out`` (int16 at the residual scale in the encoder).
    """
    f = requant(matmul(x, np.swapaxes(w1, -1, -2), b1), m1, sh1, *INT8)
    g = activation(f, lut)
    y = requant(matmul(g, np.swapaxes(w2, -1, -2), b2), m2, sh2, *out)
    if trace is not None:
        trace.update(ff1=f, gelu=g, ff2=y)
    return y
