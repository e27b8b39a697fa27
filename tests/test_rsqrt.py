# amaranth: UnusedElaboratable=no
"""hw.rsqrt.Rsqrt against sim.golden.rsqrt: golden error bound, bit-exact RTL with back-pressure."""
import numpy as np
import pytest

from hw.rsqrt import Rsqrt
from sim.golden import rsqrt
from sim.golden.rsqrt import RSQRT_LUT
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

V_MAX = (1 << 48) - 1
SMALL = np.arange(1 << 16)


def special():
    """Every power of two and 2**k ± 1 up to 2**48 (clipped to uint48), plus the top value."""
    k = np.arange(49)
    p = np.left_shift(np.int64(1), k)
    return np.unique(np.clip(np.concatenate([p - 1, p, p + 1, [V_MAX]]), 0, V_MAX))


def random48(seed, size):
    """Half log-uniform in magnitude (every exponent p equally likely), half uniform 48-bit."""
    rng = np.random.default_rng(seed)
    length = rng.integers(1, 49, size // 2)
    lo = np.left_shift(np.int64(1), length - 1)
    log_u = lo + (rng.random(size // 2) * lo).astype(np.int64)
    return np.concatenate([log_u, rng.integers(0, 1 << 48, size - size // 2)])


def rel_error(v):
    r, p = rsqrt(v)
    return np.abs(r * 2.0 ** (-22.0 - p) * np.sqrt(np.maximum(v, 1).astype(np.float64)) - 1)


def test_golden_rsqrt_error_bound():
    # docs/numerics.md §11: |R·2^(−22−p)·√v − 1| ≤ 2^−10 (attained at v = 4^k: the bucket edge);
    # 1.01 leaves room for float64 rounding.
    v = np.concatenate([SMALL, special(), random48(0, 1_000_000)])
    err = rel_error(v)
    assert err.max() <= 1.01 * 2.0 ** -10
    r, p = rsqrt(v)
    assert r.min() >= 1 << 14 and r.max() < 1 << 15 and p.min() == -7 and p.max() == 16
    assert len(RSQRT_LUT) == 768


def test_rsqrt_amaranth_backpressure():
    v = np.concatenate([np.arange(2048), special(), random48(1, 2000)])
    out = run_stream_test(Rsqrt(), v.tolist(), convert_out=lambda y: (int(y.r), int(y.p)), stall=0.3, seed=13)
    r, p = np.array(out).T
    want_r, want_p = rsqrt(v)
    np.testing.assert_array_equal(r, want_r)
    np.testing.assert_array_equal(p, want_p)


def test_rsqrt_interface():
    dut = Rsqrt()
    assert Rsqrt.LATENCY == 5
    assert dut.i.payload.shape().width == 48 and dut.o.payload.shape().size == 21
    with pytest.raises(TypeError):
        Rsqrt(48)


def test_rsqrt_lint():
    lint(emit(Rsqrt(), "rsqrt"), "rsqrt")


@pytest.mark.parametrize("simulator", simulators())
def test_rsqrt_cocotb(simulator):
    # Exhaustive over [0, 2**16), the powers of two and their neighbours, 10**4 random 48-bit.
    v = np.concatenate([SMALL, special(), random48(2, 10_000)])
    r, p = rsqrt(v)
    run_cocotb(Rsqrt(), "rsqrt", "tb.test_rsqrt", vectors={"v": v, "r": r, "p": p}, simulator=simulator)
