# amaranth: UnusedElaboratable=no
"""The PE alone (``hw.pe.PE``) and its requantizer (``hw.pe.Requant``), bit-exact with
``sim.golden.matmul`` / ``sim.golden.requant``, driven cycle by cycle as the array drives them."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.isa import Sat
from hw.pe import PE, InitMode, Requant, SAT_BOUNDS
from sim.golden import matmul, requant


def requant_model(x, m, sh, sat, relu):
    """The hardware's formula (golden ``requant`` inside numerics.md's ranges, the same
    formula beyond: m up to 16 bits, shifts up to 255)."""
    lo, hi = SAT_BOUNDS[Sat(sat)]
    p = x * m
    y = p if sh == 0 else (p + (1 << (sh - 1))) >> sh
    y = min(max(y, lo), hi)
    return max(y, 0) if relu else y


def test_requant_random_and_edges():
    rng = random.Random(4)
    cases = []
    for x in (0, 1, -1, (1 << 31) - 1, -(1 << 31), 12345, -54321):
        for m in (0, 1, 32767, 65535):
            for sh in (0, 1, 2, 15, 31, 46, 47, 48, 63, 255):
                for sat in range(4):
                    cases.append((x, m, sh, sat, sh % 2 == 1))
    for _ in range(10_000):
        cases.append((rng.randrange(-(1 << 31), 1 << 31), rng.randrange(0, 1 << 15),
                      rng.randrange(0, 48), rng.randrange(4), rng.random() < 0.25))
    dut = Requant()
    got = []

    async def bench(ctx):
        lat = Requant.LATENCY
        for t in range(len(cases) + lat):
            if t < len(cases):
                x, m, sh, sat, relu = cases[t]
                ctx.set(dut.x, x); ctx.set(dut.m, m); ctx.set(dut.sh, sh)
                ctx.set(dut.sat, sat); ctx.set(dut.relu, relu)
            if t >= lat:
                got.append(ctx.get(dut.y))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = [requant_model(*c) for c in cases]
    assert got == want
    # Inside numerics.md's ranges the model is the golden requant.
    for (x, m, sh, sat, relu), y in zip(cases[-2000:], got[-2000:]):
        g = int(requant(np.array([x]), np.array([m]), np.array([sh]), *SAT_BOUNDS[Sat(sat)])[0])
        assert y == (max(g, 0) if relu else g)


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

    def run(self):
        pe, out = self.pe, {}
        end = max([*self.sched, *self.samples]) + 1
        names = {n for v in self.sched.values() for n in v}

        async def bench(ctx):
            for t in range(end):
                for n in names:
                    ctx.set(getattr(pe, n), self.sched.get(t, {}).get(n, 0))
                for key, sig in self.samples.get(t, []):
                    out[key] = ctx.get(sig)
                await ctx.tick()

        sim = Simulator(pe)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        return out


def pack(values, width):
    return sum((int(v) & ((1 << width) - 1)) << (width * i) for i, v in enumerate(values))


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

    def tile(start, a0, B, k, *, init, c_addr, bias_v=None, y_to_amem=None, rq=None):
        """Beats from ``start``; drain writes CMEM at c_addr + l (and AMEM from y)."""
        for j in range(k):
            drv.at(start + j, valid=1, a_addr=a0 + j, first=j == 0, last=j == k - 1)
            drv.at(start + j + 2, b=pack(B[j], 8))
        d0 = start + k - 1 + PE.MAC_LATENCY + 1
        cw = L // 4
        for l in range(L):
            e = c_addr + l
            drv.at(d0 + l, c_raddr=e // cw, c_slot=e % cw, d_init=init)
            if bias_v is not None:
                drv.at(d0 + l + 3, bias=int(bias_v[l]))
            mm, ss = (rq[0][l], rq[1][l]) if rq else (1, 0)
            drv.at(d0 + l + PE.D_WRITE, c_we=1, c_waddr=e // cw, c_wslot=e % cw, m=int(mm),
                   sh=int(ss), sat=Sat.INT9, relu=0)
            drv.sample(d0 + l + PE.D_Y, ("y", start, l), pe.y)
            if y_to_amem is not None:
                ea = y_to_amem + l
                drv.at(d0 + l + PE.D_Y, aw_addr=ea // L, aw_from_y=1, aw_en=1 << (ea % L))
        return start + max(k, L)

    t0 = cyc + 2
    t1 = tile(t0, a_base[0], Bs[0], K, init=InitMode.ZERO, c_addr=5)
    t2 = tile(t1, a_base[1], Bs[1], K, init=InitMode.BIAS, c_addr=20, bias_v=bias)
    # ACCUM onto tile 0's results, K = L: the next last beat comes exactly L cycles later.
    t3 = tile(t2 + 4, a_base[2], Bs[2][:L], L, init=InitMode.CMEM, c_addr=5, rq=(m, sh),
              y_to_amem=40)
    # Read the requantized row back: A = AMEM[40 … 43], B = identity → acc lane l = y[l].
    eye = np.eye(L, dtype=np.int64)
    t4 = tile(t3 + 20, 40, eye, L, init=InitMode.ZERO, c_addr=30)
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
