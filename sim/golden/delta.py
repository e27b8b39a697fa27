"""Delta-threshold encoder of Delta KWT (docs/numerics.md §13). Hardware: ``hw.delta.DeltaEncoder``."""
import numpy as np

from .fixed import INT8, check_range, to_int

__all__ = ["delta_encode"]


def delta_encode(x, theta):
    """Encode token rows ``x`` (T, D) int8 with threshold θ (uint8).

    Returns
    -------
    delta : int64 (T, D), int9 values — Δ(0) = X(0); Δ(t) = X(t) − X̂(t−1) where that exceeds θ.
    mask : bool (T, D) — Δ ≠ 0, the (index, value) pairs the array must process.
    xhat : int64 (T, D) — X̂(t) after token t; ``cumsum(delta) == xhat``.
    """
    x = check_range(to_int(x, "x"), *INT8, name="x")
    if x.ndim != 2:
        raise ValueError(f"delta_encode expects (tokens, features), got shape {x.shape}")
    theta = int(theta)
    if not 0 <= theta <= 255:
        raise ValueError(f"theta must be in 0..255, got {theta}")
    delta = np.zeros_like(x)
    xhat = np.zeros_like(x)
    if x.shape[0] == 0:
        return delta, delta.astype(bool), xhat
    delta[0] = x[0]
    xhat[0] = x[0]
    for t in range(1, x.shape[0]):
        d = x[t] - xhat[t - 1]
        send = np.abs(d) > theta
        delta[t] = np.where(send, d, 0)
        xhat[t] = np.where(send, x[t], xhat[t - 1])
    return delta, delta != 0, xhat
