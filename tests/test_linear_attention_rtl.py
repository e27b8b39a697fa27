# amaranth: UnusedElaboratable=no
"""Linear attention in the RTL (docs/isa_transformer.md): MATMUL dst AMEM_T (transposed into
the PEs' A memories through the write-back blocks) and the RECIP row operation, against the ISA
interpreter (``sim.program.interpret``) bit for bit and cycle for cycle (the cost model), a
whole linear-attention head against ``sim.golden.linear_attention``, the new decode checks, and
one Verilator run at P = 8, L = 16."""
import numpy as np
import pytest

from hw.isa import Dst, ErrorCode, Flag, Op, Sat, decode, encode
from hw.pe import RowOp
from hw.rowunit import RowDatapath
from sim.backends import AmaranthBackend, GoldenBackend, VerilatorBackend
from sim.golden import (INT8, INT9, activation, divide, elu1_lut, encode_multiplier,
                        linear_attention, matmul, requant, rshift_round)
from sim.golden.attention import DEN_MIN, mantissa15
from sim.program import (AccelConfig, Assembler, CostModel, ImageBuilder, a_words, b_words,
                         c_from_words, c_words, param_words, static_check, t_words)
from tests.test_accelerator import SMALL, _run_many
from tests.test_rowunit import RowHarness, desc, run_ops

L4 = 4
RNG_SEED = 4242


def _cfg(P, L=L4, **kw):
    d = dict(amem_depth=512, cmem_depth=512, bbuf_depth=512, pbuf_depth=16, imem_depth=64,
             mem_latency=3)
    d.update(kw)
    return AccelConfig(pes=P, lanes=L, **d)


def _tiles(n, L):
    return -(-n // L)


class Prog:
    """An image (ImageBuilder) and a checked program (Assembler) built side by side."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.img = ImageBuilder(cfg.lanes)
        self.asm = Assembler(cfg)
        self.outs = {}
        self._n = 0

    def name(self, what):
        self._n += 1
        return f"{what}{self._n}"

    def put(self, words):
        return self.img.place(self.name("d"), words).addr

    def observe_c(self, key, rows, tiles, out_base, out_stride):
        """STORE_C of a CMEM block; remembered under ``key``."""
        r = self.img.reserve(self.name("o"), rows * tiles * 4)
        self.asm.store_c(r.addr, rows, tiles, out_base=out_base, out_stride=out_stride)
        self.outs[key] = (r.addr, rows, tiles)

    def observe_a(self, key, *, rows, k, a_base, a_stride, b_base, c_base):
        """AMEM rows (k int9 each) copied to CMEM by an identity MATMUL, then stored."""
        L = self.cfg.lanes
        T = _tiles(k, L)
        eye = np.eye(k, dtype=np.int64)
        self.asm.load_b(self.put(b_words(eye, L)), T * k, b_base)
        self.asm.matmul(rows=rows, k=k, tiles=T, n=k, a_base=a_base, a_stride=a_stride,
                        b_base=b_base, dst=Dst.CMEM, out_base=c_base, out_stride=T * L)
        self.observe_c(key, rows, T, c_base, T * L)

    def finish(self):
        self.asm.halt()
        prog = self.img.place("program", self.asm.program.to_words(self.cfg.lanes))
        return self.img.build(), prog.addr

    def read(self, ext, key):
        addr, rows, tiles = self.outs[key]
        L = self.cfg.lanes
        return c_from_words(ext[addr:addr + rows * tiles * 4], rows, tiles, L)


def run_both(pg, backend=None, *, tol=None):
    """The program on the ISA interpreter and on the RTL (Amaranth by default): the same final
    ext memory, bit for bit; with ``tol``, CYCLES within ``tol`` of the cost model (which does
    not model LOAD_A rows off a multiple of L, nor STALL_WB). Returns the ext memories and the
    RTL's counters."""
    image, base = pg.finish()
    n = len(pg.asm.program)
    gold = GoldenBackend().run(image, n, pg.cfg, prog_base=base)
    hw = (backend or AmaranthBackend(poll=16)).run(image, n, pg.cfg, prog_base=base,
                                                   max_cycles=400_000)
    for key in pg.outs:
        np.testing.assert_array_equal(pg.read(hw.ext, key), pg.read(gold.ext, key),
                                      err_msg=key)
    np.testing.assert_array_equal(hw.ext, gold.ext)
    if tol is not None:
        model = CostModel(mem_latency=pg.cfg.mem_latency).run(pg.asm.program, pg.cfg)
        assert abs(hw.counters["CYCLES"] - model["CYCLES"]) <= tol, (hw.counters, model)
    return hw.ext, gold.ext, hw.counters


# ------------------------------------------------------------------------------ RECIP (unit)

def test_recip_row_unit():
    """RECIP on the row unit alone (P = 2): RS entries = mantissa15(divide(2³², clip(den)), 16),
    (0, 0) for den ≤ 0; nothing else written; busy cycles as documented."""
    h = RowHarness()
    dens = np.array([0, 1, -1, DEN_MIN - 1, DEN_MIN, DEN_MIN + 1, (1 << 31) - 1, -(1 << 31),
                     65535 * 3, 123456789, 1 << 30])
    rng = np.random.default_rng(RNG_SEED)
    dens = np.concatenate([dens, rng.integers(-(1 << 31), 1 << 31, 6),
                           rng.integers(1, 1 << 20, 4)])
    rows = len(dens)                                    # 21: odd, PE 1 has one row less
    d = desc(RowOp.RECIP, rows=rows, k=1, a_base=37, a_stride=5, out_base=0, out_stride=1,
             dst=Dst.CMEM)
    got = {}

    def setup(ctx, mem):
        for p in range(2):
            for e in range(0, 160):
                mem.set_c(ctx, p, e, -77)
            for r in range(12):
                ctx.set(h.pes[p].rs_data[0][r], 0x1ABCDE)
        mem.set_rows(ctx, dens[:, None], 37, 5, cmem=True)

    def after(ctx, mem):
        got["rs"] = mem.get_rs(ctx, 24)
        got["c"] = [[mem.get_c(ctx, p, e) for e in range(160)] for p in range(2)]

    cycles = run_ops(h, setup, [(d, after)])
    r = divide(np.full(rows, 1 << 32), np.clip(dens, DEN_MIN, (1 << 31) - 1))
    m, sh = mantissa15(r, 16)
    want = [(int(a), int(b)) if v > 0 else (0, 0) for a, b, v in zip(m, sh, dens)]
    assert got["rs"][:rows] == want
    assert got["rs"][rows:] == [(0x1ABCDE & 0x7FFF, 0x1ABCDE >> 15)] * (24 - rows)
    # CMEM unchanged but for the denominators.
    for p in range(2):
        for e in range(160):
            is_den = e >= 37 and (e - 37) % 5 == 0 and ((e - 37) // 5) * 2 + p < rows
            if not is_den:
                assert got["c"][p][e] == -77, (p, e)
    # One job per row, rows one job apart; the last RS write (and the busy register) ends it.
    done = RowDatapath.RECIP_DONE
    assert cycles[0] == _tiles(rows, 2) * (done + 1) + 2, cycles


# ------------------------------------------------------------------------------ on the top

def _amem_t_case(pg, rng, *, M, K, N, sat, act=False, relu=False, bias=True, table=0,
                 out_base, out_stride, key, a_base=0, b_base=0, p_base=0, c_base=0):
    """A random MATMUL with dst AMEM_T into a prefilled AMEM region, observed through CMEM."""
    cfg = pg.cfg
    P, L = cfg.pes, cfg.lanes
    T = _tiles(N, L)
    G = _tiles(N, P)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    bv = rng.integers(-4000, 4000, N) if bias else np.zeros(N, int)
    acc = matmul(A, B, bv[None, :])
    amax = np.maximum(np.abs(acc).max(axis=0), 1)
    m, sh = encode_multiplier((150.0 if sat != Sat.INT9 else 300.0) / amax)
    pg.asm.load_a(pg.put(a_words(A, L)), M, K, a_base=a_base, a_stride=K)
    pg.asm.load_b(pg.put(b_words(B, L)), T * K, b_base)
    pg.asm.load_p(pg.put(param_words(bv, m, sh, L)), T, p_base)
    # Prefill the destination (every PE's local rows 0 … ⌈N/P⌉ − 1, whole strides).
    fill = rng.integers(-128, 128, (G * P, out_stride))
    pg.asm.load_a(pg.put(a_words(fill, L)), G * P, out_stride, a_base=out_base,
                  a_stride=out_stride)
    pg.asm.matmul(rows=M, k=K, tiles=T, n=N, a_base=a_base, a_stride=K, b_base=b_base,
                  p_base=p_base, dst=Dst.AMEM_T, out_base=out_base, out_stride=out_stride,
                  sat=sat, bias=bias, act=act, relu=relu, table=table)
    pg.observe_a(key, rows=G * P, k=out_stride, a_base=out_base, a_stride=out_stride,
                 b_base=b_base + T * K, c_base=c_base)
    return dict(A=A, B=B, bv=bv, m=m, sh=sh, M=M, N=N, out_stride=out_stride)


@pytest.mark.parametrize("P", [pytest.param(1, marks=pytest.mark.slow),
                               pytest.param(2, marks=pytest.mark.slow), 3])
def test_matmul_amem_t(P):
    """MATMUL dst AMEM_T at L = 4 with P = 1, 2, 3: odd rows and columns, sat INT8 / INT9 /
    UINT8, with and without ACT (both tables, RELU), several passes and tiles, out_stride
    larger than the rows (the slots in between keep their prefill); the whole ext memory
    equals the interpreter's, and each result is y (after RELU/ACT) transposed, checked against
    sim.golden directly too."""
    cfg = _cfg(P)
    L = cfg.lanes
    rng = np.random.default_rng(RNG_SEED + P)
    pg = Prog(cfg)
    lut = rng.integers(0, 256, 512)
    pg.asm.load_t(pg.put(t_words(lut, L)), 512, 0)
    cases = [
        dict(M=7, K=6, N=9, sat=Sat.INT9, out_base=64, out_stride=8),
        dict(M=5, K=9, N=7, sat=Sat.INT8, act=True, table=1, relu=True, out_base=128,
             out_stride=12),
        dict(M=2 * P + 1, K=3, N=2 * L + 1, sat=Sat.UINT8, bias=False, out_base=256,
             out_stride=8),
        dict(M=9, K=4, N=5, sat=Sat.INT8, act=True, table=0, out_base=320, out_stride=12),
    ]
    infos = []
    for j, c in enumerate(cases):
        infos.append(_amem_t_case(pg, rng, key=f"c{j}", c_base=100 * j, b_base=60 * j,
                                  p_base=4 * j, **c))
    hw, gold, _ = run_both(pg)
    lo = {Sat.INT8: INT8, Sat.INT9: INT9, Sat.UINT8: (0, 255)}
    for j, (c, inf) in enumerate(zip(cases, infos)):
        y = requant(matmul(inf["A"], inf["B"], inf["bv"][None, :]), inf["m"], inf["sh"],
                    *lo[c["sat"]])
        if c.get("relu"):
            y = np.maximum(y, 0)
        if c.get("act"):
            y = lut[256 * c["table"]:][:256][y + 128]
        got = pg.read(hw, f"c{j}")
        for col in range(c["N"]):
            row = (col // P) * P + col % P       # local row col div P of PE col mod P
            np.testing.assert_array_equal(got[row, :c["M"]], y[:, col], err_msg=f"{j} {col}")
        assert np.ptp(y) > 20, j


def test_recip_rscale():
    """RECIP (P = 3, random den including ≤ 0, < 2^8, 2^31 − 1, −2^31) followed by a MATMUL
    with RSCALE + REQ: the interpreter's ext memory bit for bit, and the golden formula of
    linear_attention's normalization."""
    P = 3
    cfg = _cfg(P)
    L = cfg.lanes
    rng = np.random.default_rng(RNG_SEED + 10)
    M, K, N = 14, 7, 6
    T = _tiles(N, L)
    den = np.concatenate([[0, -1, 1, DEN_MIN - 1, DEN_MIN, (1 << 31) - 1, -(1 << 31)],
                          rng.integers(DEN_MIN, 1 << 24, 4), rng.integers(-(1 << 31), 1 << 31, 3)])
    C = np.zeros((M, L), dtype=np.int64)
    C[:, 2] = den
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    r = divide(np.full(M, 1 << 32), np.clip(den, DEN_MIN, (1 << 31) - 1))
    m_r, sh_r = mantissa15(r, 16)
    m_r, sh_r = np.where(den > 0, m_r, 0), np.where(den > 0, sh_r, 0)
    t = rshift_round(matmul(A, B) * m_r[:, None], sh_r[:, None])
    m, sh = encode_multiplier(np.full(N, 3000.0) / np.maximum(np.abs(t).max(axis=0), 1))
    pg = Prog(cfg)
    pg.asm.load_c(pg.put(c_words(C, L)), M, 1, out_base=40, out_stride=L)
    pg.asm.load_a(pg.put(a_words(A, L)), M, K, a_base=0, a_stride=K)
    pg.asm.load_b(pg.put(b_words(B, L)), T * K, 0)
    pg.asm.load_p(pg.put(param_words(np.zeros(N, int), m, sh, L)), T, 0)
    pg.asm.recip(rows=M, a_base=42, a_stride=L)
    pg.asm.matmul(rows=M, k=K, tiles=T, n=N, dst=Dst.CMEM, sat=Sat.INT16, rscale=True, req=True,
                  out_base=200, out_stride=T * L)
    pg.observe_c("o", M, T, 200, T * L)
    pg.observe_c("den", M, 1, 40, L)
    hw, gold, _ = run_both(pg)
    np.testing.assert_array_equal(pg.read(hw, "o")[:, :N],
                                  requant(t, m, sh, -(1 << 15), (1 << 15) - 1))
    np.testing.assert_array_equal(pg.read(hw, "den")[:, 2], den)
    assert np.ptp(pg.read(hw, "o")[:, :N]) > 1000


# ------------------------------------------------------------------------------ timing

def _timing_prog(cfg, rng, *, amem_t, recip, M, K, N):
    """Aligned loads (rows of K, a multiple of L), then an AMEM_T MATMUL and/or a RECIP with an
    RSCALE MATMUL behind it: what the cost model covers exactly."""
    L = cfg.lanes
    T = _tiles(N, L)
    pg = Prog(cfg)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    pg.asm.load_a(pg.put(a_words(A, L)), M, K, a_base=0, a_stride=K)
    pg.asm.load_b(pg.put(b_words(B, L)), T * K, 0)
    pg.asm.load_p(pg.put(param_words(np.zeros(N, int), np.full(N, 3), np.full(N, 12), L)), T, 0)
    if recip:
        C = rng.integers(-(1 << 20), 1 << 24, (M, L))
        pg.asm.load_c(pg.put(c_words(C, L)), M, 1, out_base=200, out_stride=L)
    if amem_t:
        pg.asm.matmul(rows=M, k=K, tiles=T, n=N, dst=Dst.AMEM_T, sat=Sat.INT9, out_base=256,
                      out_stride=_tiles(M, L) * L)
        # a MATMUL behind it waits for the write-back (prev_local)
        pg.asm.matmul(rows=M, k=K, tiles=T, n=N, dst=Dst.CMEM, out_base=100, out_stride=T * L)
        G, S = _tiles(N, cfg.pes), _tiles(M, L) * L
        pg.observe_a("amem_t", rows=G * cfg.pes, k=S, a_base=256, a_stride=S, b_base=T * K,
                     c_base=300)
    if recip:
        pg.asm.recip(rows=M, a_base=201, a_stride=L)
        pg.asm.matmul(rows=M, k=K, tiles=T, n=N, dst=Dst.CMEM, sat=Sat.INT16, rscale=True,
                      req=True, out_base=0, out_stride=T * L)
    return pg


@pytest.mark.parametrize("P, L, M, K, N, amem_t, recip", [
    (3, 4, 11, 24, 10, True, False),  # P ∤ L, several passes and tiles, a short last tile
    # L = 8: tiles step the column by 2·P + 2; P > L: two L-row groups per column
    pytest.param(3, 8, 7, 32, 21, True, False, marks=pytest.mark.slow),
    pytest.param(5, 4, 7, 24, 6, True, False, marks=pytest.mark.slow),
    (3, 4, 10, 8, 6, False, True),
    (1, 4, 3, 24, 5, True, True),
])
def test_cost_model_cycles(P, L, M, K, N, amem_t, recip):
    """CYCLES of programs with AMEM_T MATMULs and RECIPs: the RTL's counter equals the cost
    model's (sim.program.CostModel: RECIP's row_done, the AMEM_T write-back tail) within two
    cycles; results bit-exact with the interpreter. (K large enough for no STALL_WB, which the model
    does not cover.)"""
    cfg = _cfg(P, L)
    pg = _timing_prog(cfg, np.random.default_rng(RNG_SEED + M), amem_t=amem_t, recip=recip,
                      M=M, K=K, N=N)
    _, _, counters = run_both(pg, tol=2)
    assert counters["STALL_WB"] == 0


# ------------------------------------------------------------------------------ errors

def _la_error_programs(P, L, d):
    """(instruction, expected code) for the checks of AMEM_T and RECIP."""
    E = ErrorCode
    mm = dict(rows=P + 1, k=4, tiles=2, a_base=0, a_stride=4, b_base=0, out_base=0,
              out_stride=2 * L, p_base=0)
    rc = dict(rows=P + 1, k=1, a_base=0, a_stride=4, dst=Dst.CMEM)
    G = _tiles(2 * L, P)                     # ⌈N/P⌉ column groups of the AMEM_T cases
    amem = d["amem_depth"]
    return [
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT16, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9, flags=Flag.ACCUM, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9, flags=Flag.REQ, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9, flags=Flag.ACT, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9, **{**mm, "out_base": 2}), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9, **{**mm, "out_stride": L + 1}),
         E.BAD_FIELD),
        (encode(Op.MATMUL, dst=15, sat=Sat.INT9, **mm), E.BAD_FIELD),
        # AMEM write end out_base + (⌈N/P⌉ − 1)·out_stride + rows, one past the depth
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9,
                **{**mm, "out_base": amem - (G - 1) * 2 * L - L}), None),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT9,
                **{**mm, "out_base": amem - (G - 1) * 2 * L - L, "rows": L + 1}),
         E.AMEM_RANGE),
        (encode(Op.MATMUL, dst=Dst.AMEM_T, sat=Sat.INT8, flags=Flag.ACT,
                **{**mm, "out_base": amem}), E.AMEM_RANGE),
        (encode(Op.RECIP, **{**rc, "k": 2}), E.BAD_FIELD),
        (encode(Op.RECIP, **{**rc, "dst": Dst.AMEM}), E.BAD_FIELD),
        (encode(Op.RECIP, flags=Flag.NORM, **rc), E.BAD_FIELD),
        (encode(Op.RECIP, **{**rc, "rows": 257 * P, "a_stride": 0}), E.BAD_FIELD),
        # 256 local rows pass the RS bound (the CMEM range check comes next)
        (encode(Op.RECIP, **{**rc, "rows": 256 * P, "a_stride": 0,
                             "a_base": d["cmem_depth"]}), E.CMEM_RANGE),
        (encode(Op.RECIP, **{**rc, "a_base": d["cmem_depth"] - 4}), E.CMEM_RANGE),
        (encode(Op.RECIP, **{**rc, "a_base": d["cmem_depth"] - 5}), None),
        # RECIP writes no CMEM row and reads no PBUF: neither is range-checked
        (encode(Op.RECIP, **rc, out_base=0xFFFF, out_stride=0xFFFF, p_base=0xFFFF), None),
        (encode(0x34), E.ILLEGAL_OPCODE),
    ]


def test_la_error_codes_bounded():
    """The decode checks of AMEM_T and RECIP raise their code at the bad instruction within a
    bounded number of cycles (as the ISA's static check says); the legal neighbours run."""
    P, L = 2, 4
    d = dict(SMALL, cmem_depth=512, pbuf_depth=16, imem_depth=8)
    cfg = AccelConfig(pes=P, lanes=L, **d)
    cases = _la_error_programs(P, L, d)
    for ins, code in cases:
        err = static_check(decode(ins), cfg)
        assert (err[0] if err else None) == code, (hex(ins), err)
    nop, halt = encode(Op.NOP), encode(Op.HALT)
    res = _run_many([([nop, ins, halt], 3) for ins, _ in cases], pes=P, lanes=L, bound=20_000,
                    **d)
    for (ins, code), (status, pc, cycles, waited) in zip(cases, res):
        if code is None:
            assert status == 2 and pc == 2, (hex(ins), status, pc)
        else:
            assert (status >> 8) & 0xFF == code and status & 4, (code, hex(ins), status)
            assert pc == 1 and waited < 80 and cycles < 60, (code, pc, waited, cycles)


# ------------------------------------------------------------------------------ a whole head

def _la_head(cfg, rng, *, N, d, dv):
    """One linear-attention head as a program; returns (Prog, golden output, intermediates)."""
    P, L = cfg.pes, cfg.lanes
    q = rng.integers(-128, 128, (N, d))
    k = rng.integers(-128, 128, (N, d))
    v = rng.integers(-128, 128, (N, dv))
    lut_q = elu1_lut(0.03, 3.0 / 255)
    lut_k = elu1_lut(0.04, 4.0 / 255)
    phq, phk = activation(q, lut_q), activation(k, lut_k)
    vv = np.concatenate([v, np.ones((N, 1), int)], axis=1)
    t = matmul(phk.T, vv)
    m_t, sh_t = encode_multiplier(120.0 / np.maximum(np.abs(t).max(axis=0), 1))
    t8 = requant(t, m_t, sh_t, *INT8)
    u = matmul(phq, t8)
    num, den = u[:, :-1], u[:, -1]
    r = divide(np.full(N, 1 << 32), np.clip(den, DEN_MIN, (1 << 31) - 1))
    m_r, sh_r = mantissa15(r, 16)
    tq = np.where(den[:, None] > 0, rshift_round(num * m_r[:, None], sh_r[:, None]), 0)
    m_o, sh_o = encode_multiplier(200.0 / np.maximum(np.abs(tq).max(axis=0), 1))
    want = linear_attention(q, k, v, lut_q, lut_k, m_t, sh_t, m_o, sh_o)

    Td, Tu, Tv = _tiles(d, L), _tiles(dv + 1, L), _tiles(dv, L)
    QPHI, KT, ST = 0, 128, _tiles(N, L) * L          # AMEM: φq rows, φkᵀ (L-aligned)
    pg = Prog(cfg)
    eye = np.eye(d, dtype=np.int64)
    pg.asm.load_t(pg.put(t_words(np.concatenate([lut_q, lut_k]), L)), 512, 0)
    pg.asm.load_a(pg.put(a_words(q, L)), N, d, a_base=300, a_stride=d)
    pg.asm.load_a(pg.put(a_words(k, L)), N, d, a_base=400, a_stride=d)
    pg.asm.load_b(pg.put(b_words(eye, L)), Td * d, 0)                       # BBUF 0: I_d
    pg.asm.load_b(pg.put(b_words(vv, L)), Tu * N, 100)                      # BBUF 100: [V|1]
    one = np.ones(d, int)
    pg.asm.load_p(pg.put(param_words(np.zeros(d, int), one, 0 * one, L)), Td, 0)
    pg.asm.load_p(pg.put(param_words(np.zeros(dv + 1, int), m_t, sh_t, L)), Tu, 4)
    pg.asm.load_p(pg.put(param_words(np.zeros(dv, int), m_o, sh_o, L)), Tv, 8)
    # φ(Q) → AMEM rows (ACT, table 0); φ(K)ᵀ → AMEM_T (ACT, table 1): row c = feature c.
    pg.asm.matmul(rows=N, k=d, tiles=Td, n=d, a_base=300, a_stride=d, b_base=0, p_base=0,
                  dst=Dst.AMEM, sat=Sat.INT8, act=True, table=0, out_base=QPHI, out_stride=d)
    pg.asm.matmul(rows=N, k=d, tiles=Td, n=d, a_base=400, a_stride=d, b_base=0, p_base=0,
                  dst=Dst.AMEM_T, sat=Sat.INT8, act=True, table=1, out_base=KT, out_stride=ST)
    # T = φkᵀ·[V|1] → BBUF rows (the B operand of the next two MATMULs: K = d).
    pg.asm.matmul(rows=d, k=N, tiles=Tu, n=dv + 1, a_base=KT, a_stride=ST, b_base=100,
                  p_base=4, dst=Dst.BBUF_ROWS, sat=Sat.INT8, out_base=200, out_stride=d)
    # u = φq·T → CMEM (den in column dv), RECIP, then num with RSCALE + REQ.
    pg.asm.matmul(rows=N, k=d, tiles=Tu, n=dv + 1, a_base=QPHI, a_stride=d, b_base=200,
                  dst=Dst.CMEM, out_base=0, out_stride=Tu * L)
    pg.asm.recip(rows=N, a_base=dv, a_stride=Tu * L)
    pg.asm.matmul(rows=N, k=d, tiles=Tv, n=dv, a_base=QPHI, a_stride=d, b_base=200, p_base=8,
                  dst=Dst.CMEM, sat=Sat.INT9, rscale=True, req=True, out_base=256,
                  out_stride=Tv * L)
    pg.observe_c("out", N, Tv, 256, Tv * L)
    pg.observe_c("u", N, Tu, 0, Tu * L)
    return pg, want, dict(u=u, den=den, phk=phk)


@pytest.mark.parametrize("P", [2, 3])
def test_linear_attention_head(P):
    """φ(Q) (ACT → AMEM), φ(K)ᵀ (ACT → AMEM_T), T = φkᵀ·[V|1] (→ BBUF_ROWS), u = φq·T (→ CMEM),
    RECIP on its last column, the numerator with RSCALE + REQ: equal to
    sim.golden.linear_attention and to the interpreter's ext memory (P = 2, 3; L = 4)."""
    cfg = _cfg(P)
    pg, want, mid = _la_head(cfg, np.random.default_rng(RNG_SEED + 20 + P), N=9, d=6, dv=5)
    hw, _, _ = run_both(pg)
    np.testing.assert_array_equal(pg.read(hw, "u")[:, :6], mid["u"])
    np.testing.assert_array_equal(pg.read(hw, "out")[:, :5], want)
    assert np.ptp(want) > 100 and (mid["den"] > DEN_MIN).any()


def test_linear_attention_head_verilator():
    """The head on Verilator at P = 8, L = 16 (the default depths: the harness build of
    tests/test_kwt_rtl.py and tests/test_run_matmul.py): 20 tokens, d = 16 (φ(K)ᵀ: two local
    rows per PE), dv = 15 (the den column completes a 16-wide tile)."""
    cfg = AccelConfig(pes=8, lanes=16)
    pg, want, mid = _la_head(cfg, np.random.default_rng(RNG_SEED + 30), N=20, d=16, dv=15)
    hw, _, counters = run_both(pg, VerilatorBackend())
    np.testing.assert_array_equal(pg.read(hw, "out")[:, :15], want)
    assert np.ptp(want) > 100


def test_cost_model_bbuf_t_and_req():
    """The cost model's BBUF_T write-back tail (the same writer as AMEM_T) and a MATMUL behind a
    REQ MATMUL waiting for the array to be idle (the controller's prev_local): CYCLES as the
    RTL's within two cycles."""
    P, L, M, K, N = 2, 4, 5, 24, 6
    cfg = _cfg(P)
    rng = np.random.default_rng(RNG_SEED + 40)
    T = _tiles(N, L)
    pg = Prog(cfg)
    pg.asm.load_a(pg.put(a_words(rng.integers(-128, 128, (M, K)), L)), M, K, a_base=0,
                  a_stride=K)
    pg.asm.load_b(pg.put(b_words(rng.integers(-128, 128, (K, N)), L)), T * K, 0)
    pg.asm.load_p(pg.put(param_words(np.zeros(N, int), np.full(N, 3), np.full(N, 12), L)), T, 0)
    mm = dict(rows=M, k=K, tiles=T, n=N)
    pg.asm.matmul(**mm, dst=Dst.BBUF_T, sat=Sat.INT8, out_base=200, out_stride=N)
    pg.asm.matmul(**mm, dst=Dst.CMEM, sat=Sat.INT16, req=True, out_base=0, out_stride=T * L)
    pg.asm.matmul(**mm, dst=Dst.CMEM, out_base=100, out_stride=T * L)
    pg.observe_c("req", M, T, 0, T * L)
    _, _, counters = run_both(pg, tol=2)
    assert counters["STALL_WB"] == 0
