# amaranth: UnusedElaboratable=no
"""The PE alone (``hw.pe.PE``), its requantizer (``hw.pe.Requant``) and row-scale multiplier
(``hw.pe.MulRound``), bit-exact with ``sim.golden.matmul`` / ``requant`` / ``activation`` and the
row scale of ``sim.golden.attention``, driven cycle by cycle as the array drives them; the PE's
Verilog lints clean."""
import random

import numpy as np
import pytest
from amaranth.lib.wiring import In
from amaranth.sim import Simulator

from hw.isa import Sat
from hw.pe import PE, InitMode, MulRound, Requant, SAT_BOUNDS
from sim.golden import INT8, INT16, activation, matmul, requant, rshift_round, wrap32
from tb.runner import emit, lint


def mulround_model(x, m, sh, c=0):
    p = x * m + c
    return p if sh == 0 else (p + (1 << (sh - 1))) >> sh


def requant_model(x, m, sh, sat, relu, c=0, a=0):
    """The hardware's formula (golden ``requant`` inside numerics.md's ranges, the same
    formula beyond: m up to 16 bits, shifts up to 255; with the addends c and a)."""
    lo, hi = SAT_BOUNDS[Sat(sat)]
    y = min(max(mulround_model(x, m, sh, c) + a, lo), hi)
    return max(y, 0) if relu else y


def run_pipeline(dut, cases, latency, delays):
    """Feed one case per cycle (a dict of port values; a port in ``delays`` is given that many
    cycles after the others) and return ``dut``'s ``y``/``q`` ``latency`` cycles later."""
    out_port = dut.y if hasattr(dut, "y") else dut.q
    got = []

    async def bench(ctx):
        n = len(cases)
        for t in range(n + latency):
            for name, port in dut.signature.members.items():
                if port.flow != In:
                    continue
                k = t - delays.get(name, 0)
                if 0 <= k < n:
                    ctx.set(getattr(dut, name), cases[k].get(name, 0))
            if t >= latency:
                got.append(ctx.get(out_port))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_requant_random_and_edges():
    rng = random.Random(4)
    cases = []
    for x in (0, 1, -1, (1 << 31) - 1, -(1 << 31), 12345, -54321):
        for m in (0, 1, 32767, 65535):
            for sh in (0, 1, 2, 15, 31, 46, 47, 48, 63, 255):
                for sat in range(4):
                    cases.append((x, m, sh, sat, sh % 2 == 1))
    for _ in range(6_000):
        cases.append((rng.randrange(-(1 << 31), 1 << 31), rng.randrange(0, 1 << 15),
                      rng.randrange(0, 48), rng.randrange(4), rng.random() < 0.25))
    names = ("x", "m", "sh", "sat", "relu")
    got = run_pipeline(Requant(), [dict(zip(names, c)) for c in cases], Requant.LATENCY, {})
    want = [requant_model(*c) for c in cases]
    assert got == want
    # Inside numerics.md's ranges the model is the golden requant.
    for (x, m, sh, sat, relu), y in zip(cases[-2000:], got[-2000:]):
        g = int(requant(np.array([x]), np.array([m]), np.array([sh]), *SAT_BOUNDS[Sat(sat)])[0])
        assert y == (max(g, 0) if relu else g)


def test_requant_and_mulround_full_width():
    """33-bit x, signed 17-bit m, the addends c (stage 2) and a (stage 6), shifts past 50."""
    rng = random.Random(5)
    edges = [-(1 << 32), (1 << 32) - 1, 0, -1]
    cases = []
    for _ in range(3_000):
        cases.append(dict(
            x=rng.choice(edges) if rng.random() < 0.1 else rng.randrange(-(1 << 32), 1 << 32),
            m=rng.choice((-(1 << 16), (1 << 16) - 1)) if rng.random() < 0.1
            else rng.randrange(-(1 << 16), 1 << 16),
            sh=rng.choice((0, 1, 49, 50, 51, 200)) if rng.random() < 0.2 else rng.randrange(48),
            c=rng.randrange(-(1 << 31), 1 << 31), a=rng.randrange(-(1 << 31), 1 << 31),
            sat=rng.randrange(4), relu=int(rng.random() < 0.2)))
    got = run_pipeline(Requant(), cases, Requant.LATENCY,
                       {"c": Requant.C_STAGE, "a": Requant.A_STAGE})
    assert got == [requant_model(**c) for c in cases]
    # The row scale's multiplier alone: the full 50-bit result, no addend, with its product in
    # DSPs and in fabric logic (the PE's S1).
    for dsp in (True, False):
        s1 = MulRound(addend=False, dsp=dsp)
        got = run_pipeline(s1, cases, s1.latency, {})
        assert got == [mulround_model(c["x"], c["m"], c["sh"]) for c in cases], dsp
    with pytest.raises(ValueError, match="addend=True needs dsp=True"):
        MulRound(addend=True, dsp=False)


class PEDriver:
    """Cycle schedule for one PE: ``at(cycle, **inputs)``; outputs sampled at chosen cycles."""

    def __init__(self, pe):
        self.pe = pe
        self.sched = {}
        self.samples = {}       # cycle → (key, signal)
        self.now = 0

    def at(self, cycle, **values):
        self.sched.setdefault(cycle, {}).update(values)

    def sample(self, cycle, key, signal):
        self.samples.setdefault(cycle, []).append((key, signal))

    def run(self, setup=None, finish=None):
        """Run the schedule; ``setup(ctx)`` before the first cycle (backdoor memory writes),
        ``finish(ctx, out)`` after the last (backdoor reads into ``out``)."""
        pe, out = self.pe, {}
        end = max([*self.sched, *self.samples]) + 1
        names = {n for v in self.sched.values() for n in v}

        async def bench(ctx):
            if setup is not None:
                setup(ctx)
            for t in range(end):
                for n in names:
                    ctx.set(getattr(pe, n), self.sched.get(t, {}).get(n, 0))
                for key, sig in self.samples.get(t, []):
                    out[key] = ctx.get(sig)
                await ctx.tick()
            if finish is not None:
                finish(ctx, out)

        sim = Simulator(pe)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        return out


def pack(values, width):
    return sum((int(v) & ((1 << width) - 1)) << (width * i) for i, v in enumerate(values))


def drive_tile(drv, start, a0, B, k, *, init, c_addr, bias_v=None, y_to_amem=None, rq=None,
               sat=Sat.INT9, rs_row=None, act_sel=None, req=False):
    """Schedule one tile on ``drv`` as the array drives it: beats from ``start`` (A elements
    ``a0 …``, B rows), then its drain. The drain writes ``s`` to CMEM at ``c_addr + l`` (or,
    with ``req``, ``y`` there), requantizes with ``rq = (m, sh)`` (default 1, 0) to ``sat``,
    with the row-scale entry ``rs_row`` (RSCALE) and table ``act_sel`` (ACT) if given, and
    writes ``y`` to AMEM at ``y_to_amem + l``. Samples ``("y", start, l)``; returns the next
    tile's start."""
    pe = drv.pe
    for j in range(k):
        drv.at(start + j, valid=1, a_addr=a0 + j, first=j == 0, last=j == k - 1)
        drv.at(start + j + 2, b=pack(B[j], 8))
    d0 = start + k - 1 + PE.MAC_LATENCY + 1
    L = pe.lanes
    cw = L // 4
    for l in range(L):
        e = c_addr + l
        drv.at(d0 + l, c_raddr=e // cw, c_slot=e % cw, d_init=init)
        if rs_row is not None:
            drv.at(d0 + l + PE.D_RS, rs_row=rs_row)
        if bias_v is not None:
            drv.at(d0 + l + 3, bias=int(bias_v[l]))
        mm, ss = (rq[0][l], rq[1][l]) if rq else (1, 0)
        drv.at(d0 + l + PE.D_WRITE, rscale=rs_row is not None)
        if not req:
            drv.at(d0 + l + PE.D_WRITE, c_we=1, c_waddr=e // cw, c_wslot=e % cw)
        drv.at(d0 + l + PE.D_RQ, m=int(mm), sh=int(ss), sat=sat, relu=0)
        if act_sel is not None:
            drv.at(d0 + l + PE.D_ACT, act=1, act_sel=act_sel)
        drv.sample(d0 + l + PE.D_Y, ("y", start, l), pe.y)
        if req:
            drv.at(d0 + l + PE.D_Y, c_we=1, c_wy=1, c_waddr=e // cw, c_wslot=e % cw)
        if y_to_amem is not None:
            ea = y_to_amem + l
            drv.at(d0 + l + PE.D_Y, aw_addr=ea // L, aw_from_y=1, aw_en=1 << (ea % L))
    return start + max(k, L)


def test_pe_tiles_drain_and_writeback():
    """Four tiles through one PE: plain, bias, ACCUM onto CMEM (the next tile L cycles after
    the previous: the drain register double-buffers), requant into AMEM; a fifth tile reads
    that AMEM row back through the MAC path."""
    L, K = 4, 6
    rng = np.random.default_rng(8)
    pe = PE(lanes=L, amem_depth=64, cmem_depth=64)
    drv = PEDriver(pe)
    A = rng.integers(-256, 256, (3, K))
    A[0, 0] = -256
    Bs = [rng.integers(-128, 128, (K, L)) for _ in range(3)]
    bias = rng.integers(-(1 << 31), 1 << 31, L)
    m = rng.integers(1, 1 << 15, L)
    sh = rng.integers(10, 30, L)
    a_base = [3, 10, 17]     # unaligned rows: elements straddle AMEM rows of L

    # Preload AMEM (DMA-style row writes, element e at row e div L, slot e mod L).
    cyc = 0
    for r in range(3):
        for j in range(K):
            e = a_base[r] + j
            drv.at(cyc, aw_addr=e // L, aw_data=pack([A[r, j]] * L, 9), aw_en=1 << (e % L))
            cyc += 1

    def tile(start, a0, B, k, **kw):
        return drive_tile(drv, start, a0, B, k, sat=Sat.INT9, **kw)

    t0 = cyc + 2
    t1 = tile(t0, a_base[0], Bs[0], K, init=InitMode.ZERO, c_addr=5)
    t2 = tile(t1, a_base[1], Bs[1], K, init=InitMode.BIAS, c_addr=20, bias_v=bias)
    # ACCUM onto tile 0's results, K = L: the next last beat comes exactly L cycles later.
    t3 = tile(t2 + 4, a_base[2], Bs[2][:L], L, init=InitMode.CMEM, c_addr=5, rq=(m, sh),
              y_to_amem=40)
    # Read the requantized row back: A = AMEM[40 … 43], B = identity → acc lane l = y[l].
    eye = np.eye(L, dtype=np.int64)
    t4 = tile(t3 + PE.D_Y + 10, 40, eye, L, init=InitMode.ZERO, c_addr=30)
    end = t4 + 30
    cw = L // 4
    for i, e in enumerate(range(0, 36, cw)):
        drv.at(end + i, c_raddr=e // cw)
        drv.sample(end + i + 2, ("c", e // cw), pe.c_rdata)   # two cycles: bank register
    out = drv.run()

    cmem = {}
    for key, word in out.items():
        if key[0] == "c":
            row = key[1]
            for s in range(cw):
                v = (word >> (32 * s)) & 0xFFFFFFFF
                cmem[row * cw + s] = v - (1 << 32) if v >> 31 else v
    c0 = matmul(A[0:1], Bs[0])[0]
    c1 = matmul(A[1:2], Bs[1], bias[None, :])[0]
    c2 = matmul(A[2:3, :L], Bs[2][:L], c0[None, :])[0]
    y2 = requant(c2, m, sh, -256, 255)
    np.testing.assert_array_equal([cmem[20 + l] for l in range(L)], c1)
    np.testing.assert_array_equal([cmem[5 + l] for l in range(L)], c2)
    np.testing.assert_array_equal([out[("y", t2 + 4, l)] for l in range(L)], y2)
    np.testing.assert_array_equal([cmem[30 + l] for l in range(L)], y2)


def test_pe_drain_epilogues():
    """RSCALE (the entry of ``rs_row``, an up-scaling one that wraps past int32), REQ (CMEM
    gets y, sign-extended) and ACT (both tables, written through the LOAD_T port) against
    golden ``requant`` / ``activation`` and the row scale of ``attention``."""
    L, K = 4, 5
    rng = np.random.default_rng(11)
    pe = PE(lanes=L, amem_depth=64, cmem_depth=128)
    drv = PEDriver(pe)
    A = rng.integers(-256, 256, (3, K))
    Bs = [rng.integers(-128, 128, (K, L)) for _ in range(3)]
    bias = rng.integers(-(1 << 30), 1 << 30, (3, L))
    rs = {3: (int(rng.integers(1 << 14, 1 << 15)), 2),   # s·m/4 leaves int32: wraps
          7: (int(rng.integers(1, 1 << 15)), 24)}
    m = rng.integers(1, 1 << 15, (3, L))
    sh = rng.integers(22, 40, (3, L))
    # Tile 2 saturates to both ends of int8: table entries 0 and 255.
    bias[2, :2] = (-(1 << 30), 1 << 30)
    m[2, :2], sh[2, :2] = 1000, 22
    lut = rng.integers(-256, 256, 512)
    cyc = 0
    for e in range(512):
        drv.at(cyc, t_we=1, t_waddr=e, t_wdata=int(lut[e]))
        cyc += 1
    a_base = [0, 8, 16]
    for r in range(3):
        for j in range(K):
            e = a_base[r] + j
            drv.at(r * K + j, aw_addr=e // L, aw_data=pack([A[r, j]] * L, 9), aw_en=1 << (e % L))

    def tile(start, r, **kw):
        return drive_tile(drv, start, a_base[r], Bs[r], K, init=InitMode.BIAS, bias_v=bias[r],
                          rq=(m[r], sh[r]), **kw)

    gap = PE.D_Y + 8     # no overlap of one tile's REQ writes with the next one's
    t = tile(cyc + 2, 0, c_addr=0, sat=Sat.INT8, rs_row=3, act_sel=1, y_to_amem=40)
    t = tile(t + gap, 1, c_addr=20, sat=Sat.INT16, rs_row=7, req=True)
    t = tile(t + gap, 2, c_addr=32, sat=Sat.INT8, act_sel=0, y_to_amem=48)
    drv.at(t + gap, valid=0)

    def setup(ctx):
        for row, (mr, shr) in rs.items():
            ctx.set(pe.rs_data[0][row], mr | shr << 15)

    def finish(ctx, out):
        out["c"] = [_signed(ctx.get(pe.cmem_data[0][e]), 32) for e in range(36)]
        out["a"] = [_signed(ctx.get(pe.amem_data[0][e // L]) >> (9 * (e % L)), 9)
                    for e in range(40, 52)]

    out = drv.run(setup, finish)
    s = [matmul(A[r:r + 1], Bs[r], bias[r][None, :])[0] for r in range(3)]
    scaled = [wrap32(rshift_round(s[r] * rs[row][0], rs[row][1])) for r, row in ((0, 3), (1, 7))]
    assert any(abs(int(v)) > 1 << 31 for v in rshift_round(s[0] * rs[3][0], rs[3][1]))
    y0 = activation(requant(scaled[0], m[0], sh[0], *INT8), lut[256:])
    y1 = requant(scaled[1], m[1], sh[1], *INT16)
    y2_8 = requant(s[2], m[2], sh[2], *INT8)
    assert y2_8[0] == -128 and y2_8[1] == 127
    y2 = activation(y2_8, lut[:256])
    for r, want in enumerate((y0, y1, y2)):
        start = [k for k in out if k[0] == "y"]
        got = [out[("y", sorted({k[1] for k in start})[r], l)] for l in range(L)]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out["c"][0:4], s[0])        # s itself, before the row scale
    np.testing.assert_array_equal(out["c"][20:24], y1)        # REQ
    np.testing.assert_array_equal(out["c"][32:36], s[2])
    np.testing.assert_array_equal(out["a"][0:4], y0)
    np.testing.assert_array_equal(out["a"][8:12], y2)


def _signed(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def test_pe_verilog_lints_clean():
    pe = PE(lanes=4, amem_depth=64, cmem_depth=64)
    lint(emit(pe, "pe_l4"), "pe_l4")


def test_pe_rejects_bad_parameters():
    with pytest.raises(ValueError, match="lanes"):
        PE(lanes=6, amem_depth=64, cmem_depth=64)
    with pytest.raises(ValueError, match="amem_depth"):
        PE(lanes=4, amem_depth=48, cmem_depth=64)
    with pytest.raises(TypeError, match="cmem_depth"):
        PE(lanes=4, amem_depth=64, cmem_depth=64.0)
    with pytest.raises(TypeError):
        PE(4, 64, 64)
    pe = PE(lanes=8, amem_depth=128, cmem_depth=64)
    assert (pe.lanes, pe.amem_depth, pe.cmem_depth) == (8, 128, 64)
    with pytest.raises(AttributeError):
        pe.lanes = 4
