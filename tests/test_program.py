"""sim/program.py: layouts, the assembler, the program generators and the ISA interpreter
(the golden backend), all against sim.golden (fixed seeds)."""
import numpy as np
import pytest

from hw.isa import Dst, ErrorCode, Flag, Op, Sat, decode, encode
from sim.errors import InputError
from sim.golden import matmul, requant
from sim.program import (AccelConfig, AcceleratorError, Assembler, CostModel, ImageBuilder, Program,
                         SimulationError, Stage, a_words, b_words, c_from_words, chain_program,
                         chain_reference, interpret, matmul_program, param_words)

SHAPES = [(1, 1, 1), (2, 3, 5), (7, 13, 17), (31, 37, 41), (99, 64, 192), (99, 64, 99),
          (99, 99, 64), (16, 256, 33), (99, 256, 64)]
CONFIGS = [(1, 4), (2, 4), (3, 4), (8, 16), (5, 8)]


def rand(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, shape).astype(np.int8 if lo >= -128 and hi <= 127 else np.int64)


def run_golden(job):
    ext, counters = interpret(job.image, job.prog_base, job.prog_len, job.config)
    return job.read(ext), counters, ext


# ---- layouts

def test_layouts_round_trip():
    rng = np.random.default_rng(0)
    L = 4
    a = rand(rng, (3, 6))
    w = a_words(a, L)
    assert w.shape == (3 * 2, L)
    assert np.array_equal(w.view(np.int8).reshape(3, 8)[:, :6], a)
    assert not w.view(np.int8).reshape(3, 8)[:, 6:].any()
    b = rand(rng, (5, 7))
    bw = b_words(b, L).view(np.int8)
    assert bw.shape == (2 * 5, L)
    for t in range(2):
        for j in range(5):
            cols = b[j, t * L:(t + 1) * L]
            assert np.array_equal(bw[t * 5 + j, :len(cols)], cols)
    bias = rng.integers(-2**31, 2**31, 6)
    m = rng.integers(0, 2**15, 6)
    sh = rng.integers(0, 48, 6)
    pw = param_words(bias, m, sh, L).reshape(2, 7 * L)
    assert np.array_equal(pw[0, :16].view("<i4"), bias[:4])
    assert np.array_equal(pw[1, :8].view("<i4"), [bias[4], bias[5]])
    assert np.array_equal(pw[0, 16:24].view("<i2"), m[:4])
    assert np.array_equal(pw[0, 24:28], sh[:4])
    c = rng.integers(-2**31, 2**31, (3, 8)).astype("<i4")
    assert np.array_equal(c_from_words(c.view(np.uint8).reshape(-1, L), 3, 2, L), c)


@pytest.mark.parametrize("lanes", [4, 8, 16, 32])
def test_program_words_round_trip(lanes):
    cfg = AccelConfig(pes=2, lanes=lanes)
    asm = Assembler(cfg)
    asm.load_a(5, 3, 7)
    asm.matmul(rows=3, k=7, tiles=1, n=3, bias=True, dst=Dst.AMEM, sat=Sat.UINT8, relu=True,
               out_base=100, out_stride=lanes)
    asm.halt()
    words = asm.program.to_words(lanes)
    assert words.shape == (3 * 32 // lanes, lanes)
    assert Program.from_words(words).instrs == asm.program.instrs
    # word i holds instruction bits 8L·i … 8L·(i+1)−1
    w0 = asm.program.encode()[0]
    assert int.from_bytes(words[0].tobytes(), "little") == w0 & ((1 << 8 * lanes) - 1)
    assert decode(encode(Op.MATMUL, k=7, count=3))["count"] == 3
    assert "MATMUL" in asm.program.disassemble()


def test_image_builder_regions():
    img = ImageBuilder(4)
    r1 = img.place("x", np.ones((3, 4), np.uint8))
    r2 = img.reserve("y", 5)
    r3 = img.put_b("b", np.ones((2, 2), np.int8))
    assert (r1.addr, r2.addr, r3.addr) == (0, 3, 8)
    out = img.build()
    assert out.shape == (10, 4) and out[:3].all() and not out[3:8].any()
    with pytest.raises(ValueError):
        img.reserve("x", 1)


# ---- matmul through the interpreter

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pl", CONFIGS)
def test_interpreter_matmul_matches_golden(shape, pl):
    M, K, N = shape
    P, L = pl
    rng = np.random.default_rng(hash((shape, pl)) % 2**32)
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    job = matmul_program(a, b, pes=P, lanes=L)
    c, counters, _ = run_golden(job)
    assert c.shape == (M, N)
    assert np.array_equal(c, matmul(a, b))
    # MAC_CYCLES counts beats like the hardware: K per tile (a tile still takes max(K, L)).
    assert counters["MAC_CYCLES"] == sum(-(-i["rows"] // P) * i["tiles"] * i["k"]
                                         for i in job.program.instrs if i["op"] == Op.MATMUL)
    assert counters["CYCLES"] >= counters["MAC_CYCLES"]
    assert counters["STATUS"] == 2 and counters["INSTRET"] == len(job.program)


@pytest.mark.parametrize("shape", [(1, 1, 1), (13, 29, 37), (99, 64, 192)])
def test_interpreter_bias_and_extremes(shape):
    M, K, N = shape
    rng = np.random.default_rng(7)
    a = np.full((M, K), -128, np.int8)
    b = np.full((K, N), -128, np.int8)
    bias = rng.integers(-2**20, 2**20, N)
    job = matmul_program(a, b, pes=3, lanes=4, bias=bias)
    assert np.array_equal(run_golden(job)[0], matmul(a, b, bias))


@pytest.mark.parametrize("depths", [
    dict(amem_depth=256, cmem_depth=64, bbuf_depth=128, pbuf_depth=2),   # row and tile chunks
    dict(amem_depth=128, cmem_depth=16, bbuf_depth=64, pbuf_depth=1),    # single buffers
    dict(amem_depth=128, cmem_depth=4096, bbuf_depth=4096, pbuf_depth=64),
])
def test_chunked_programs(depths):
    rng = np.random.default_rng(3)
    cfg = AccelConfig(pes=3, lanes=4, imem_depth=4096, **depths)
    for M, K, N in [(29, 61, 23), (7, 64, 41), (1, 1, 1)]:
        a, b = rand(rng, (M, K)), rand(rng, (K, N))
        bias = rng.integers(-1000, 1000, N)
        job = matmul_program(a, b, config=cfg, bias=bias)
        assert np.array_equal(run_golden(job)[0], matmul(a, b, bias))
        m, sh = rng.integers(1, 2**15, N), rng.integers(12, 20, N)
        job = matmul_program(a, b, config=cfg, requant=(m, sh), sat=Sat.INT9)
        assert np.array_equal(run_golden(job)[0], requant(matmul(a, b), m, sh, -256, 255))
        assert ordering_hazards(job.program, cfg) == []


@pytest.mark.parametrize("sat, relu", [(Sat.INT8, False), (Sat.INT9, True), (Sat.UINT8, False)])
def test_requant_output(sat, relu):
    rng = np.random.default_rng(11)
    M, K, N = 37, 50, 29
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    bias = rng.integers(-5000, 5000, N)
    m, sh = rng.integers(0, 2**15, N), rng.integers(14, 24, N)
    job = matmul_program(a, b, pes=2, lanes=8, bias=bias, requant=(m, sh), sat=sat, relu=relu)
    assert job.notes  # the identity move-out is reported
    expected = chain_reference(a, [Stage(b, bias, m, sh, sat, relu)])
    assert np.array_equal(run_golden(job)[0], expected)


@pytest.mark.parametrize("pl", [(2, 4), (3, 4), (8, 16)])
def test_chained_matmul(pl):
    """A·B1 → requant → AMEM → ·B2 → requant → AMEM → ·B3 + bias → C (int32)."""
    P, L = pl
    rng = np.random.default_rng(5)
    M, K = 99, 64
    a = rand(rng, (M, K))
    stages = [
        Stage(rand(rng, (K, 48)), rng.integers(-3000, 3000, 48), rng.integers(1, 2**15, 48),
              rng.integers(16, 22, 48), Sat.INT9),
        Stage(rand(rng, (48, 19)), None, rng.integers(1, 2**15, 19), rng.integers(16, 22, 19),
              Sat.UINT8, relu=True),
        Stage(rand(rng, (19, 33)), rng.integers(-100, 100, 33)),
    ]
    job = chain_program(a, stages, pes=P, lanes=L)
    c = run_golden(job)[0]
    expected = chain_reference(a, stages)
    assert np.array_equal(c, expected)
    # the intermediate really used the int9 range (not trivially clipped)
    x1 = chain_reference(a, stages[:1])
    assert x1.min() < -128 or x1.max() > 127


def _attention_program(cfg, x, wq, wk, wv, wp, ms):
    """Q = rq(X·Wq) → AMEM; Kᵀ = rq(X·Wk) → BBUF_T; S = Q·Kᵀ → CMEM (stored);
    V = rq(X·Wv) → BBUF_ROWS; W = rq(X·Wp) (M columns) → AMEM; O = W·V → CMEM (stored)."""
    P, L = cfg.pes, cfg.lanes
    M, D = x.shape
    d = wq.shape[1]
    td, tm = -(-d // L), -(-M // L)
    img = ImageBuilder(L)
    xr = img.put_a("X", x)
    regs = {n: img.put_b(n, w) for n, w in (("Wq", wq), ("Wk", wk), ("Wv", wv), ("Wp", wp))}
    preg = {n: img.put_params("P" + n, np.zeros(w.shape[1], np.int64), ms[n][0], ms[n][1])
            for n, w in (("Wq", wq), ("Wk", wk), ("Wv", wv), ("Wp", wp))}
    s_reg = img.reserve("S", M * tm * 4)
    o_reg = img.reserve("O", M * td * 4)
    asm = Assembler(cfg)
    # BBUF map: [0, 1024) weights, 1024… Kᵀ (K' = d rows, tm tiles), 2048… V (K' = M rows)
    KT, VB = 1024, 2048
    rows_local = -(-M // P)
    asm.load_a(xr.addr, M, D, 0, D)
    q_base = rows_local * D
    w_base = q_base + rows_local * td * L
    for name, dst, out_base, out_stride, tiles in (
            ("Wq", Dst.AMEM, q_base, td * L, td), ("Wk", Dst.BBUF_T, KT, d, td),
            ("Wv", Dst.BBUF_ROWS, VB, M, td), ("Wp", Dst.AMEM, w_base, tm * L, tm)):
        n = {"Wp": M}.get(name, d)
        asm.load_b(regs[name].addr, regs[name].words, 0)
        asm.load_p(preg[name].addr, tiles, 0)
        asm.sync()
        asm.matmul(rows=M, k=D, tiles=tiles, n=n, a_stride=D, dst=dst, out_base=out_base,
                   out_stride=out_stride, sat=Sat.INT8)
        asm.sync()
    asm.matmul(rows=M, k=d, tiles=tm, n=M, a_base=q_base, a_stride=td * L, b_base=KT,
               out_base=0, out_stride=tm * L)
    asm.sync()
    asm.store_c(s_reg.addr, M, tm, 0, tm * L)
    asm.matmul(rows=M, k=M, tiles=td, n=d, a_base=w_base, a_stride=tm * L, b_base=VB,
               out_base=rows_local * tm * L, out_stride=td * L)
    asm.sync()
    asm.store_c(o_reg.addr, M, td, rows_local * tm * L, td * L)
    asm.halt()
    prog = img.put_program("program", asm.program)
    return img.build(), asm.program, prog.addr, s_reg, o_reg


def attention_case(P, L, M=21, D=24, d=10, seed=9):
    rng = np.random.default_rng(seed)
    cfg = AccelConfig(pes=P, lanes=L)
    x = rand(rng, (M, D))
    ws = {n: rand(rng, (D, M if n == "Wp" else d)) for n in ("Wq", "Wk", "Wv", "Wp")}
    ms = {n: (rng.integers(1, 2**15, w.shape[1]), rng.integers(17, 20, w.shape[1]))
          for n, w in ws.items()}
    image, program, base, s_reg, o_reg = _attention_program(cfg, x, ws["Wq"], ws["Wk"], ws["Wv"],
                                                            ws["Wp"], ms)

    def rq(name):
        return requant(matmul(x, ws[name]), *ms[name], -128, 127)
    q, k, v, w = rq("Wq"), rq("Wk"), rq("Wv"), rq("Wp")
    expected = {"S": matmul(q, k.T), "O": matmul(w, v)}

    def read(ext):
        tm, td = -(-M // L), -(-d // L)
        return {"S": c_from_words(ext[s_reg.addr:s_reg.addr + s_reg.words], M, tm, L)[:, :M],
                "O": c_from_words(ext[o_reg.addr:o_reg.addr + o_reg.words], M, td, L)[:, :d]}
    return cfg, image, program, base, read, expected


@pytest.mark.parametrize("pl", [(1, 4), (3, 4), (8, 16)])
def test_bbuf_t_and_bbuf_rows(pl):
    cfg, image, program, base, read, expected = attention_case(*pl)
    ext, _ = interpret(image, base, len(program), cfg)
    got = read(ext)
    assert np.array_equal(got["S"], expected["S"])
    assert np.array_equal(got["O"], expected["O"])


def test_accum_flag_splits_k():
    rng = np.random.default_rng(2)
    cfg = AccelConfig(pes=2, lanes=4)
    M, K, N = 9, 20, 7
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    bias = rng.integers(-99, 99, N)
    img = ImageBuilder(4)
    ar = img.put_a("A", a)
    b1, b2 = img.put_b("B1", b[:12]), img.put_b("B2", b[12:])
    pr = img.put_params("P", bias, np.zeros(N, np.int64), np.zeros(N, np.int64))
    cr = img.reserve("C", M * 2 * 4)
    asm = Assembler(cfg)
    asm.load_a(ar.addr, M, K, 0, K)
    asm.load_b(b1.addr, b1.words, 0)
    asm.load_b(b2.addr, b2.words, 100)
    asm.load_p(pr.addr, 2, 0)
    asm.sync()
    asm.matmul(rows=M, k=12, tiles=2, n=N, a_stride=K, bias=True)
    asm.matmul(rows=M, k=8, tiles=2, n=N, a_base=12, a_stride=K, b_base=100, accum=True)
    asm.sync()
    asm.store_c(cr.addr, M, 2)
    asm.halt()
    pg = img.put_program("prog", asm.program)
    ext, _ = interpret(img.build(), pg.addr, len(asm.program), cfg)
    assert np.array_equal(c_from_words(ext[cr.addr:], M, 2, 4)[:, :N], matmul(a, b, bias))


def test_padding_columns_not_written():
    """count = N < tiles·L: CMEM beyond column N keeps its old value (here, a first result)."""
    cfg = AccelConfig(pes=1, lanes=4)
    img = ImageBuilder(4)
    ar = img.put_a("A", np.ones((1, 2), np.int8))
    br = img.put_b("B", np.full((2, 4), 3, np.int8))
    cr = img.reserve("C", 4)
    asm = Assembler(cfg)
    asm.load_a(ar.addr, 1, 2)
    asm.load_b(br.addr, br.words)
    asm.matmul(rows=1, k=2, tiles=1)            # all 4 columns: 6
    asm.load_b(br.addr, br.words, 10)
    asm.matmul(rows=1, k=1, tiles=1, n=2, b_base=10)   # columns 0, 1: 3
    asm.sync()
    asm.store_c(cr.addr, 1, 1)
    asm.halt()
    pg = img.put_program("prog", asm.program)
    ext, _ = interpret(img.build(), pg.addr, len(asm.program), cfg)
    assert c_from_words(ext[cr.addr:], 1, 1, 4).tolist() == [[3, 3, 6, 6]]


# ---- errors of the accelerator (interpreter side)

def bad_program_cases(cfg):
    """(name, assembler steps, expected code, expected PC) — shared with the hardware tests."""
    L = cfg.lanes
    return [
        ("illegal opcode", lambda s: s.raw(0x7F), ErrorCode.ILLEGAL_OPCODE, 1),
        ("AMEM range", lambda s: s.raw(Op.LOAD_A, rows=1, k=4, a_base=cfg.amem_depth - 2),
         ErrorCode.AMEM_RANGE, 1),
        ("CMEM range", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1,
                                       out_base=cfg.cmem_depth - 1), ErrorCode.CMEM_RANGE, 1),
        ("BBUF range", lambda s: s.raw(Op.LOAD_B, count=4, b_base=cfg.bbuf_depth - 1),
         ErrorCode.BBUF_RANGE, 1),
        ("PBUF range", lambda s: s.raw(Op.LOAD_P, count=2, p_base=cfg.pbuf_depth - 1),
         ErrorCode.PBUF_RANGE, 1),
        ("MATMUL k = 0", lambda s: s.raw(Op.MATMUL, rows=1, k=0, tiles=1), ErrorCode.BAD_FIELD, 1),
        ("ACCUM to BBUF", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1, dst=Dst.BBUF_T,
                                          flags=Flag.ACCUM), ErrorCode.BAD_FIELD, 1),
        ("dst out of range", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1, dst=7),
         ErrorCode.BAD_FIELD, 1),
        ("count > tiles·L", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1, count=L + 1),
         ErrorCode.BAD_FIELD, 1),
        ("unknown flag", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1, flags=8),
         ErrorCode.BAD_FIELD, 1),
        ("INT16 into AMEM", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1, dst=Dst.AMEM,
                                            sat=Sat.INT16), ErrorCode.BAD_FIELD, 1),
        ("UINT8 into BBUF", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=1, dst=Dst.BBUF_T,
                                            sat=Sat.UINT8), ErrorCode.BAD_FIELD, 1),
        ("A read past AMEM", lambda s: s.raw(Op.MATMUL, rows=cfg.pes + 1, k=2, tiles=1,
                                             a_stride=cfg.amem_depth), ErrorCode.AMEM_RANGE, 1),
        ("B read past BBUF", lambda s: s.raw(Op.MATMUL, rows=1, k=cfg.bbuf_depth, tiles=2),
         ErrorCode.BBUF_RANGE, 1),
        ("BBUF_ROWS past BBUF", lambda s: s.raw(Op.MATMUL, rows=5, k=1, tiles=1, dst=Dst.BBUF_ROWS,
                                                out_base=cfg.bbuf_depth - 4), ErrorCode.BBUF_RANGE, 1),
        ("PBUF read", lambda s: s.raw(Op.MATMUL, rows=1, k=1, tiles=2, flags=Flag.BIAS,
                                      p_base=cfg.pbuf_depth - 1), ErrorCode.PBUF_RANGE, 1),
        ("STORE_C past CMEM", lambda s: s.raw(Op.STORE_C, rows=cfg.pes + 1, tiles=1,
                                              out_stride=cfg.cmem_depth), ErrorCode.CMEM_RANGE, 1),
        ("error after work", lambda s: (s.raw(Op.LOAD_B, count=2), s.raw(Op.SYNC), s.raw(0x21)),
         ErrorCode.ILLEGAL_OPCODE, 3),
    ]


def build_bad(cfg, step, halt=True):
    asm = Assembler(cfg, check=False)
    asm.nop()
    step(asm)
    if halt:
        asm.halt()
    img = ImageBuilder(cfg.lanes)
    img.reserve("data", 8)
    pg = img.put_program("prog", asm.program)
    return img.build(), asm.program, pg.addr


N_BAD = 18


def test_bad_case_count():
    assert len(bad_program_cases(AccelConfig(pes=1, lanes=4))) == N_BAD


@pytest.mark.parametrize("case", range(N_BAD))
def test_interpreter_errors(case):
    cfg = AccelConfig(pes=2, lanes=4, amem_depth=64, cmem_depth=64, bbuf_depth=64, pbuf_depth=4,
                      imem_depth=16)
    name, step, code, pc = bad_program_cases(cfg)[case]
    image, program, base = build_bad(cfg, step)
    with pytest.raises(AcceleratorError) as e:
        interpret(image, base, len(program), cfg)
    assert (e.value.code, e.value.pc) == (code, pc), name
    # the same cases at P = 8, L = 16 with the default depths (as the Verilator tests run them)
    big = AccelConfig(pes=8, lanes=16)
    name, step, code, pc = bad_program_cases(big)[case]
    image, program, base = build_bad(big, step)
    with pytest.raises(AcceleratorError) as e:
        interpret(image, base, len(program), big)
    assert e.value.code == code and e.value.pc == pc, name
    assert code.name in str(e.value) and f"PC {pc}" in str(e.value)


def test_program_range_errors():
    cfg = AccelConfig(pes=1, lanes=4, imem_depth=16)
    image, program, base = build_bad(cfg, lambda s: s.nop(), halt=False)
    for length, pc in ((0, 0), (17, 0), (len(program), len(program))):
        with pytest.raises(AcceleratorError) as e:
            interpret(image, base, length, cfg)
        assert e.value.code == ErrorCode.PROGRAM_RANGE and e.value.pc == pc


def test_ext_access_outside_image():
    cfg = AccelConfig(pes=1, lanes=4)
    image, program, base = build_bad(cfg, lambda s: s.raw(Op.LOAD_B, ext_addr=10_000, count=1))
    with pytest.raises(SimulationError, match="past the end"):
        interpret(image, base, len(program), cfg)


def test_assembler_refuses_what_hardware_rejects():
    cfg = AccelConfig(pes=2, lanes=4, amem_depth=64)
    asm = Assembler(cfg)
    with pytest.raises(InputError, match="AMEM_RANGE"):
        asm.load_a(0, rows=4, k=40)
    with pytest.raises(InputError, match="does not fit"):
        asm.load_b(0, count=1 << 33)


# ---- input checks

@pytest.mark.parametrize("a, b, kw, message", [
    (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8), {}, "integer"),
    (np.array([[np.nan]]), np.zeros((1, 1), np.int8), {}, "NaN"),
    (np.full((2, 3), 128), np.zeros((3, 2), np.int8), {}, "[-128, 127]"),
    (np.zeros((2, 3), np.int8), np.full((3, 2), -129), {}, "[-128, 127]"),
    (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), {}, "inner dimensions"),
    (np.zeros((2, 3, 1), np.int8), np.zeros((3, 2), np.int8), {}, "dimension"),
    (np.zeros((0, 3), np.int8), np.zeros((3, 2), np.int8), {}, "empty"),
    (np.zeros((2, 5000), np.int8), np.zeros((5000, 2), np.int8), {}, "AMEM"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), {"bias": np.zeros(3, np.int64)}, "2 elements"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), {"bias": np.array([2**31, 0])}, "bias"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), {"requant": (2**15, 3)}, "m of"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), {"requant": (1, 48)}, "sh of"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), {"requant": (1, 3), "sat": Sat.INT16}, "INT16"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), {"relu": True}, "relu"),
    (np.full((1, 4), -128, np.int8), np.full((4, 1), -128, np.int8),
     {"bias": np.array([2**31 - 2**15])}, "2³¹"),
])
def test_matmul_program_input_errors(a, b, kw, message):
    with pytest.raises(InputError) as e:
        matmul_program(a, b, pes=2, lanes=4, **kw)
    assert message in str(e.value)


def test_config_checks():
    with pytest.raises(InputError, match="lanes"):
        AccelConfig(pes=1, lanes=3)
    with pytest.raises(InputError, match="power of two"):
        AccelConfig(pes=1, lanes=4, amem_depth=100)
    with pytest.raises(InputError, match="IMEM"):
        matmul_program(np.zeros((40, 8), np.int8), np.zeros((8, 40), np.int8),
                       config=AccelConfig(pes=1, lanes=4, amem_depth=8, cmem_depth=4,
                                          imem_depth=16))


# ---- cost model

def test_cost_model_scales_with_pes():
    rng = np.random.default_rng(1)
    a, b = rand(rng, (99, 64)), rand(rng, (64, 192))
    cycles = []
    for P in (1, 2, 4, 8, 16):
        job = matmul_program(a, b, pes=P, lanes=16)
        c = CostModel().run(job.program, job.config)
        assert c["MAC_CYCLES"] == -(-99 // P) * 12 * 64
        assert c["CYCLES"] > c["MAC_CYCLES"]
        cycles.append(c["CYCLES"])
    assert cycles == sorted(cycles, reverse=True)


# ---- the overlapped matmul program and the ordering rules it relies on

def _rows(i, P):
    """(PE, local row) of every row an instruction touches."""
    return [(n % P, n // P) for n in range(i["rows"])]


def _regions(i, cfg):
    """What an instruction reads and writes, as sets of (memory, PE, element)."""
    P, L = cfg.pes, cfg.lanes
    op, rd, wr = i["op"], set(), set()
    if op == Op.LOAD_A and i["k"]:
        wr = {("A", p, i["a_base"] + r * i["a_stride"] + j) for p, r in _rows(i, P)
              for j in range(i["k"])}
    elif op == Op.LOAD_B:
        wr = {("B", 0, i["b_base"] + j) for j in range(i["count"])}
    elif op == Op.LOAD_P:
        wr = {("P", 0, i["p_base"] + t) for t in range(i["count"])}
    elif op == Op.STORE_C:
        rd = {("C", p, i["out_base"] + r * i["out_stride"] + j) for p, r in _rows(i, P)
              for j in range(i["tiles"] * L)}
    elif op == Op.MATMUL:
        n = i["count"] or i["tiles"] * L
        rd = {("A", p, i["a_base"] + r * i["a_stride"] + j) for p, r in _rows(i, P)
              for j in range(i["k"])}
        rd |= {("B", 0, i["b_base"] + j) for j in range(i["tiles"] * i["k"])}
        if i["flags"] & Flag.BIAS or i["dst"] != Dst.CMEM:
            rd |= {("P", 0, i["p_base"] + t) for t in range(i["tiles"])}
        out = {(p, i["out_base"] + r * i["out_stride"] + c) for p, r in _rows(i, P)
               for c in range(n)}
        if i["dst"] == Dst.CMEM:
            wr = {("C",) + x for x in out}
            if i["flags"] & Flag.ACCUM:
                rd |= wr
        elif i["dst"] == Dst.AMEM:
            wr = {("A",) + x for x in out}
        else:
            wr = {("B", 0, None)}      # BBUF_*: not used by the generators checked here
    return rd, wr


def ordering_hazards(program, cfg):
    """The conflicts the hardware does not interlock (docs/architecture.md, *Ordering*), found
    statically: a LOAD overwriting what an earlier MATMUL may still read or write, and a MATMUL
    writing CMEM an earlier STORE_C may still read. Ordered (no hazard) are: anything behind a
    SYNC; a MATMUL behind a LOAD that was issued after the STORE_C (the MATMUL waits for the
    load, the load runs after the STORE_C); a MATMUL's A and B reads behind a later MATMUL
    (the array accepts a MATMUL only after the previous one's last beat). Its drain (PBUF, the
    results) is ordered only by SYNC."""
    stores, matmuls, found = [], [], []
    for pc, i in enumerate(program.instrs):
        op = i["op"]
        rd, wr = _regions(i, cfg)
        if op == Op.SYNC:
            stores, matmuls = [], []
        elif op in (Op.LOAD_A, Op.LOAD_B, Op.LOAD_P):
            stores = []
            for mpc, mrd, mwr in matmuls:
                if wr & (mrd | mwr):
                    found.append(f"PC {pc}: {Op(op).name} overwrites what MATMUL {mpc} uses")
        elif op == Op.STORE_C:
            stores.append((pc, rd))
        elif op == Op.MATMUL:
            for spc, srd in stores:
                if wr & srd:
                    found.append(f"PC {pc}: MATMUL writes CMEM STORE_C {spc} still reads")
            # Earlier MATMULs have issued their beats: only their drain goes on.
            matmuls = [(mpc, {x for x in mrd if x[0] == "P"}, mwr) for mpc, mrd, mwr in matmuls]
            matmuls.append((pc, rd, wr))
    return found


def test_ordering_hazards_checker():
    cfg = AccelConfig(pes=2, lanes=4)
    asm = Assembler(cfg)
    asm.matmul(rows=4, k=4, tiles=1, out_base=0)
    asm.store_c(0, 4, 1, 0)
    asm.matmul(rows=4, k=4, tiles=1, out_base=4)       # WAR on CMEM: flagged
    asm.matmul(rows=4, k=4, tiles=1, out_base=100)     # disjoint: fine
    asm.matmul(rows=4, k=4, tiles=1, b_base=8, out_base=200)
    asm.load_b(0, 4, 0)                                 # B of the first three: they have issued
    asm.load_p(0, 1, 0)                                 # their beats (a later MATMUL), fine
    asm.load_b(0, 0)                                    # fence
    asm.matmul(rows=4, k=4, tiles=1, out_base=0)       # behind the fence: fine
    asm.matmul(rows=4, k=4, tiles=1, bias=True, out_base=300)
    asm.matmul(rows=4, k=4, tiles=1, b_base=8, out_base=400)
    asm.load_p(0, 1, 0)                                 # MATMUL 9's drain may read it: flagged
    asm.load_b(8, 4, 8)                                 # MATMUL 10 may still read B: flagged
    asm.halt()
    found = ordering_hazards(asm.program, cfg)
    assert [f.split(":")[0] for f in found] == ["PC 2", "PC 11", "PC 12"], found


OVERLAP_CONFIGS = [
    AccelConfig(pes=3, lanes=4, amem_depth=256, cmem_depth=64, bbuf_depth=128, pbuf_depth=2),
    AccelConfig(pes=3, lanes=4, amem_depth=1024, cmem_depth=64, bbuf_depth=128, pbuf_depth=4),
    AccelConfig(pes=2, lanes=8, amem_depth=128, cmem_depth=256, bbuf_depth=4096, imem_depth=64),
    AccelConfig(pes=8, lanes=16),
]


@pytest.mark.parametrize("cfg", OVERLAP_CONFIGS, ids=lambda c: c.key())
@pytest.mark.parametrize("shape", [(29, 61, 23), (7, 30, 41), (1, 1, 1), (40, 16, 9)])
@pytest.mark.parametrize("chunk_passes, piece_tiles", [(None, None), (1, 1), (2, 3), (5, 100)])
def test_overlapped_programs(cfg, shape, chunk_passes, piece_tiles):
    """Every shape of the overlapped program: bit-exact in the interpreter, within IMEM, and
    free of the hazards the hardware does not interlock."""
    M, K, N = shape
    rng = np.random.default_rng(M * K + N)
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    bias = rng.integers(-3000, 3000, N) if M % 2 else None
    try:
        job = matmul_program(a, b, config=cfg, bias=bias, chunk_passes=chunk_passes,
                             piece_tiles=piece_tiles)
    except InputError as e:
        assert "IMEM" in str(e) and chunk_passes is not None, e
        return
    assert np.array_equal(run_golden(job)[0], matmul(a, b, bias))
    assert len(job.program) <= cfg.imem_depth
    assert ordering_hazards(job.program, cfg) == []


def test_overlapped_kwt_qkv():
    """99×64·64×192 at P = 8, L = 16: row-pass chunks whose A loads and int32 stores overlap
    the next chunk's MATMUL, the B load in pieces behind the first chunk; no SYNC; the cost
    model's utilization ≥ 90 % (59.7 % for the serial program it replaced)."""
    rng = np.random.default_rng(0)
    a, b = rand(rng, (99, 64)), rand(rng, (64, 192))
    cfg = AccelConfig(pes=8, lanes=16)
    job = matmul_program(a, b, config=cfg)
    ops = [i["op"] for i in job.program.instrs]
    assert Op.SYNC not in ops and ops.count(Op.MATMUL) > 6 and ops.count(Op.LOAD_B) > 1
    assert ops.count(Op.STORE_C) == ops.count(Op.LOAD_A)
    c = CostModel().run(job.program, cfg)
    assert c["MAC_CYCLES"] == 13 * 12 * 64
    assert 99 * 64 * 192 / (c["CYCLES"] * 8 * 16) >= 0.90
    one = matmul_program(a, b, config=cfg, chunk_passes=13, piece_tiles=12)
    assert [i["op"] for i in one.program.instrs].count(Op.MATMUL) == 1
    assert CostModel().run(one.program, cfg)["CYCLES"] > c["CYCLES"] + 3000
    assert ordering_hazards(job.program, cfg) == []


@pytest.mark.parametrize("kw", [dict(chunk_passes=0), dict(piece_tiles=-1),
                                dict(chunk_passes=1.5), dict(piece_tiles=True)])
def test_overlap_parameters_checked(kw):
    with pytest.raises(InputError, match="chunk_passes|piece_tiles"):
        matmul_program(np.ones((4, 4), np.int8), np.ones((4, 4), np.int8), pes=2, lanes=4, **kw)


def test_cost_model_overlap():
    """The model's interlocks: a STORE_C waits for the MATMULs before it only, a MATMUL for the
    loads before it only; ARRAY_CYCLES from the first beat to the last result."""
    cfg = AccelConfig(pes=2, lanes=4)
    asm = Assembler(cfg)
    asm.matmul(rows=8, k=16, tiles=2)                       # 4·2·16 = 128 beats
    asm.store_c(0, 8, 2)                                     # 64 words, during the next one
    asm.matmul(rows=8, k=16, tiles=2, out_base=64)
    asm.halt()
    c = CostModel().run(asm.program, cfg)
    from hw.pe import PE   # the drain tail: L + MAC_LATENCY + D_Y + 1
    assert c["ARRAY_CYCLES"] == 128 + 1 + 128 + 4 + PE.MAC_LATENCY + PE.D_Y + 1
    alone = Assembler(cfg)
    alone.matmul(rows=8, k=16, tiles=2)
    alone.matmul(rows=8, k=16, tiles=2, out_base=64)
    alone.halt()
    extra = c["CYCLES"] - CostModel().run(alone.program, cfg)["CYCLES"]
    assert extra < 64 // 2, extra          # the store hides behind the second MATMUL
