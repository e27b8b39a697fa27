# amaranth: UnusedElaboratable=no
"""hw.div.Divide against sim.golden.divide: edge cases and log-uniform random pairs, back-pressure."""
import numpy as np
import pytest

from hw.div import Divide
from sim.golden import divide
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

N_MAX = (1 << 33) - 1
D_MAX = (1 << 32) - 1


def log_uniform(rng, bits, size):
    """Integers whose bit length is uniform over 0..bits, the bits below the leading one random."""
    length = rng.integers(0, bits + 1, size)
    lo = np.where(length > 0, np.left_shift(1, np.maximum(length - 1, 0)), 0)
    return lo + (rng.random(size) * np.maximum(lo, 1)).astype(np.int64) * (length > 0)


def edge_cases(rng):
    """The corners of numerics §8 and the operands softmax and linear attention produce."""
    ns = [0, 1, 2, 3, (1 << 15), (1 << 31) - 1, 1 << 31, D_MAX, 1 << 32, (1 << 32) + 1, N_MAX - 1, N_MAX]
    ds = [0, 1, 2, 3, (1 << 15) - 1, 1 << 15, (1 << 16) + 1, (1 << 31) - 1, 1 << 31, D_MAX - 1, D_MAX]
    pairs = [(n, d) for n in ns for d in ds]
    d = log_uniform(rng, 32, 300)
    pairs += [(int(x), int(x)) for x in d]                                  # n = d
    pairs += [(int(x) - 1, int(x)) for x in d if x > 0]                     # n < d, largest
    pairs += [(int(x) + 1, int(x)) for x in d]                              # just above
    pairs += [(int(x) * 2 - 1, int(x)) for x in d if x > 0]                 # q = 1 with remainder d − 1
    pairs += [(int(n), 0) for n in log_uniform(rng, 33, 50)]                # d = 0
    # Softmax: r = divide(2**32, σ) with 2**15 ≤ σ < 2**31; attention's deferred normalization
    # (numerics §9) divides 2**32 by a sum of uint8 weights, σ ≥ 255.
    sig = np.unique(np.concatenate([[255, 256, (1 << 15) - 1, 1 << 15, (1 << 31) - 1],
                                    rng.integers(1 << 15, 1 << 31, 300),
                                    (2.0 ** rng.uniform(15, 31, 300)).astype(np.int64),
                                    rng.integers(255, 1 << 15, 100)]))
    pairs += [(1 << 32, int(s)) for s in sig]
    return np.array(pairs, dtype=np.int64).T


def vectors(seed, n_random):
    rng = np.random.default_rng(seed)
    n_e, d_e = edge_cases(rng)
    n = np.concatenate([n_e, log_uniform(rng, 33, n_random)])
    d = np.concatenate([d_e, log_uniform(rng, 32, n_random)])
    return n, d


def test_golden_divide_edges():
    n, d = vectors(0, 2000)
    want = np.array([N_MAX if y == 0 else x // y for x, y in zip(n.tolist(), d.tolist())])
    np.testing.assert_array_equal(divide(n, d), want)
    assert n.max() == N_MAX and d.max() == D_MAX and n.min() == 0 and d.min() == 0


def test_divide_amaranth_backpressure():
    n, d = vectors(1, 1500)
    out = run_stream_test(Divide(), [{"n": int(x), "d": int(y)} for x, y in zip(n, d)],
                          convert_out=lambda y: (int(y.q), int(y.div_by_zero)), stall=0.3, seed=11)
    q, flag = np.array(out).T
    np.testing.assert_array_equal(q, divide(n, d))
    np.testing.assert_array_equal(flag, d == 0)


def test_divide_stall_holds_output():
    # With the consumer never ready the pipeline fills, accepts nothing more and loses nothing.
    out = run_stream_test(Divide(), [{"n": 100 + k, "d": 7} for k in range(40)],
                          convert_out=lambda y: int(y.q), stall=0.9, seed=2, max_cycles=20000)
    assert out == [(100 + k) // 7 for k in range(40)]


def test_divide_interface():
    dut = Divide()
    assert Divide.LATENCY == 33
    assert dut.i.payload.shape().size == 65 and dut.o.payload.shape().size == 34
    with pytest.raises(TypeError):
        Divide(33)


def test_divide_lint():
    lint(emit(Divide(), "divide"), "divide")


@pytest.mark.parametrize("simulator", simulators())
def test_divide_cocotb(simulator):
    n, d = vectors(2, 10_000)
    run_cocotb(Divide(), "divide", "tb.test_div", simulator=simulator,
               vectors={"n": n, "d": d, "q": divide(n, d), "div_by_zero": (d == 0).astype(np.int64)})
