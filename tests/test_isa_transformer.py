"""The functional ISA model of docs/isa_transformer.md: MATMUL flags RSCALE/REQ/ACT and ACCUM
into AMEM, the row operations SOFTMAX/LAYERNORM/RADD, LOAD_C/LOAD_T, the static checks and
their error codes, the load lag in the interpreter and in the cost model — each against the
golden functions (fixed seeds)."""
import numpy as np
import pytest

from hw.isa import Dst, ErrorCode, Sat
from sim.errors import InputError
from sim.golden import (add, exp_weights, layernorm, layernorm_constants, matmul, requant, softmax,
                        softmax_constants)
from sim.golden.attention import mantissa15
from sim.golden.divide import divide
from sim.golden.fixed import INT9, INT16, rshift_round
from sim.golden.mac import wrap32
from hw.isa import Flag, Op
from sim.program import (AccelConfig, AcceleratorError, Assembler, CostModel, ImageBuilder, _full,
                         a_words, b_words, c_from_words, c_words, interpret, param_words,
                         static_check, t_words)

RNG = np.random.default_rng(11)
CONFIGS = [(1, 4), (3, 4), (2, 8), (8, 16)]


def run(cfg, data, build, *, out_rows, out_tiles, out_base=0, out_stride=None, order="program"):
    """``data``: {name: words}; ``build(asm, regions)`` emits the program body; a STORE_C of
    ``out_rows`` × ``out_tiles`` tiles from ``out_base`` and HALT follow. Returns the int64
    matrix stored."""
    img = ImageBuilder(cfg.lanes)
    regs = {k: img.place(k, v) for k, v in data.items()}
    out = img.reserve("out", out_rows * out_tiles * 4)
    asm = Assembler(cfg)
    build(asm, regs)
    asm.store_c(out.addr, out_rows, out_tiles, out_base, out_stride)
    asm.halt()
    prog = img.put_program("prog", asm.program)
    ext, counters = interpret(img.build(), prog.addr, len(asm.program), cfg, load_order=order)
    return c_from_words(ext[out.addr:], out_rows, out_tiles, cfg.lanes), counters


def pad(n, L):
    return -(-n // L) * L


@pytest.mark.parametrize("P, L", CONFIGS)
def test_load_c_store_c_round_trip(P, L):
    cfg = AccelConfig(pes=P, lanes=L)
    c = RNG.integers(-2**31, 2**31, (7, 2 * L + 3))
    T = -(-c.shape[1] // L)
    got, _ = run(cfg, {"c": c_words(c, L)},
                 lambda asm, r: asm.load_c(r["c"].addr, 7, T, 5, T * L + 2),
                 out_rows=7, out_tiles=T, out_base=5, out_stride=T * L + 2)
    np.testing.assert_array_equal(got[:, :c.shape[1]], c)


@pytest.mark.parametrize("P, L", CONFIGS)
def test_softmax_attention_mode_and_rscale(P, L):
    """SOFTMAX (attention mode) writes the weights and the row scales; P·V with RSCALE and the
    column requantization is the golden attention's second half."""
    cfg = AccelConfig(pes=P, lanes=L)
    N, d = 11, L + 3
    s = RNG.integers(-(1 << 20), 1 << 20, (N, N))
    s[3] = 77                                                  # an all-equal row
    v = RNG.integers(-128, 128, (N, d))
    c_e, sh_e = softmax_constants(3e-6)
    m_a = RNG.integers(1 << 13, 1 << 15, d)
    sh_a = RNG.integers(18, 23, d)
    R, Np = -(-N // P), pad(N, L)
    T = -(-d // L)

    def build(asm, r):
        asm.load_c(r["s"].addr, N, -(-N // L), 0, Np)
        asm.load_b(r["v"].addr, T * N, 0)
        asm.load_p(r["p"].addr, T, 0)
        asm.softmax(rows=N, k=N, a_base=0, a_stride=Np, dst=Dst.AMEM, out_base=3, out_stride=N + 1,
                    c_e=c_e, sh_e=sh_e)
        asm.matmul(rows=N, k=N, tiles=T, n=d, a_base=3, a_stride=N + 1, b_base=0, p_base=0,
                   dst=Dst.CMEM, out_base=R * Np, out_stride=T * L, rscale=True, req=True,
                   sat=Sat.INT9)

    data = {"s": c_words(s, L), "v": b_words(v, L), "p": param_words(np.zeros(d), m_a, sh_a, L)}
    got, _ = run(cfg, data, build, out_rows=N, out_tiles=T, out_base=R * Np, out_stride=T * L)
    w = exp_weights(s, c_e, sh_e)
    m_r, sh_r = mantissa15(divide(np.full(N, 1 << 32), w.sum(-1)), 24)
    t = rshift_round(matmul(w, v) * m_r[:, None], sh_r[:, None])
    np.testing.assert_array_equal(got[:, :d], requant(t, m_a, sh_a, *INT9))


@pytest.mark.parametrize("P, L", CONFIGS)
def test_softmax_norm(P, L):
    cfg = AccelConfig(pes=P, lanes=L)
    M, n = 9, 2 * L + 1
    s = RNG.integers(-(1 << 30), 1 << 30, (M, n))
    s[0] = 0
    s[1, 0] = (1 << 31) - 1
    c_e, sh_e = softmax_constants(2e-8)
    np_ = pad(n, L)
    R = -(-M // P)
    got, _ = run(cfg, {"s": c_words(s, L)}, lambda asm, r: (
        asm.load_c(r["s"].addr, M, np_ // L, 0, np_),
        asm.softmax(rows=M, k=n, a_base=0, a_stride=np_, dst=Dst.CMEM, out_base=R * np_,
                    out_stride=np_, c_e=c_e, sh_e=sh_e, norm=True)),
        out_rows=M, out_tiles=np_ // L, out_base=R * np_, out_stride=np_)
    np.testing.assert_array_equal(got[:, :n], softmax(s, c_e, sh_e))


@pytest.mark.parametrize("P, L", CONFIGS)
def test_layernorm_and_radd(P, L):
    """RADD in place (CMEM h += x·m ≫ sh) then LAYERNORM → AMEM → moved out by an identity
    MATMUL; and a LAYERNORM straight to CMEM with a per-column output shift."""
    cfg = AccelConfig(pes=P, lanes=L)
    M, D = 10, 3 * L - 1
    o = RNG.integers(-30000, 30000, (M, D))
    x = RNG.integers(-256, 255, (M, D))          # two int8 parts hold −256 … 254
    m_r, sh_r = RNG.integers(1, 1 << 15, D), RNG.integers(8, 20, D)
    ln = layernorm_constants(RNG.normal(1, 0.3, D), RNG.normal(0, 0.3, D), 2e-3,
                             np.full(D, 0.02), 1e-6)
    h1 = add(o, x, m_r, sh_r, *INT16)
    h1[2] = 1234                                                 # zero variance
    o[2] = 1234 - rshift_round(x[2] * m_r, sh_r)
    y = layernorm(h1, **ln, lo=INT9[0], hi=INT9[1])
    Dp, T, R = pad(D, L), -(-D // L), -(-M // P)
    eye = np.eye(D, dtype=np.int64)
    # x enters AMEM through an identity matmul (LOAD_A moves int8 only)
    xs = np.concatenate([np.clip(x, -128, 127), x - np.clip(x, -128, 127)], axis=1)
    two = np.concatenate([eye, eye])

    def build(asm, r):
        asm.load_a(r["xs"].addr, M, 2 * D, 0, pad(2 * D, L))
        asm.load_b(r["two"].addr, T * 2 * D, 0)
        asm.load_b(r["eye"].addr, T * D, T * 2 * D)
        asm.load_p(r["pr"].addr, T, 0)
        asm.load_p(r["pln"].addr, T, T)
        asm.load_p(r["pid"].addr, T, 2 * T)
        asm.load_c(r["o"].addr, M, T, 0, Dp)
        asm.matmul(rows=M, k=2 * D, tiles=T, n=D, a_base=0, a_stride=pad(2 * D, L), b_base=0,
                   p_base=2 * T, dst=Dst.AMEM, out_base=R * pad(2 * D, L), out_stride=Dp,
                   sat=Sat.INT9)
        xb = R * pad(2 * D, L)
        asm.radd(rows=M, k=D, a_base=0, a_stride=Dp, b_base=xb, b_stride=Dp, dst=Dst.CMEM,
                 out_base=0, out_stride=Dp, p_base=0, sat=Sat.INT16)
        asm.layernorm(rows=M, k=D, a_base=0, a_stride=Dp, dst=Dst.AMEM, out_base=xb,
                      out_stride=Dp, p_base=T, r_d=ln["r_d"], E=ln["E"], sat=Sat.INT9)
        asm.matmul(rows=M, k=D, tiles=T, n=D, a_base=xb, a_stride=Dp, b_base=T * 2 * D,
                   dst=Dst.CMEM, out_base=R * Dp, out_stride=Dp)

    data = {"xs": a_words(xs, L), "two": b_words(two, L), "eye": b_words(eye, L),
            "pr": param_words(np.zeros(D), m_r, sh_r, L),
            "pln": param_words(ln["B"], ln["G"], np.full(D, ln["sh_o"]), L),
            "pid": param_words(np.zeros(D), np.ones(D), np.zeros(D), L), "o": c_words(o, L)}
    got, _ = run(cfg, data, build, out_rows=M, out_tiles=T, out_base=R * Dp, out_stride=Dp)
    np.testing.assert_array_equal(got[:, :D], y)
    # per-column shifts: column j uses sh_j (G and B scaled to match)
    sh = np.where(np.arange(D) % 2, ln["sh_o"], ln["sh_o"] - 1)
    G = np.where(np.arange(D) % 2, ln["G"], ln["G"] // 2)
    B = np.where(np.arange(D) % 2, ln["B"], ln["B"] // 2)
    got2, _ = run(cfg, {"h": c_words(h1, L), "p": param_words(B, G, sh, L)}, lambda asm, r: (
        asm.load_c(r["h"].addr, M, T, 0, Dp), asm.load_p(r["p"].addr, T, 0),
        asm.layernorm(rows=M, k=D, a_base=0, a_stride=Dp, dst=Dst.CMEM, out_base=R * Dp,
                      out_stride=Dp, p_base=0, r_d=ln["r_d"], E=ln["E"], sat=Sat.INT16)),
        out_rows=M, out_tiles=T, out_base=R * Dp, out_stride=Dp)
    for j in range(D):
        one = layernorm(h1, ln["r_d"], ln["E"], np.full(D, G[j]), np.full(D, B[j]), sh[j],
                        *INT16)
        np.testing.assert_array_equal(got2[:, j], one[:, j])


@pytest.mark.parametrize("P, L", CONFIGS)
def test_act_table_and_accum_into_amem(P, L):
    """ACCUM with dst AMEM starts from CMEM at the output address; ACT looks the int8 result up
    in table imm[0] (LOAD_T); RELU before the table."""
    cfg = AccelConfig(pes=P, lanes=L)
    M, K, N = 7, 5, L + 2
    a = RNG.integers(-128, 128, (M, K))
    b = RNG.integers(-128, 128, (K, N))
    c0 = RNG.integers(-5000, 5000, (M, N))
    m, sh = RNG.integers(1 << 12, 1 << 14, N), np.full(N, 22)
    tables = RNG.integers(-256, 256, (2, 256))
    T, Np, R = -(-N // L), pad(N, L), -(-M // P)
    eye = np.eye(N, dtype=np.int64)
    for table, relu in ((0, False), (1, True)):
        def build(asm, r):
            asm.load_a(r["a"].addr, M, K, 0, pad(K, L))
            asm.load_b(r["b"].addr, T * K, 0)
            asm.load_b(r["eye"].addr, T * N, T * K)
            asm.load_p(r["p"].addr, T, 0)
            asm.load_p(r["pid"].addr, T, T)
            asm.load_c(r["c0"].addr, M, T, 100, Np)
            asm.load_t(r["t"].addr, 512, 0)
            asm.matmul(rows=M, k=K, tiles=T, n=N, a_base=0, a_stride=pad(K, L), b_base=0, p_base=0,
                       dst=Dst.AMEM, out_base=100, out_stride=Np, accum=True, act=True,
                       relu=relu, table=table, sat=Sat.INT8)
            asm.matmul(rows=M, k=N, tiles=T, n=N, a_base=100, a_stride=Np, b_base=T * K,
                       dst=Dst.CMEM, out_base=R * Np + 100, out_stride=Np)
        data = {"a": a_words(a, L), "b": b_words(b, L), "eye": b_words(eye, L),
                "p": param_words(np.zeros(N), m, sh, L),
                "pid": param_words(np.zeros(N), np.ones(N), np.zeros(N), L),
                "c0": c_words(c0, L), "t": t_words(tables.reshape(-1), L)}
        got, _ = run(cfg, data, build, out_rows=M, out_tiles=T, out_base=R * Np + 100,
                     out_stride=Np)
        y = requant(matmul(a, b, c0), m, sh, -128, 127)
        if relu:
            y = np.maximum(y, 0)
        np.testing.assert_array_equal(got[:, :N], tables[table][y + 128])


def test_rscale_wraps_and_req_int16():
    """RSCALE wraps to int32 (a large row scale); REQ stores the saturated value."""
    cfg = AccelConfig(pes=2, lanes=4)
    # one softmax row whose scale is big: w = [255], σ = 255 → r = 2³²/255
    s = np.array([[5]])
    v = np.array([[127, -128, 1, 0]])
    c_e, sh_e = softmax_constants(1e-3)
    got, _ = run(cfg, {"s": c_words(s, 4), "v": b_words(v, 4),
                       "p": param_words(np.zeros(4), np.full(4, 1), np.zeros(4), 4)},
                 lambda asm, r: (asm.load_c(r["s"].addr, 1, 1, 0, 4),
                                 asm.load_b(r["v"].addr, 1, 0), asm.load_p(r["p"].addr, 1, 0),
                                 asm.softmax(rows=1, k=1, dst=Dst.AMEM, out_base=0, c_e=c_e,
                                             sh_e=sh_e),
                                 asm.matmul(rows=1, k=1, tiles=1, n=4, a_base=0, b_base=0,
                                            p_base=0, dst=Dst.CMEM, out_base=8, out_stride=4,
                                            rscale=True, req=True, sat=Sat.INT16)),
                 out_rows=1, out_tiles=1, out_base=8, out_stride=4)
    m_r, sh_r = mantissa15(divide(np.array([1 << 32]), np.array([255])), 24)
    t = wrap32(rshift_round(255 * v * m_r[0], sh_r[0]))
    np.testing.assert_array_equal(got[0], np.clip(t, -32768, 32767)[0])


# ---- static checks

def check(cfg, op, **fields):
    return static_check(dict(op=int(op), **_full(fields)), cfg)


def code(cfg, op, **fields):
    err = check(cfg, op, **fields)
    return None if err is None else err[0]


def test_static_checks():
    cfg = AccelConfig(pes=2, lanes=4, amem_depth=64, cmem_depth=64, bbuf_depth=64, pbuf_depth=8)
    mm = dict(rows=2, k=2, tiles=1)
    BAD = ErrorCode.BAD_FIELD
    # MATMUL flags
    assert code(cfg, Op.MATMUL, **mm, flags=64) == BAD
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.AMEM, flags=Flag.ACCUM) is None
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.BBUF_T, flags=Flag.ACCUM) == BAD
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.AMEM, flags=Flag.REQ) == BAD
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.CMEM, flags=Flag.REQ, sat=Sat.INT16) is None
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.CMEM, flags=Flag.RSCALE) == BAD
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.CMEM, flags=Flag.RSCALE | Flag.REQ) is None
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.AMEM, flags=Flag.ACT, sat=Sat.INT9) == BAD
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.CMEM, flags=Flag.ACT) == BAD
    assert code(cfg, Op.MATMUL, **mm, dst=Dst.AMEM, flags=Flag.ACT) is None
    assert code(cfg, Op.MATMUL, rows=2 * 257, k=1, tiles=1, dst=Dst.AMEM,
                flags=Flag.RSCALE, a_stride=0, out_stride=0) == BAD
    # ACCUM into AMEM reads CMEM at the output address: CMEM range
    big_a = cfg.replace(amem_depth=256)
    assert code(big_a, Op.MATMUL, rows=4, k=2, tiles=1, dst=Dst.AMEM, flags=Flag.ACCUM,
                out_base=30, out_stride=40) == ErrorCode.CMEM_RANGE
    assert code(big_a, Op.MATMUL, rows=4, k=2, tiles=1, dst=Dst.AMEM, out_base=30,
                out_stride=40) is None
    # REQ reads PBUF
    assert code(cfg, Op.MATMUL, **mm, flags=Flag.REQ, p_base=8) == ErrorCode.PBUF_RANGE
    # flags on other opcodes
    assert code(cfg, Op.LOAD_B, count=1, flags=1) == BAD
    assert code(cfg, Op.SOFTMAX, rows=1, k=1, flags=8) is None
    assert code(cfg, Op.SOFTMAX, rows=1, k=1, flags=16) == BAD
    assert code(cfg, Op.LAYERNORM, rows=1, k=1, flags=8) == BAD
    # row operations
    row = dict(rows=2, k=4, a_stride=4, out_stride=4)
    for op in (Op.SOFTMAX, Op.LAYERNORM, Op.RADD):
        assert code(cfg, op, **row) is None
        assert code(cfg, op, **{**row, "k": 0}) == BAD
        assert code(cfg, op, **{**row, "k": 1025}) == BAD
        assert code(cfg, op, **{**row, "rows": 0}) == BAD
        assert code(cfg, op, **row, dst=Dst.BBUF_ROWS) == BAD
        assert code(cfg, op, **row, a_base=61) == ErrorCode.CMEM_RANGE
        assert code(cfg, op, **row, dst=Dst.AMEM, out_base=61) == ErrorCode.AMEM_RANGE
    assert code(cfg, Op.RADD, **row, b_base=61) == ErrorCode.AMEM_RANGE
    assert code(cfg, Op.RADD, **row, b_base=56, imm=4) is None
    assert code(cfg, Op.LAYERNORM, **row, p_base=7) is None
    assert code(cfg, Op.LAYERNORM, rows=1, k=5, p_base=7) == ErrorCode.PBUF_RANGE
    assert code(cfg, Op.SOFTMAX, rows=1, k=5, p_base=63) is None            # no PBUF
    assert code(cfg, Op.LAYERNORM, **row, dst=Dst.AMEM, sat=Sat.INT16) == BAD
    assert code(cfg, Op.SOFTMAX, rows=2 * 257, k=1) == BAD                  # RS entries
    assert code(cfg, Op.SOFTMAX, rows=2 * 257, k=1, a_stride=1, flags=8) == ErrorCode.CMEM_RANGE
    # priority: BAD_FIELD before AMEM before CMEM
    assert code(cfg, Op.RADD, rows=2, k=4, b_base=61, a_base=61, dst=Dst.AMEM) == \
        ErrorCode.AMEM_RANGE
    assert code(cfg, Op.RADD, rows=2, k=4, b_base=61, a_base=61, dst=7) == BAD
    # LAYERNORM RES (x rows: stride ext_addr[23:8]; PBUF: 2·⌈k/L⌉ tiles; ≤ 16 local rows)
    res = dict(row, rows=4, flags=Flag.RES)
    assert code(cfg, Op.LAYERNORM, **res, b_base=56, ext_addr=4 << 8) is None
    assert code(cfg, Op.LAYERNORM, **res, b_base=57, ext_addr=4 << 8) == ErrorCode.AMEM_RANGE
    assert code(cfg, Op.LAYERNORM, **res, p_base=6) is None
    assert code(cfg, Op.LAYERNORM, **res, p_base=7) == ErrorCode.PBUF_RANGE
    assert code(cfg, Op.LAYERNORM, **{**res, "rows": 2 * 17, "a_stride": 0,
                                      "out_stride": 0}) == BAD
    assert code(cfg, Op.RADD, **res) == BAD
    # MAXC: MATMUL dst CMEM without REQ, out_stride > N, column N in range; SOFTMAX column k
    mx = dict(rows=4, k=2, tiles=1, count=3, flags=Flag.MAXC, out_stride=4)
    assert code(cfg, Op.MATMUL, **mx, out_base=56) is None
    assert code(cfg, Op.MATMUL, **mx, out_base=57) == ErrorCode.CMEM_RANGE
    assert code(cfg, Op.MATMUL, **{**mx, "out_stride": 3}) == BAD
    assert code(cfg, Op.MATMUL, **mx, dst=Dst.AMEM) == BAD
    assert code(cfg, Op.MATMUL, **{**mx, "flags": Flag.MAXC | Flag.REQ}, sat=Sat.INT16) == BAD
    assert code(cfg, Op.SOFTMAX, **row, flags=Flag.MAXC, a_base=59) is None
    assert code(cfg, Op.SOFTMAX, **row, flags=Flag.MAXC, a_base=60) == ErrorCode.CMEM_RANGE
    assert code(cfg, Op.LAYERNORM, **row, flags=Flag.MAXC) == BAD
    # DMA
    assert code(cfg, Op.LOAD_C, rows=3, tiles=1, out_base=0, out_stride=61) == ErrorCode.CMEM_RANGE
    assert code(cfg, Op.LOAD_C, rows=0, tiles=1, out_base=100) is None
    assert code(cfg, Op.LOAD_T, count=512) is None
    assert code(cfg, Op.LOAD_T, count=1, a_base=512) == BAD
    assert code(cfg, 0x34) == ErrorCode.ILLEGAL_OPCODE


def test_assembler_refuses_and_interpreter_raises():
    cfg = AccelConfig(pes=2, lanes=4)
    asm = Assembler(cfg)
    with pytest.raises(InputError, match="BAD_FIELD"):
        asm.layernorm(rows=1, k=0, r_d=1, E=0)
    with pytest.raises(InputError, match="40 bits"):
        asm.layernorm(rows=1, k=4, r_d=1, E=1 << 40)
    with pytest.raises(InputError, match="lag"):
        asm.matmul(rows=1, k=1, tiles=1, lag=256)
    asm = Assembler(cfg, check=False)
    asm.nop()
    asm.raw(Op.SOFTMAX, rows=1, k=2000)
    asm.halt()
    img = ImageBuilder(4)
    prog = img.put_program("p", asm.program)
    with pytest.raises(AcceleratorError) as e:
        interpret(img.build(), prog.addr, 3, cfg)
    assert e.value.code == ErrorCode.BAD_FIELD and e.value.pc == 1


def test_lag_fields_and_cost_model():
    """The lag is ext_addr[7:0]; with it a MATMUL does not wait for a later, unrelated load
    (cost model), and a too large lag is visible to the late-load interpreter."""
    cfg = AccelConfig(pes=2, lanes=4)
    a = RNG.integers(-128, 128, (4, 8))
    b = RNG.integers(-128, 128, (8, 4))
    big = np.zeros((2000, 4), np.uint8)

    def prog(lag, order="program"):
        def build(asm, r):
            asm.load_a(r["a"].addr, 4, 8, 0, 8)
            asm.load_b(r["b"].addr, 8, 0)
            asm.load_b(r["big"].addr, 2000, 100)          # unrelated
            asm.matmul(rows=4, k=8, tiles=1, a_base=0, b_base=0, lag=lag)
        return run(cfg, {"a": a_words(a, 4), "b": b_words(b, 4), "big": big}, build,
                   out_rows=4, out_tiles=1, order=order)
    c0, k0 = prog(0)
    c1, k1 = prog(1)
    np.testing.assert_array_equal(c0, matmul(a, b))
    np.testing.assert_array_equal(c1, c0)
    # cost model: the MATMUL starts ≈ 2000 cycles earlier with lag 1
    starts = []
    for lag in (0, 1):
        asm = Assembler(cfg)
        asm.load_b(0, 8, 0)
        asm.load_b(0, 2000, 100)
        asm.matmul(rows=4, k=8, tiles=1, lag=lag)
        asm.halt()
        times = []
        counters = CostModel().run(asm.program, cfg, timeline=times)
        starts.append(times[2][0])
        assert counters["CYCLES"] >= 2000
    assert starts[1] < starts[0] - 1900
    # lag 2 lets the MATMUL run before B lands: the late-load order shows it
    c2, _ = prog(2, order="late")
    assert not np.array_equal(c2, c0)
    cm = CostModel()
    asm = Assembler(cfg)
    asm.softmax(rows=8, k=40, c_e=1, sh_e=0)
    asm.halt()
    n2 = cm.run(asm.program, cfg)["CYCLES"]
    asm = Assembler(cfg)
    asm.softmax(rows=8, k=40, c_e=1, sh_e=0, norm=True)
    asm.halt()
    assert cm.run(asm.program, cfg)["CYCLES"] > n2            # three passes instead of two
    # the row unit's documented timing (hw/rowunit.py): LAYERNORM ⌈rows/P⌉·2k + 27, RADD ·k + 27
    assert cm.row_cycles(dict(op=Op.LAYERNORM, rows=99, k=64, flags=0), AccelConfig(
        pes=8, lanes=16)) == 13 * 128 + 27
    assert cm.row_cycles(dict(op=Op.RADD, rows=99, k=64, flags=0), AccelConfig(
        pes=8, lanes=16)) == 13 * 64 + 27
    assert cm.row_cycles(dict(op=Op.SOFTMAX, rows=99, k=99, flags=0), AccelConfig(
        pes=8, lanes=16)) == 2637
