# amaranth: UnusedElaboratable=no
"""The row unit (``hw.rowunit``): SOFTMAX (attention mode and NORM), LAYERNORM and RADD on P = 2
PEs driven by a ``RowSequencer`` as the array drives them, bit-exact with ``sim.golden``; the
serial divider against ``sim.golden.divide``."""
import random

import numpy as np
import pytest
from amaranth.hdl import Cat, Elaboratable, MemoryData, Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.isa import Dst, Sat
from hw.pe import PE, SAT_BOUNDS, RowOp
from hw.rowunit import RowDatapath, RowSequencer, SerialDivider
from sim.golden import (INT16, add, divide, exp_weights, layernorm, layernorm_constants,
                        softmax, softmax_constants)
from sim.golden.attention import mantissa15
from sim.program import res_row_span
from tb.runner import emit, lint
from tests.streams import Watchdog, stream_put


class RowHarness(Elaboratable):
    """P PEs and a :class:`RowSequencer`, wired as the array wires them in row mode: CMEM/AMEM
    reads, a PBUF model with the array's latencies (column ``tile·L + lane``; m/sh 4 cycles,
    bias 3; m sign-extended for LAYERNORM's output elements), result writes and RS writes."""

    def __init__(self, *, pes=2, lanes=4, amem_depth=512, cmem_depth=1024, pbuf_cols=512):
        self.P, self.L = pes, lanes
        self.seq = RowSequencer(pes=pes, lanes=lanes)
        self.pes = [PE(lanes=lanes, amem_depth=amem_depth, cmem_depth=cmem_depth)
                    for _ in range(pes)]
        self.pb_bias = MemoryData(shape=signed(32), depth=pbuf_cols, init=[])
        self.pb_m = MemoryData(shape=unsigned(16), depth=pbuf_cols, init=[])
        self.pb_sh = MemoryData(shape=unsigned(8), depth=pbuf_cols, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.seq = seq = self.seq
        L = self.L
        lsh = L.bit_length() - 1
        cw = L // 4
        csh = cw.bit_length() - 1
        pcols = self.pb_m.depth
        vals = {}
        for name, mem, (tile, lane), lat in (
                ("m", self.pb_m, (seq.pm_tile, seq.pm_lane), RowSequencer.PBUF_M_LATENCY),
                ("sh", self.pb_sh, (seq.pm_tile, seq.pm_lane), RowSequencer.PBUF_M_LATENCY),
                ("b", self.pb_bias, (seq.pb_tile, seq.pb_lane), RowSequencer.PBUF_B_LATENCY)):
            m.submodules[f"pbuf_{name}"] = mm = Memory(mem)
            rd = mm.read_port(domain="comb")
            m.d.comb += rd.addr.eq(Cat(lane, tile)[:pcols.bit_length() - 1])
            pipe = [Signal(mem.shape, name=f"pb_{name}{k}") for k in range(lat)]
            m.d.sync += pipe[0].eq(rd.data)
            m.d.sync += [pipe[k + 1].eq(pipe[k]) for k in range(lat - 1)]
            vals[name] = pipe[-1]
        to_amem = seq.w_dst == Dst.AMEM
        for p, pe in enumerate(self.pes):
            m.submodules[f"pe{p}"] = pe
            wen = seq.w_valid & seq.w_rmask[p]
            m.d.comb += [
                pe.row.eq(seq.busy), pe.rop.eq(seq.rop),
                pe.rc_data.eq(seq.rc_data), pe.rc_q1.eq(seq.rc_q1), pe.rc_s2.eq(seq.rc_s2),
                pe.rc_y2.eq(seq.rc_y2),
                pe.c_raddr.eq(seq.c_raddr[csh:]), pe.c_slot.eq(seq.c_raddr[:csh] if csh else 0),
                pe.a_addr.eq(seq.a_raddr),
                pe.m.eq(Mux(seq.pm_sgn, vals["m"].as_signed(), vals["m"])), pe.sh.eq(vals["sh"]),
                pe.bias.eq(vals["b"]),
                pe.rs_we.eq(seq.rs_we[p]), pe.rs_waddr.eq(seq.rs_waddr),
                pe.aw_addr.eq(seq.w_addr[lsh:]), pe.aw_from_y.eq(1),
                pe.aw_en.eq(Mux(wen & to_amem, 1 << seq.w_addr[:lsh], 0)),
                pe.c_we.eq(wen & ~to_amem), pe.c_wy.eq(1),
                pe.c_waddr.eq(seq.w_addr[csh:]), pe.c_wslot.eq(seq.w_addr[:csh] if csh else 0),
            ]
        return m


def _signed(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


class Mem:
    """Backdoor access to the harness's PE memories (element addresses as the ISA's)."""

    def __init__(self, h):
        self.h = h

    def _loc(self, storage, elems_per_row, width, e):
        row, slot = divmod(e, elems_per_row)
        per_bank = storage[0].depth
        return storage[row // per_bank], row % per_bank, slot * width

    def set_c(self, ctx, p, e, v):
        self._write(ctx, self.h.pes[p].cmem_data, self.h.L // 4, 32, e, v)

    def set_a(self, ctx, p, e, v):
        self._write(ctx, self.h.pes[p].amem_data, self.h.L, 9, e, v)

    def get_c(self, ctx, p, e):
        return self._read(ctx, self.h.pes[p].cmem_data, self.h.L // 4, 32, e)

    def get_a(self, ctx, p, e):
        return self._read(ctx, self.h.pes[p].amem_data, self.h.L, 9, e)

    def _write(self, ctx, storage, n, w, e, v):
        mem, row, off = self._loc(storage, n, w, e)
        old = ctx.get(mem[row])
        mask = ((1 << w) - 1) << off
        ctx.set(mem[row], (old & ~mask) | ((int(v) & ((1 << w) - 1)) << off))

    def _read(self, ctx, storage, n, w, e):
        mem, row, off = self._loc(storage, n, w, e)
        return _signed(ctx.get(mem[row]) >> off, w)

    def set_rows(self, ctx, mat, base, stride, *, cmem):
        """Matrix row n → PE n mod P, local row n div P, at base + (n div P)·stride + j."""
        for n, row in enumerate(np.asarray(mat)):
            p, r = n % self.h.P, n // self.h.P
            for j, v in enumerate(row):
                (self.set_c if cmem else self.set_a)(ctx, p, base + r * stride + j, v)

    def get_rows(self, ctx, rows, k, base, stride, *, cmem):
        out = np.zeros((rows, k), dtype=np.int64)
        for n in range(rows):
            p, r = n % self.h.P, n // self.h.P
            for j in range(k):
                out[n, j] = (self.get_c if cmem else self.get_a)(ctx, p, base + r * stride + j)
        return out

    def get_rs(self, ctx, rows):
        """(m, sh) of RS entry n div P in PE n mod P for every row n."""
        out = []
        for n in range(rows):
            v = ctx.get(self.h.pes[n % self.h.P].rs_data[0][n // self.h.P])
            out.append((v & 0x7FFF, v >> 15))
        return out


def desc(op, *, rows, k, P=2, norm=0, res=0, a_base=0, a_stride=None, b_base=0, b_stride=None,
         out_base=0, out_stride=None, dst=Dst.AMEM, sat=Sat.INT9, p_base=0, imm=0, eps=0):
    return dict(op=op, norm=norm, res=res, rows=rows, passes=-(-rows // P), k=k, a_base=a_base,
                a_stride=k if a_stride is None else a_stride, b_base=b_base,
                b_stride=k if b_stride is None else b_stride, out_base=out_base,
                out_stride=k if out_stride is None else out_stride, dst=dst, sat=sat,
                p_base=p_base, imm=imm, eps=eps)


def run_ops(h, setup, ops, *, max_cycles=20_000):
    """Backdoor ``setup(ctx, mem)``, then each ``(descriptor, after)`` of ``ops`` in turn: send
    it, wait until the sequencer is idle, call ``after(ctx, mem)``. Returns the busy cycles of
    each operation. Fails with :class:`Watchdog` past ``max_cycles`` in total."""
    mem = Mem(h)
    cycles = []

    async def bench(ctx):
        setup(ctx, mem)
        budget = max_cycles
        for d, after in ops:
            await stream_put(ctx, h.seq.cmd, d)
            n = 0
            while ctx.get(h.seq.busy):
                await ctx.tick()
                n += 1
                budget -= 1
                if budget <= 0:
                    raise Watchdog(f"row operation {d['op']} still busy after {n} cycles")
            cycles.append(n)
            after(ctx, mem)

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return cycles


SENTINEL = -77     # in every memory element an operation must not write


#: Busy cycles after the last element's R0: the pipeline to R_Y, one more for the registered
#: busy flag (hw/rowunit.py, cycle cost).
TAIL = RowDatapath.R_Y + 2


def check_cost(d, cycles):
    """The cost model of hw/rowunit.py: ⌈rows/P⌉ rows of n_p·k element cycles, at least one
    job spacing (DONE + 1) apart, plus at most one job latency and the pipeline at the end."""
    if d["op"] == RowOp.RADD:
        n_p, done = 1, 0
    elif d["op"] == RowOp.LAYERNORM:
        n_p, done = 2, RowDatapath.LN_DONE
    else:
        n_p, done = (3, RowDatapath.NORM_DONE) if d["norm"] else (2, RowDatapath.ATTN_DONE)
    rows_cost = d["passes"] * max(n_p * d["k"], done + 1)
    assert d["passes"] * n_p * d["k"] <= cycles <= rows_cost + done + TAIL + 1, (d, cycles)


def _fill(ctx, mem, p_count, *, cmem_elems, amem_elems):
    for p in range(p_count):
        for e in range(cmem_elems):
            mem.set_c(ctx, p, e, SENTINEL)
        for e in range(amem_elems):
            mem.set_a(ctx, p, e, SENTINEL)


def _guard(mem, ctx, rows, k, base, stride, *, cmem):
    """Elements k … stride − 1 of every output row still hold the sentinel."""
    if stride > k:
        pad = mem.get_rows(ctx, rows, stride, base, stride, cmem=cmem)[:, k:]
        assert (pad == SENTINEL).all()


def sm_imm(score_scale):
    c_e, sh_e = softmax_constants(score_scale)
    return c_e | sh_e << 16


def test_softmax_attention_and_norm():
    """SOFTMAX in attention mode (w and the RS entries) and NORM, one operation after the other
    on P = 2: random rows, all-equal, one-hot with the int32 extremes, tiny differences, k = 1,
    k = 37 (not a multiple of L), k = 256, rows not a multiple of P (the idle PE's RS entry
    and every element past k stay untouched)."""
    h = RowHarness()
    rng = np.random.default_rng(21)
    S1 = rng.integers(-2000, 2000, (5, 13))
    S1[1] = 12345
    S1[2] = -(1 << 31)
    S1[2, 6] = (1 << 31) - 1
    S1[3] = rng.integers(-2, 3, 13)
    S1[4] = rng.integers(-(1 << 31), 1 << 31, 13)
    S2 = rng.integers(-(1 << 31), 1 << 31, (3, 1))
    S3 = rng.integers(-50000, 50000, (4, 37))
    S4 = rng.integers(-3000, 3000, (3, 256))
    ops, got = [], {}
    cases = [   # (name, scores, descriptor, golden)
        ("att13", S1, desc(RowOp.SOFTMAX, rows=5, k=13, a_stride=16, out_stride=16,
                           imm=sm_imm(1e-2))),
        ("norm1", S2, desc(RowOp.SOFTMAX, norm=1, rows=3, k=1, a_base=100, out_base=200,
                           dst=Dst.CMEM, imm=sm_imm(1.0))),
        ("norm37", S3, desc(RowOp.SOFTMAX, norm=1, rows=4, k=37, a_base=300, a_stride=40,
                            out_base=100, out_stride=40, imm=sm_imm(1e-4))),
        ("att256", S4, desc(RowOp.SOFTMAX, rows=3, k=256, a_base=400, out_base=0,
                            imm=sm_imm(1e-3))),
    ]

    def setup(ctx, mem):
        _fill(ctx, mem, 2, cmem_elems=0, amem_elems=512)
        for p in range(2):
            for e in range(200, 203):
                mem.set_c(ctx, p, e, SENTINEL)
            for r in range(2):
                ctx.set(h.pes[p].rs_data[0][r], 0x1ABCDE)
        for name, S, d in cases:
            mem.set_rows(ctx, S, d["a_base"], d["a_stride"], cmem=True)

    def after(name, d):
        def f(ctx, mem):
            cm = d["dst"] == Dst.CMEM
            got[name] = mem.get_rows(ctx, d["rows"], d["k"], d["out_base"], d["out_stride"],
                                     cmem=cm)
            got[name + "_rs"] = mem.get_rs(ctx, 6)
            _guard(mem, ctx, d["rows"], d["k"], d["out_base"], d["out_stride"], cmem=cm)
        return f

    for name, S, d in cases:
        ops.append((d, after(name, d)))
    cycles = run_ops(h, setup, ops)
    for (name, S, d), n in zip(cases, cycles):
        c_e, sh_e = d["imm"] & 0xFFFF, d["imm"] >> 16
        if d["norm"]:
            np.testing.assert_array_equal(got[name], softmax(S, c_e, sh_e), err_msg=name)
            continue
        w = exp_weights(S, c_e, sh_e)
        np.testing.assert_array_equal(got[name], w, err_msg=name)
        m_r, sh_r = mantissa15(divide(np.full(len(S), 1 << 32), w.sum(-1)), 24)
        rs = got[name + "_rs"]
        assert rs[:len(S)] == list(zip(m_r.tolist(), sh_r.tolist())), name
    # The idle PE (row 3 of att256 does not exist) kept att13's entry for its local row 1.
    assert got["att256_rs"][3] == got["att13_rs"][3]
    assert got["norm1"].tolist() == [[255]] * 3
    for (name, S, d), n in zip(cases, cycles):
        check_cost(d, n)
    # k ≥ half a job: the rows stream back to back, the last RS write ends it.
    assert cycles[3] == 2 * 2 * 256 + RowDatapath.ATTN_DONE + 2


def _set_pbuf(ctx, h, p_base, *, m=None, sh=None, bias=None):
    """PBUF columns p_base·L + j (tile p_base + j div L, lane j mod L)."""
    base = p_base * h.L
    for name, vals, mem in (("m", m, h.pb_m), ("sh", sh, h.pb_sh), ("b", bias, h.pb_bias)):
        if vals is not None:
            for j, v in enumerate(np.broadcast_to(vals, (len(vals) if np.ndim(vals) else 1,))):
                ctx.set(mem[base + j], int(v) & (0xFFFF if name == "m" else ~0))


def test_layernorm():
    """LAYERNORM against ``sim.golden.layernorm`` with ``layernorm_constants``: random rows
    with the int16 extremes, E > 0; k = 1 in a single pass; a zero-variance row with E = 0 (output β); k = 64 with
    an r_D for another width (μ beyond int16) and the largest E; k = 256; dst AMEM and CMEM;
    rows not a multiple of P."""
    h = RowHarness()
    rng = np.random.default_rng(31)

    def consts(k, s_h, s_out, eps):
        gamma = rng.normal(1.0, 0.4, k)
        beta = rng.normal(0.0, 0.5, k)
        return layernorm_constants(gamma, beta, s_h, s_out, eps)

    H1 = rng.integers(-(1 << 15), 1 << 15, (5, 20))
    H1[0, :2] = (-(1 << 15), (1 << 15) - 1)
    H2 = rng.integers(-(1 << 15), 1 << 15, (2, 1))
    H3 = rng.integers(-300, 300, (3, 64))
    H3[1] = -1234                                       # zero variance
    H4 = rng.integers(-(1 << 15), 1 << 15, (3, 256))
    c1 = consts(20, 1e-3, 0.02, 1e-5)
    c2 = consts(1, 1.0, 0.02, 0.0)
    c3 = consts(64, 1.0, 0.05, 0.0)
    c4 = consts(256, 1e-4, 0.01, 1e-5)
    c3b = dict(c3, r_d=(1 << 24) // 3, E=(1 << 40) - 1)  # r_D of width 3: μ ≈ 21·mean
    assert c1["E"] > 0 and c4["E"] > 0
    cases = [   # (name, h, constants, descriptor, (lo, hi))
        ("ln20", H1, c1, desc(RowOp.LAYERNORM, rows=5, k=20, a_stride=24, out_stride=24,
                              sat=Sat.INT9, p_base=0)),
        ("ln1", H2, c2, desc(RowOp.LAYERNORM, rows=2, k=1, a_base=200, dst=Dst.CMEM,
                             out_base=210, sat=Sat.INT16, p_base=6)),
        ("ln64", H3, c3, desc(RowOp.LAYERNORM, rows=3, k=64, a_base=300, out_base=100,
                              dst=Dst.CMEM, sat=Sat.INT8, p_base=8)),
        ("ln64b", H3, c3b, desc(RowOp.LAYERNORM, rows=3, k=64, a_base=300, out_base=250,
                                sat=Sat.INT9, p_base=8)),
        ("ln256", H4, c4, desc(RowOp.LAYERNORM, rows=3, k=256, a_base=500, out_base=0,
                               sat=Sat.INT9, p_base=24)),
    ]
    for name, H, c, d in cases:
        d["imm"], d["eps"] = c["r_d"], c["E"]
    got = {}

    def setup(ctx, mem):
        _fill(ctx, mem, 2, cmem_elems=0, amem_elems=512)
        for name, H, c, d in cases:
            mem.set_rows(ctx, H, d["a_base"], d["a_stride"], cmem=True)
            _set_pbuf(ctx, h, d["p_base"], m=c["G"], bias=c["B"],
                      sh=np.full(d["k"], c["sh_o"]))

    def after(name, d):
        def f(ctx, mem):
            cm = d["dst"] == Dst.CMEM
            got[name] = mem.get_rows(ctx, d["rows"], d["k"], d["out_base"], d["out_stride"],
                                     cmem=cm)
            _guard(mem, ctx, d["rows"], d["k"], d["out_base"], d["out_stride"], cmem=cm)
        return f

    cycles = run_ops(h, setup, [(d, after(name, d)) for name, H, c, d in cases])
    for name, H, c, d in cases:
        want = layernorm(H, c["r_d"], c["E"], c["G"], c["B"], c["sh_o"], *SAT_BOUNDS[d["sat"]])
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    # The zero-variance row is β (rounded), whatever h is.
    np.testing.assert_array_equal(
        got["ln64"][1], np.clip((c3["B"] + (1 << (c3["sh_o"] - 1))) >> c3["sh_o"], -128, 127))
    for (name, H, c, d), n in zip(cases, cycles):
        check_cost(d, n)
    # 2k ≥ a job: the jobs hide behind the next row's statistics.
    assert cycles[2] == 2 * 2 * 64 + TAIL and cycles[4] == 2 * 2 * 256 + TAIL


def test_radd():
    """RADD against ``sim.golden.add``: in place in CMEM with int16 saturation, x = −256 and
    the extremes, per-column m and sh; k = 1 into AMEM (int8); an AMEM stride (imm) other than
    k and UINT8 saturation."""
    h = RowHarness()
    rng = np.random.default_rng(41)
    A1 = rng.integers(-40000, 40000, (5, 11))
    A1[0, :3] = (-(1 << 31), (1 << 31) - 1, 0)
    X1 = rng.integers(-256, 256, (5, 11))
    X1[0, 3:5] = (-256, 255)
    A2 = rng.integers(-300, 300, (3, 1))
    X2 = rng.integers(-256, 256, (3, 1))
    A3 = rng.integers(-100, 300, (4, 9))
    X3 = rng.integers(-256, 256, (4, 9))
    cases = [   # (name, a, x, m, sh, descriptor)
        ("radd11", A1, X1, rng.integers(0, 1 << 15, 11), rng.integers(0, 24, 11),
         desc(RowOp.RADD, rows=5, k=11, a_base=0, a_stride=12, out_base=0, out_stride=12,
              b_base=0, b_stride=16, dst=Dst.CMEM, sat=Sat.INT16, p_base=1)),
        ("radd1", A2, X2, np.array([20000]), np.array([15]),
         desc(RowOp.RADD, rows=3, k=1, a_base=100, b_base=100, b_stride=7, out_base=200,
              sat=Sat.INT8, p_base=9)),
        ("radd9", A3, X3, rng.integers(0, 1 << 15, 9), rng.integers(5, 15, 9),
         desc(RowOp.RADD, rows=4, k=9, a_base=300, b_base=300, b_stride=13, out_base=400,
              out_stride=10, sat=Sat.UINT8, p_base=12)),
    ]
    got = {}

    def setup(ctx, mem):
        _fill(ctx, mem, 2, cmem_elems=0, amem_elems=512)
        for name, a, x, mm, ss, d in cases:
            mem.set_rows(ctx, a, d["a_base"], d["a_stride"], cmem=True)
            mem.set_rows(ctx, x, d["b_base"], d["b_stride"], cmem=False)
            _set_pbuf(ctx, h, d["p_base"], m=mm, sh=ss)

    def after(name, d):
        def f(ctx, mem):
            cm = d["dst"] == Dst.CMEM
            got[name] = mem.get_rows(ctx, d["rows"], d["k"], d["out_base"], d["out_stride"],
                                     cmem=cm)
            if not cm:
                _guard(mem, ctx, d["rows"], d["k"], d["out_base"], d["out_stride"], cmem=cm)
        return f

    cycles = run_ops(h, setup, [(d, after(name, d)) for name, *_, d in cases])
    for name, a, x, mm, ss, d in cases:
        np.testing.assert_array_equal(got[name], add(a, x, mm, ss, *SAT_BOUNDS[d["sat"]]),
                                      err_msg=name)
    assert (got["radd11"] == INT16[0]).any() and (got["radd11"] == INT16[1]).any()
    for (name, *_, d), n in zip(cases, cycles):
        assert n == d["passes"] * d["k"] + TAIL, (name, n)


def test_row_ops_p3_l8():
    """P = 3 (row masks not a power of two), L = 8 (two int32 per CMEM row: the element slot),
    each operation once, rows not a multiple of P."""
    h = RowHarness(pes=3, lanes=8)
    rng = np.random.default_rng(51)
    S = rng.integers(-5000, 5000, (7, 21))
    H = rng.integers(-2000, 2000, (4, 10))
    lc = layernorm_constants(rng.normal(1, 0.3, 10), rng.normal(0, 0.3, 10), 1e-2, 0.03, 1e-5)
    A = rng.integers(-30000, 30000, (5, 17))
    X = rng.integers(-256, 256, (5, 17))
    mr, shr = rng.integers(0, 1 << 15, 17), rng.integers(8, 20, 17)
    d_sm = desc(RowOp.SOFTMAX, P=3, rows=7, k=21, a_base=1, a_stride=23, out_base=3,
                out_stride=22, imm=sm_imm(3e-3))
    d_ln = desc(RowOp.LAYERNORM, P=3, rows=4, k=10, a_base=200, out_base=105, out_stride=11,
                dst=Dst.CMEM, sat=Sat.INT16, p_base=2, imm=lc["r_d"], eps=lc["E"])
    d_ra = desc(RowOp.RADD, P=3, rows=5, k=17, a_base=301, a_stride=18, b_base=200,
                b_stride=19, out_base=301, out_stride=18, dst=Dst.CMEM, sat=Sat.INT16,
                p_base=5)
    got = {}

    def setup(ctx, mem):
        mem.set_rows(ctx, S, 1, 23, cmem=True)
        mem.set_rows(ctx, H, 200, 10, cmem=True)
        mem.set_rows(ctx, A, 301, 18, cmem=True)
        mem.set_rows(ctx, X, 200, 19, cmem=False)
        _set_pbuf(ctx, h, 2, m=lc["G"], bias=lc["B"], sh=np.full(10, lc["sh_o"]))
        _set_pbuf(ctx, h, 5, m=mr, sh=shr)

    def grab(name, d, cmem):
        def f(ctx, mem):
            got[name] = mem.get_rows(ctx, d["rows"], d["k"], d["out_base"], d["out_stride"],
                                     cmem=cmem)
            got[name + "_rs"] = mem.get_rs(ctx, d["rows"])
        return f

    run_ops(h, setup, [(d_sm, grab("sm", d_sm, False)), (d_ln, grab("ln", d_ln, True)),
                       (d_ra, grab("ra", d_ra, True))])
    c_e, sh_e = d_sm["imm"] & 0xFFFF, d_sm["imm"] >> 16
    w = exp_weights(S, c_e, sh_e)
    np.testing.assert_array_equal(got["sm"], w)
    m_r, sh_r = mantissa15(divide(np.full(7, 1 << 32), w.sum(-1)), 24)
    assert got["sm_rs"] == list(zip(m_r.tolist(), sh_r.tolist()))
    np.testing.assert_array_equal(got["ln"], layernorm(H, lc["r_d"], lc["E"], lc["G"], lc["B"],
                                                       lc["sh_o"], *INT16))
    np.testing.assert_array_equal(got["ra"], add(A, X, mr, shr, *INT16))


def test_serial_divider():
    """``floor(n/d)`` after LATENCY cycles, back to back, against ``sim.golden.divide``: the
    extremes, d = 0 (2³³ − 1), n < d, random operands."""
    rng = random.Random(61)
    cases = [((1 << 33) - 1, 1), ((1 << 33) - 1, (1 << 32) - 1), (1 << 32, 255), (1 << 32, 1 << 15),
             (5, 7), (0, 3), (123, 0), (1 << 32, 261120)]
    cases += [(rng.randrange(1 << 33), rng.randrange(1, 1 << rng.randrange(1, 33)))
              for _ in range(40)]
    dut = SerialDivider()
    got = []

    async def bench(ctx):
        for n, d in cases:
            ctx.set(dut.start, 1)
            ctx.set(dut.n, n)
            ctx.set(dut.d, d)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for _ in range(SerialDivider.LATENCY - 1):
                await ctx.tick()
            got.append(ctx.get(dut.q))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    n, d = np.array(cases).T
    assert got == divide(n, d).tolist()


def test_sequencer_checks_and_lint():
    with pytest.raises(ValueError, match="pes"):
        RowSequencer(pes=0, lanes=4)
    with pytest.raises(ValueError, match="lanes"):
        RowSequencer(pes=2, lanes=6)
    seq = RowSequencer(pes=3, lanes=8)
    assert (seq.pes, seq.lanes) == (3, 8)
    with pytest.raises(AttributeError):
        seq.pes = 2
    lint(emit(seq, "rowseq_p3_l8"), "rowseq_p3_l8")


def res_cycles(passes, k):
    """Busy cycles of a LAYERNORM RES: the cost model's span (``sim.program.res_row_span``)
    plus the pipeline."""
    return res_row_span(passes, k) + TAIL


def test_layernorm_res():
    """LAYERNORM with the fused residual add (RES) against ``sim.golden.add`` (int16, in place)
    then ``sim.golden.layernorm``: the residual sums written back into the source rows, the
    outputs; int16 saturation of the sum, x = −256 and 255, m = 2¹⁵ − 1; k = 1 (one local
    row: the output pass waits for its job), k = 20 with strides other than k, an all-equal
    row (zero variance, E = 0), the full table of 16 local rows (k = 64), k = 256, dst AMEM
    over the x rows (as KWT's LN1 writes x1 over x) and dst CMEM; rows not a multiple of P
    (the absent row's source stays untouched); the exact busy cycles."""
    h = RowHarness(amem_depth=4096, cmem_depth=4096, pbuf_cols=1024)
    rng = np.random.default_rng(71)
    P = 2

    def consts(k, s_h, s_out, eps):
        return layernorm_constants(rng.normal(1.0, 0.4, k), rng.normal(0.0, 0.5, k), s_h, s_out,
                                   eps)

    def case(name, rows, k, *, amp, x_amp=256, msh=(0, 1 << 15, 0, 20), eps=1e-5, s_h=1e-3,
             **kw):
        a = rng.integers(-amp, amp, (rows, k))
        x = rng.integers(-x_amp, x_amp, (rows, k))
        mm = rng.integers(msh[0], msh[1], k)
        ss = rng.integers(msh[2], msh[3], k)
        c = consts(k, s_h, 0.02, eps)
        d = desc(RowOp.LAYERNORM, rows=rows, k=k, res=1, imm=c["r_d"], eps=c["E"], **kw)
        return [name, a, x, mm, ss, c, d]

    cases = [
        case("res20", 5, 20, amp=40000, a_base=0, a_stride=24, b_base=0, b_stride=21,
             out_base=300, out_stride=22, sat=Sat.INT9, p_base=0),
        case("res1", 2, 1, amp=300, x_amp=256, a_base=100, b_base=120, b_stride=3,
             out_base=200, dst=Dst.CMEM, sat=Sat.INT16, p_base=12),
        case("res64", 31, 64, amp=3000, msh=(0, 1 << 15, 4, 12), s_h=1.0, eps=0.0,
             a_base=1024, b_base=1024, out_base=1024, sat=Sat.INT8, p_base=16),
        case("res256", 3, 256, amp=1 << 15, a_base=2048, b_base=2048, out_base=2560,
             dst=Dst.CMEM, sat=Sat.INT16, p_base=48),
    ]
    # extremes: saturating sums, x = −256 / 255, an all-equal residual sum (x = 0, h equal)
    a, x = cases[0][1], cases[0][2]
    a[0, :4] = (-(1 << 31), (1 << 31) - 1, 32767, -32768)
    x[0, 4:6] = (-256, 255)
    cases[0][3][4] = (1 << 15) - 1
    a, x = cases[2][1], cases[2][2]
    a[5], x[5] = -1234, 0
    got = {}

    def setup(ctx, mem):
        _fill(ctx, mem, P, cmem_elems=0, amem_elems=512)
        for p in range(P):
            for e in range(0, 3 * 24):
                mem.set_c(ctx, p, e, SENTINEL)
        for name, a, x, mm, ss, c, d in cases:
            mem.set_rows(ctx, a, d["a_base"], d["a_stride"], cmem=True)
            mem.set_rows(ctx, x, d["b_base"], d["b_stride"], cmem=False)
            _set_pbuf(ctx, h, d["p_base"], m=c["G"], bias=c["B"], sh=np.full(d["k"], c["sh_o"]))
            _set_pbuf(ctx, h, d["p_base"] + -(-d["k"] // h.L), m=mm, sh=ss)

    def after(name, d):
        def f(ctx, mem):
            cm = d["dst"] == Dst.CMEM
            got[name] = mem.get_rows(ctx, d["rows"], d["k"], d["out_base"], d["out_stride"],
                                     cmem=cm)
            got[name + "_h"] = mem.get_rows(ctx, d["rows"], d["k"], d["a_base"], d["a_stride"],
                                            cmem=True)
            if name == "res20":
                # the absent row (local row 2 of PE 1) and the padding keep the sentinel
                _guard(mem, ctx, d["rows"], d["k"], d["a_base"], d["a_stride"], cmem=True)
                assert all(mem.get_c(ctx, 1, 2 * 24 + j) == SENTINEL for j in range(24))
        return f

    cycles = run_ops(h, setup, [(c[-1], after(c[0], c[-1])) for c in cases], max_cycles=40_000)
    for name, a, x, mm, ss, c, d in cases:
        hs = add(a, x, mm, ss, *INT16)
        np.testing.assert_array_equal(got[name + "_h"], hs, err_msg=name)
        want = layernorm(hs, c["r_d"], c["E"], c["G"], c["B"], c["sh_o"], *SAT_BOUNDS[d["sat"]])
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    hs0 = got["res20_h"]
    assert (hs0 == INT16[0]).any() and (hs0 == INT16[1]).any()
    assert (got["res64_h"][5] == -1234).all()
    for (name, *_, d), n in zip(cases, cycles):
        assert n == res_cycles(d["passes"], d["k"]), (name, n, res_cycles(d["passes"], d["k"]))


def test_softmax_maxc():
    """SOFTMAX MAXC: the row maximum from column k (one element instead of the maximum pass),
    attention mode (k = 99, KWT-1's rows; k = 1) and NORM (k = 37), against the golden
    functions; busy cycles as the cost model's (``CostModel.row_cycles``, + 2 for the
    registered busy flag; for short rows, where the per-row job spaces them, its bound)."""
    from types import SimpleNamespace

    from hw.isa import Flag, Op
    from sim.program import CostModel
    h = RowHarness(cmem_depth=2048)
    rng = np.random.default_rng(81)
    cases = [   # (name, scores, descriptor)
        ("att99", rng.integers(-(1 << 20), 1 << 20, (5, 99)),
         desc(RowOp.SOFTMAX, rows=5, k=99, a_stride=100, out_stride=99, imm=sm_imm(1e-5))),
        ("att1", rng.integers(-(1 << 31), 1 << 31, (3, 1)),
         desc(RowOp.SOFTMAX, rows=3, k=1, a_base=400, a_stride=2, out_base=300,
              imm=sm_imm(1.0))),
        ("norm37", rng.integers(-50000, 50000, (4, 37)),
         desc(RowOp.SOFTMAX, norm=1, rows=4, k=37, a_base=500, a_stride=38, out_base=320,
              out_stride=37, imm=sm_imm(1e-4))),
    ]
    cases[0][1][2] = 777                                   # an all-equal row
    got = {}

    def setup(ctx, mem):
        for name, S, d in cases:
            d["maxc"] = 1
            mx = S.max(axis=1, keepdims=True)
            mem.set_rows(ctx, np.concatenate([S, mx], axis=1), d["a_base"], d["a_stride"],
                         cmem=True)

    def after(name, d):
        def f(ctx, mem):
            got[name] = mem.get_rows(ctx, d["rows"], d["k"], d["out_base"], d["out_stride"],
                                     cmem=False)
            got[name + "_rs"] = mem.get_rs(ctx, d["rows"])
        return f

    for name, S, d in cases:
        d["maxc"] = 1
    cycles = run_ops(h, setup, [(d, after(name, d)) for name, S, d in cases])
    cm = CostModel()
    for (name, S, d), n in zip(cases, cycles):
        c_e, sh_e = d["imm"] & 0xFFFF, d["imm"] >> 16
        if d["norm"]:
            np.testing.assert_array_equal(got[name], softmax(S, c_e, sh_e), err_msg=name)
        else:
            w = exp_weights(S, c_e, sh_e)
            np.testing.assert_array_equal(got[name], w, err_msg=name)
            m_r, sh_r = mantissa15(divide(np.full(len(S), 1 << 32), w.sum(-1)), 24)
            assert got[name + "_rs"] == list(zip(m_r.tolist(), sh_r.tolist())), name
        i = dict(op=Op.SOFTMAX, rows=d["rows"], k=d["k"],
                 flags=Flag.MAXC | (Flag.NORM if d["norm"] else 0))
        want = cm.row_cycles(i, SimpleNamespace(pes=2)) + 2
        # exact when the rows stream back to back, else (a job between rows) a bound
        assert n == want if name == "att99" else d["passes"] * (d["k"] + 1) <= n <= want, \
            (name, n, want)
