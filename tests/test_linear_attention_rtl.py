# amaranth: UnusedElaboratable=no
"""Linear attention in the RTL (docs/isa_transformer.md): MATMUL dst AMEM_T (transposed into
the PEs' A memories through the write-back blocks) and the RECIP row operation, against the ISA
interpreter (``sim.program.interpret``) bit for bit and cycle for cycle (the cost model), a
whole linear-attention head against ``sim.golden.linear_attention``, the new decode checks, and
one Verilator run at P = 8, L = 16."""
import numpy as np
import pytest

from hw.isa import Dst, ErrorCode, Flag, Op, Sat, encode
from hw.pe import RowOp
from hw.rowunit import RowDatapath
from sim.backends import AmaranthBackend, GoldenBackend, VerilatorBackend
from sim.golden import INT8, INT9, divide, elu1_lut, linear_attention, matmul, requant
from sim.golden.attention import DEN_MIN, mantissa15
from sim.program import (AccelConfig, Assembler, CostModel, ImageBuilder, c_from_words, c_words,
                         param_words, t_words)
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
        from sim.program import b_words
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
    from sim.golden import encode_multiplier
    m, sh = encode_multiplier((150.0 if sat != Sat.INT9 else 300.0) / amax)
    from sim.program import a_words, b_words
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


@pytest.mark.parametrize("P", [1, 2, 3])
def test_matmul_amem_t(P):
    """MATMUL dst AMEM_T at L = 4 with P = 1, 2, 3: odd rows and columns, sat INT8 / INT9 /
    UINT8, with and without ACT (both tables, RELU), several passes and tiles, out_stride
    larger than the rows (the slots in between keep their prefill); the whole ext memory
    equals the interpreter's and each result is φ-free y transposed (checked against
    sim.golden directly too)."""
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
        G = _tiles(c["N"], P)
        for col in range(c["N"]):
            row = (col // P) * P + col % P       # local row col div P of PE col mod P
            np.testing.assert_array_equal(got[row, :c["M"]], y[:, col], err_msg=f"{j} {col}")
        assert np.ptp(y) > 20, j


def test_recip_rscale():
    """RECIP (P = 3, random den including ≤ 0, < 2^16, 2^31 − 1, −2^31) followed by a MATMUL
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
    from sim.golden import rshift_round, encode_multiplier
    t = rshift_round(matmul(A, B) * m_r[:, None], sh_r[:, None])
    m, sh = encode_multiplier(np.full(N, 3000.0) / np.maximum(np.abs(t).max(axis=0), 1))
    pg = Prog(cfg)
    from sim.program import a_words, b_words
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
