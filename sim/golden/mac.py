"""MAC and matmul (docs/numerics.md §3). Hardware: ``hw.mac.MAC``, ``hw.lane.Lane``."""
import numpy as np

from .fixed import INT8, INT9, INT32, check_range, to_int

__all__ = ["mac", "matmul", "wrap32", "MAX_K"]

MAX_K = 65535


def wrap32(x):
    """Two's-complement wrap to int32, as the hardware accumulator adder does."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def mac(acc, a, b):
    """One multiply-accumulate: ``acc + a*b`` with a int9, b int8, acc int32 (wrapping)."""
    a = check_range(to_int(a, "a"), *INT9, name="a")
    b = check_range(to_int(b, "b"), *INT8, name="b")
    acc = check_range(to_int(acc, "acc"), *INT32, name="acc")
    return wrap32(acc + a * b)


def matmul(a, b, c0=None):
    """``C = A·B + C0`` exactly as the PE array computes it.

    Parameters
    ----------
    a : int array (..., M, K), int9 range — the A operand (one row per PE).
    b : int array (..., K, N), int8 range — the broadcast B operand.
    c0 : int array broadcastable to (M, N), int32, optional — initial accumulators (bias).

    Returns
    -------
    int64 array (M, N) holding int32 values.
    """
    a = check_range(to_int(a, "a"), *INT9, name="a")
    b = check_range(to_int(b, "b"), *INT8, name="b")
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shapes do not fit: A {a.shape}, B {b.shape}")
    if a.shape[-1] > MAX_K:
        raise ValueError(f"K = {a.shape[-1]} exceeds the accumulator bound {MAX_K}")
    # Exact through float64 BLAS: |a·b| ≤ 2^15 and K < 2^16 keep every partial sum below 2^53.
    c = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    if c0 is not None:
        c = c + check_range(to_int(c0, "c0"), *INT32, name="c0")
    return wrap32(c)
