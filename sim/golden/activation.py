"""Activation unit: a 256-entry int8 → int9 table (docs/numerics.md §12). Hardware:
``hw.activation.Activation``."""
import numpy as np

from .fixed import INT8, INT9, UINT8, check_range, clip, round_half_up, to_int

__all__ = ["activation", "activation_lut", "gelu_tanh", "elu1", "gelu_lut", "elu1_lut", "relu"]


def gelu_tanh(x):
    """GELU in the tanh form that KWT-1 uses (float64 reference)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def elu1(x):
    """elu(x) + 1, the linear-attention feature map φ (float64 reference)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def activation_lut(f, s_in, s_out, lo, hi):
    """Table ``LUT[q + 128] = clip(round(f(q·s_in)/s_out), lo, hi)`` for q in int8."""
    if not (s_in > 0 and s_out > 0 and np.isfinite(s_in) and np.isfinite(s_out)):
        raise ValueError(f"activation scales must be finite and > 0, got {s_in}, {s_out}")
    q = np.arange(-128, 128)
    return clip(round_half_up(f(q * s_in) / s_out), lo, hi)


def gelu_lut(s_in, s_out):
    return activation_lut(gelu_tanh, s_in, s_out, *INT9)


def elu1_lut(s_in, s_out):
    return activation_lut(elu1, s_in, s_out, *UINT8)


def activation(x, lut):
    """Look up int8 ``x`` in a 256-entry int9 table."""
    x = check_range(to_int(x, "x"), *INT8, name="x")
    lut = check_range(to_int(lut, "lut"), *INT9, name="lut")
    if lut.shape != (256,):
        raise ValueError(f"activation table must have 256 entries, got shape {lut.shape}")
    return lut[x + 128]


def relu(x):
    """ReLU on requantized integers (a lane operation, no table)."""
    return np.maximum(to_int(x, "x"), 0)
