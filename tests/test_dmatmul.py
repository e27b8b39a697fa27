# amaranth: UnusedElaboratable=no
"""DMATMUL, the column-partitioned delta matmul (docs/delta.md, docs/isa.md): whole programs
on ``hw.accelerator.SimSystem`` against ``sim.golden`` (``delta_rows`` + ``matmul`` +
``requant``), and the ISA interpreter and cost model of ``sim.program``."""
import numpy as np
import pytest

from hw.isa import Dst, ErrorCode, Flag, Op, Sat
from sim.golden import INT8, INT9, INT16, add, matmul, requant
from sim.golden.delta_kwt import delta_rows
from tests.test_accelerator import Program, a_words, c_from_words, p_words, tiles
from tests.test_accelerator_ops import fit, observe


def w_delta_words(W, P, L):
    """LOAD_A image of W (K, N) for DMATMUL: row n = (j·K + k)·P + p holds
    W[k, (j·P + p)·L … + L − 1] (PE p's tile of column pass j)."""
    K, N = W.shape
    T = tiles(N, L)
    g = -(-T // P)
    out = np.zeros((g, K, P, L), dtype=np.int64)
    for j in range(g):
        for p in range(P):
            t = j * P + p
            blk = W[:, t * L:(t + 1) * L] if t < T else W[:, :0]
            out[j, :, p, :blk.shape[1]] = blk
    return a_words(out.reshape(-1, L), L), g * K * P


def golden(X, W, theta, bias, m, sh, lo, hi):
    xhat, nnz = delta_rows(X, theta)
    return requant(matmul(xhat, W, bias[None, :]), m, sh, lo, hi), nnz


def delta_program(L, P, X, W, theta, bias, m, sh, *, dst, sat, flags, x_base=0, w_base=None,
                  out_base=None):
    M, K = X.shape
    N = W.shape[1]
    T = tiles(N, L)
    ks = tiles(K, L) * L
    pg = Program(L)
    x_rows = -(-M // P)
    w_base = x_rows * ks if w_base is None else w_base
    ww, wrows = w_delta_words(W, P, L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(X, L)), rows=M, k=K, a_base=x_base, a_stride=ks)
    pg(Op.LOAD_A, ext_addr=pg.put(ww), rows=wrows, k=L, a_base=w_base, a_stride=L)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, m, sh, L)), count=T, p_base=0)
    out_base = (w_base + wrows // P * L + L) if out_base is None else out_base
    pg(Op.DMATMUL, rows=M, k=K, tiles=T, count=N, a_base=x_base, a_stride=ks, b_base=w_base,
       p_base=0, dst=dst, sat=sat, flags=flags, out_base=out_base, out_stride=T * L,
       imm=theta << 8)
    return pg, out_base


@pytest.mark.parametrize("P,L,M,K,N,theta,seed", [
    (2, 4, 7, 10, 13, 3, 1),
    pytest.param(3, 4, 5, 8, 9, 0, 2, marks=pytest.mark.slow),
])
def test_dmatmul_amem_and_cmem(P, L, M, K, N, theta, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(-128, 128, (M, K))
    # slowly varying rows so that some changes stay under θ
    X[1:] = np.clip(X[:-1] + rng.integers(-6, 7, (M - 1, K)), -128, 127)
    X[2, :] = X[1, :]
    W = rng.integers(-128, 128, (K, N))
    bias = rng.integers(-5000, 5000, N)
    m, sh = fit(matmul(X, W, bias[None, :]), 200)
    T = tiles(N, L)
    # dst CMEM, REQ int16; then a RADD straight on the results (a row operation right after a
    # DMATMUL must get its own PBUF m/sh, not the DMATMUL's per-PE parameters)
    pg, ob = delta_program(L, P, X, W, theta, bias, m, sh, dst=Dst.CMEM, sat=Sat.INT16,
                           flags=Flag.BIAS | Flag.REQ, out_base=0)
    k_r = min(K, N)
    m_r, sh_r = rng.integers(1, 1 << 14, k_r), rng.integers(8, 14, k_r)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(np.zeros(k_r, np.int64), m_r, sh_r, L)),
       count=tiles(k_r, L), p_base=8)
    pg(Op.RADD, rows=M, k=k_r, a_base=0, a_stride=T * L, b_base=0, imm=tiles(K, L) * L,
       dst=Dst.CMEM, out_base=0, out_stride=T * L, p_base=8, sat=Sat.INT16)
    out = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=out, rows=M, tiles=T, out_base=0, out_stride=T * L)
    pg(Op.HALT)
    r = pg.run(pes=P, delta_k=32, max_cycles=20_000)
    assert r["halted"], r["code"]
    want, nnz = golden(X, W, theta, bias, m, sh, *INT16)
    want[:, :k_r] = add(want[:, :k_r], X[:, :k_r], m_r, sh_r, *INT16)
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, out)[:, :N], want)


@pytest.mark.slow
def test_dmatmul_amem():
    P, L, M, K, N, theta = 2, 4, 6, 8, 11, 2
    rng = np.random.default_rng(5)
    X = rng.integers(-128, 128, (M, K))
    X[1:] = np.clip(X[:-1] + rng.integers(-5, 6, (M - 1, K)), -128, 127)
    W = rng.integers(-128, 128, (K, N))
    bias = rng.integers(-5000, 5000, N)
    m, sh = fit(matmul(X, W, bias[None, :]), 200)
    T = tiles(N, L)
    pg, ob = delta_program(L, P, X, W, theta, bias, m, sh, dst=Dst.AMEM, sat=Sat.INT9,
                           flags=Flag.BIAS)
    o, _ = observe(pg, rows=M, n=N, a_base=ob, a_stride=T * L, b_base=0, out_base=0)
    pg(Op.HALT)
    r = pg.run(pes=P, delta_k=32, max_cycles=20_000)
    assert r["halted"], r["code"]
    want, _ = golden(X, W, theta, bias, m, sh, *INT9)
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, o)[:, :N], want)


# ---------------------------------------------------------------- interpreter, cost model, edges
from hw.isa import instr_words                                      # noqa: E402
from sim.program import AccelConfig, interpret                      # noqa: E402
from tests.test_accelerator import SMALL                            # noqa: E402


def image_of(pg):
    """The ext image (uint8 words) and program base/length of a Program (appends the program)."""
    L = pg.L
    mask = (1 << (8 * L)) - 1
    base = pg.put([(ins >> (8 * L * i)) & mask for ins in pg.prog for i in range(instr_words(L))])
    img = np.array([[(w >> (8 * b)) & 0xFF for b in range(L)] for w in pg.words], dtype=np.uint8)
    return img, base, len(pg.prog)


def run_both(pg, P, delta_k=32):
    """RTL (Amaranth) and interpreter on the same program: results, RTL counters, model."""
    L = pg.L
    img, base, n = image_of(pg)
    from hw.accelerator import run_program
    r = run_program([int.from_bytes(bytes(row), "little") for row in img], prog_base=base,
                    prog_len=n, pes=P, lanes=L, delta_k=delta_k, max_cycles=50_000, **SMALL)
    assert r["halted"], r["code"]
    cfg = AccelConfig(pes=P, lanes=L, mem_latency=3, delta_k=delta_k, **SMALL)
    ext, cnt = interpret(img.reshape(-1), base, n, cfg)
    return r, ext, cnt


def rows_case(rng, M, K, step=6):
    """Token rows as a random walk of steps up to ``step`` (a slowly changing signal)."""
    X = rng.integers(-128, 128, (M, K))
    for t in range(1, M):
        X[t] = np.clip(X[t - 1] + rng.integers(-step, step + 1, K), -128, 127)
    return X


def cmem_case(P, L, X, W, theta, bias, m, sh):
    M = X.shape[0]
    T = tiles(W.shape[1], L)
    pg, _ = delta_program(L, P, X, W, theta, bias, m, sh, dst=Dst.CMEM, sat=Sat.INT16,
                          flags=Flag.BIAS | Flag.REQ, out_base=0)
    out = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=out, rows=M, tiles=T, out_base=0, out_stride=T * L)
    pg(Op.HALT)
    return pg, out


@pytest.mark.parametrize("theta", [pytest.param(0, marks=pytest.mark.slow), 4,
                                   pytest.param(255, marks=pytest.mark.slow)])
def test_dmatmul_interp_and_cost_model(theta):
    """RTL = interpreter = golden, θ = 0 equals the dense product, θ = 255 sends only token 0
    (int8 changes never exceed 255); the cost model's CYCLES, MAC_CYCLES, ARRAY_CYCLES within
    2 cycles of the RTL counters, and MAC_CYCLES = Σ max(1, nnz) per column pass."""
    P, L, M, K, N = 3, 4, 8, 12, 20
    rng = np.random.default_rng(10 + theta)
    X, W = rows_case(rng, M, K), rng.integers(-128, 128, (K, N))
    bias = rng.integers(-5000, 5000, N)
    m, sh = fit(matmul(X, W, bias[None, :]), 300)
    pg, out = cmem_case(P, L, X, W, theta, bias, m, sh)
    r, ext, cnt = run_both(pg, P)
    T = tiles(N, L)
    got = c_from_words(r["mem"], M, T, L, out)[:, :N]
    want, nnz = golden(X, W, theta, bias, m, sh, *INT16)
    np.testing.assert_array_equal(got, want)
    words = [int.from_bytes(bytes(row), "little") for row in ext]
    np.testing.assert_array_equal(c_from_words(words, M, T, L, out)[:, :N], want)
    if theta == 0:
        np.testing.assert_array_equal(want, requant(matmul(X, W, bias[None, :]), m, sh, *INT16))
    if theta == 255:
        np.testing.assert_array_equal(want, np.broadcast_to(want[0], want.shape))
        assert list(nnz[1:]) == [0] * (M - 1)
    g = -(-T // P)
    assert r["mac_cycles"] == g * int(np.maximum(nnz, 1).sum())
    for k in ("cycles", "mac_cycles", "array_cycles"):
        assert abs(r[k] - cnt[k.upper()]) <= 2, (k, r[k], cnt[k.upper()])


def int9_dmatmul(pg, P, A, W, bias, m, sh, *, sat, flags, imm):
    """Emit X = 2·A made on chip (int9, by a MATMUL with 2·I into AMEM at 64), W for DMATMUL
    at AMEM 128, the parameters at PBUF 0 and the DMATMUL (dst AMEM at 512, returned)."""
    from tests.test_accelerator import b_words
    L = pg.L
    (M, K), N = A.shape, W.shape[1]
    T_k, T = tiles(K, L), tiles(N, L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A, L)), rows=M, k=K, a_base=0, a_stride=T_k * L)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(2 * np.eye(K, dtype=np.int64), L)), count=T_k * K,
       b_base=0)
    ones = np.ones(K, np.int64)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(0 * ones, ones, 0 * ones, L)), count=T_k, p_base=8)
    xb, wb, ob = 64, 128, 512
    pg(Op.MATMUL, rows=M, k=K, tiles=T_k, count=K, a_base=0, a_stride=T_k * L, b_base=0,
       p_base=8, dst=Dst.AMEM, sat=Sat.INT9, out_base=xb, out_stride=T_k * L)
    ww, wrows = w_delta_words(W, P, L)
    pg(Op.LOAD_A, ext_addr=pg.put(ww), rows=wrows, k=L, a_base=wb, a_stride=L)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, m, sh, L)), count=T, p_base=0)
    pg(Op.DMATMUL, rows=M, k=K, tiles=T, count=N, a_base=xb, a_stride=T_k * L, b_base=wb,
       p_base=0, dst=Dst.AMEM, sat=sat, flags=flags, out_base=ob, out_stride=T * L, imm=imm)
    return ob


def test_dmatmul_edges_int9_chain_act():
    """Token rows of −128 and all-equal rows (every later Δ zero), int9 inputs made on chip by
    a MATMUL (2·I, sat INT9) right before the DMATMUL (dst AMEM, BIAS, ACT on table 1 with
    RELU), and a dense MATMUL reading the DMATMUL's output: all bit-exact."""
    from tests.test_accelerator_ops import t_words
    P, L, M, K, N = 2, 4, 6, 8, 10
    rng = np.random.default_rng(21)
    A = np.full((M, K), -128)
    A[3:] = rng.integers(-128, 128, K)          # tokens 3…5 equal: Δ = 0
    W = rng.integers(-128, 128, (K, N))
    W[:, 0] = -128
    bias = rng.integers(-3000, 3000, N)
    X = np.clip(2 * A, -256, 255)               # int9 on chip
    s = matmul(X, W, bias[None, :])
    m, sh = fit(s, 100)
    lut = rng.integers(-256, 256, 512)
    T = tiles(N, L)
    pg = Program(L)
    pg(Op.LOAD_T, ext_addr=pg.put(t_words(lut, L)), count=512, a_base=0)
    ob = int9_dmatmul(pg, P, A, W, bias, m, sh, sat=Sat.INT8,
                      flags=Flag.BIAS | Flag.ACT | Flag.RELU, imm=1 | (3 << 8))
    o, _ = observe(pg, rows=M, n=N, a_base=ob, a_stride=T * L, b_base=200, out_base=0)
    pg(Op.HALT)
    r, ext, cnt = run_both(pg, P)
    xhat, nnz = delta_rows(X, 3)
    assert list(nnz[4:]) == [0, 0]
    y = requant(matmul(xhat, W, bias[None, :]), m, sh, *INT8)
    want = lut[256:][np.maximum(y, 0) + 128]
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, o)[:, :N], want)


@pytest.mark.parametrize("field,value,code", [
    ("k", 40, ErrorCode.BAD_FIELD),            # > delta_k = 32
    pytest.param("out_base", 2, ErrorCode.BAD_FIELD, marks=pytest.mark.slow),
    pytest.param("dst", Dst.BBUF_ROWS, ErrorCode.BAD_FIELD, marks=pytest.mark.slow),
    pytest.param("flags", Flag.ACCUM, ErrorCode.BAD_FIELD, marks=pytest.mark.slow),
    ("b_base", 1020, ErrorCode.AMEM_RANGE),    # W slices past AMEM
])
def test_dmatmul_errors(field, value, code):
    P, L = 2, 4
    fields = dict(rows=4, k=8, tiles=3, count=10, a_base=0, a_stride=8, b_base=64, p_base=0,
                  dst=Dst.AMEM, sat=Sat.INT9, out_base=256, out_stride=12, imm=0)
    fields[field] = value
    if field == "b_base":
        fields["b_base"] = 1020 - 1020 % L
    pg = Program(L)
    pg(Op.NOP)
    pg(Op.DMATMUL, **fields)
    pg(Op.HALT)
    r = pg.run(pes=P, delta_k=32, max_cycles=5_000)
    assert r["error"] and r["code"] == code and r["pc"] == 1
    from sim.program import static_check
    from hw.isa import decode
    assert static_check(decode(pg.prog[1]), AccelConfig(pes=P, lanes=L, delta_k=32,
                                                        **SMALL))[0] == code


@pytest.mark.slow
def test_dmatmul_cycles_fall_with_sparsity():
    """The same matmul on rows that change less and less: MAC_CYCLES and CYCLES fall."""
    P, L, M, K, N = 2, 4, 12, 16, 8
    rng = np.random.default_rng(33)
    W = rng.integers(-128, 128, (K, N))
    bias = np.zeros(N, np.int64)
    cycles = []
    for step in (60, 8, 0):
        X = rows_case(rng, M, K, step)
        m, sh = fit(matmul(X, W), 300)
        pg, out = cmem_case(P, L, X, W, 4, bias, m, sh)
        r, _, _ = run_both(pg, P)
        cycles.append((r["mac_cycles"], r["cycles"]))
    assert cycles[0][0] > cycles[1][0] > cycles[2][0] == K + M - 1
    assert cycles[0][1] > cycles[1][1] > cycles[2][1]


@pytest.mark.slow
def test_dmatmul_verilator_p8():
    """P = 8, L = 16 through Verilator: a KWT-1-like Q/K/V shape (K = 64, N = 192: two column
    passes) on slowly changing tokens, dst CMEM with REQ, bit-exact, cycles as the cost model."""
    from sim.backends import VerilatorBackend, hardware_status
    ok, why = hardware_status()
    if not ok:
        pytest.skip(why)
    P, L, M, K, N, theta = 8, 16, 20, 64, 192, 3
    rng = np.random.default_rng(8)
    X, W = rows_case(rng, M, K, 5), rng.integers(-128, 128, (K, N))
    bias = rng.integers(-5000, 5000, N)
    m, sh = fit(matmul(X, W, bias[None, :]), 3000)
    pg, out = cmem_case(P, L, X, W, theta, bias, m, sh)
    img, base, n = image_of(pg)
    cfg = AccelConfig(pes=P, lanes=L)
    res = VerilatorBackend().run(img, n, cfg, prog_base=base)
    words = [int.from_bytes(bytes(row), "little") for row in res.ext]
    T = tiles(N, L)
    want, nnz = golden(X, W, theta, bias, m, sh, *INT16)
    np.testing.assert_array_equal(c_from_words(words, M, T, L, out)[:, :N], want)
    _, cnt = interpret(img.reshape(-1), base, n, cfg)
    assert res.counters["MAC_CYCLES"] == 2 * int(np.maximum(nnz, 1).sum())
    assert abs(res.counters["CYCLES"] - cnt["CYCLES"]) <= 8


@pytest.mark.parametrize("theta", [2, 254])
def test_dmatmul_threshold_boundary_int9(theta):
    """The compare at its edges: int9 tokens (2·A made on chip) whose changes are exactly ±θ
    (not sent), ±(θ + 2) (sent) and full-scale jumps −256 ↔ 254 (|Δ| = 510 > any θ)."""
    P, L, M, K, N = 2, 4, 8, 8, 6
    rng = np.random.default_rng(30 + theta)
    h = theta // 2
    steps = np.array([0, h, -h, h + 1, -(h + 1), 127, -128])
    A = np.zeros((M, K), np.int64)
    A[0] = rng.choice([-128, -1, 0, 1, 127], K)
    for t in range(1, M):       # int8 walk: every step's size is one of the edge cases
        A[t] = np.clip(A[t - 1] + rng.choice(steps, K), -128, 127)
    A[M - 2] = -128
    A[M - 1] = 127
    X = 2 * A
    W = rng.integers(-128, 128, (K, N))
    bias = rng.integers(-3000, 3000, N)
    m, sh = fit(matmul(X, W, bias[None, :]), 200)
    T = tiles(N, L)
    pg = Program(L)
    ob = int9_dmatmul(pg, P, A, W, bias, m, sh, sat=Sat.INT9, flags=Flag.BIAS, imm=theta << 8)
    o, _ = observe(pg, rows=M, n=N, a_base=ob, a_stride=T * L, b_base=200, out_base=0)
    pg(Op.HALT)
    r, _, _ = run_both(pg, P)
    xhat, _ = delta_rows(X, theta)
    d = np.abs(np.diff(X, axis=0))
    assert (d == theta).any() and (d > theta).any() and d.max() == 510   # the edges occur
    want = requant(matmul(xhat, W, bias[None, :]), m, sh, *INT9)
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, o)[:, :N], want)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16])
def test_at_most_one(n):
    """The emit sequencer's "at most one bit set" tree (hw.array.at_most_one), exhaustive up to
    8 bits, every value with ≤ 3 bits set and a random sample at 16."""
    from itertools import combinations

    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from hw.array import at_most_one
    v, o = Signal(n), Signal()
    m = Module()
    m.d.comb += o.eq(at_most_one(v))
    if n <= 8:
        values = range(1 << n)
    else:
        rng = np.random.default_rng(7)
        few = {sum(1 << b for b in bits) for r in range(4) for bits in combinations(range(n), r)}
        values = sorted(few | set(int(x) for x in rng.integers(0, 1 << n, 500)) | {(1 << n) - 1})
    sim = Simulator(m)

    async def bench(ctx):
        for x in values:
            ctx.set(v, x)
            assert ctx.get(o) == (bin(x).count("1") <= 1), x
    sim.add_testbench(bench)
    sim.run()
