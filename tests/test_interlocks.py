# amaranth: UnusedElaboratable=no
"""The interlocks that let DMA transfers overlap compute (docs/architecture.md, *Ordering*):
a MATMUL waits only for the loads issued before it, a STORE_C only for the MATMULs issued
before it; ARRAY_CYCLES; the overlapped ``matmul_program`` against the cost model.

Overlap is observed from outside: the testbench polls the ext memory (has a STORE_C written
its last word yet?) and MAC_CYCLES (how far has the array got?) while the program runs.
Every run has a watchdog.
"""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.accelerator import SimSystem, csr_read, csr_write, run_program
from hw.isa import Csr, Dst, Flag, Op, Sat, decode, instr_words
from hw.pe import PE
from sim.golden import matmul, requant
from sim.program import AccelConfig, CostModel, Program as SwProgram, matmul_program
from sim.backends import AmaranthBackend, run_job
from tests.test_accelerator import SMALL, Program, a_words, b_words, c_from_words, p_words, tiles

SENTINEL = 0x5A


def watch_run(pg, *, pes, watch, max_cycles=60_000, **kwargs):
    """Run ``pg`` on SimSystem; ``watch``: ext word address. Returns ``(result, samples)``:
    the final ext memory, STATUS and counters, and ``(cycle, MAC_CYCLES, watched word)``
    sampled every few cycles while the program runs."""
    L = pg.L
    mask = (1 << (8 * L)) - 1
    words = list(pg.words)
    base = len(words)
    words += [(ins >> (8 * L * i)) & mask for ins in pg.prog for i in range(instr_words(L))]
    kw = {**SMALL, **kwargs}
    sysm = SimSystem(ext_depth=1 << max(4, (len(words) - 1).bit_length()), ext_init=words,
                     pes=pes, lanes=L, **kw)
    samples, out = [], {}

    async def bench(ctx):
        bus = sysm.bus
        await csr_write(ctx, bus, Csr.PROG_BASE, base)
        await csr_write(ctx, bus, Csr.PROG_LEN, len(pg.prog))
        await csr_write(ctx, bus, Csr.CTRL, 1)
        waited = 0
        while True:
            mac = await csr_read(ctx, bus, Csr.MAC_CYCLES)
            status = await csr_read(ctx, bus, Csr.STATUS)
            waited += 4
            samples.append((waited, mac, int(ctx.get(sysm.ext.data[watch]))))
            if not status & 1:
                break
            assert waited < max_cycles, f"still busy after {waited} cycles"
        out["status"] = status
        for name in ("CYCLES", "MAC_CYCLES", "ARRAY_CYCLES", "STALL_DMA"):
            out[name] = await csr_read(ctx, bus, Csr[name])
        out["mem"] = [int(ctx.get(sysm.ext.data[i])) for i in range(len(pg.words))]

    sim = Simulator(sysm)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert out["status"] & 2 and not out["status"] & 4, hex(out["status"])
    return out, samples


def sentinel_block(pg, n):
    """Reserve ``n`` output words filled with a sentinel (to see when they are written)."""
    return pg.put([int.from_bytes(bytes([SENTINEL]) * pg.L, "little")] * n)


def test_store_and_load_run_during_a_later_matmul():
    """MATMUL 0, STORE_C of its result, a long MATMUL 1, a LOAD_B, MATMUL 2 on the loaded B.
    The STORE_C waits for MATMUL 0 only: its last word is out while MATMUL 1 still computes.
    The LOAD_B (issued after MATMUL 1, into a region MATMUL 1 does not read) lands while
    MATMUL 1 computes: MATMUL 2, which must wait for it, follows MATMUL 1 with the one-cycle
    gap, so the array is busy without a break (ARRAY_CYCLES exact) and MATMUL 2 is right."""
    P, L = 2, 4
    rng = np.random.default_rng(1)
    A0, B0 = rng.integers(-128, 128, (4, 8)), rng.integers(-128, 128, (8, 7))
    A1, B1 = rng.integers(-128, 128, (6, 64)), rng.integers(-128, 128, (64, 13))
    B2 = rng.integers(-128, 128, (8, 5))
    T0, T1, T2 = tiles(7, L), tiles(13, L), tiles(5, L)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A0, L)), rows=4, k=8, a_base=0, a_stride=8)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A1, L)), rows=6, k=64, a_base=64, a_stride=64)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B0, L)), count=T0 * 8, b_base=0)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B1, L)), count=T1 * 64, b_base=100)
    pg(Op.MATMUL, rows=4, k=8, tiles=T0, count=7, a_base=0, a_stride=8, b_base=0,
       dst=Dst.CMEM, out_base=0, out_stride=T0 * L)
    out0 = sentinel_block(pg, 4 * T0 * 4)
    pg(Op.STORE_C, ext_addr=out0, rows=4, tiles=T0, out_base=0, out_stride=T0 * L)
    pg(Op.MATMUL, rows=6, k=64, tiles=T1, count=13, a_base=64, a_stride=64, b_base=100,
       dst=Dst.CMEM, out_base=200, out_stride=T1 * L)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B2, L)), count=T2 * 8, b_base=600)
    pg(Op.MATMUL, rows=4, k=8, tiles=T2, count=5, a_base=0, a_stride=8, b_base=600,
       dst=Dst.CMEM, out_base=400, out_stride=T2 * L)
    out1, out2 = pg.reserve(6 * T1 * 4), pg.reserve(4 * T2 * 4)
    pg(Op.STORE_C, ext_addr=out1, rows=6, tiles=T1, out_base=200, out_stride=T1 * L)
    pg(Op.STORE_C, ext_addr=out2, rows=4, tiles=T2, out_base=400, out_stride=T2 * L)
    pg(Op.HALT)
    r, samples = watch_run(pg, pes=P, watch=out0 + 4 * T0 * 4 - 1)
    np.testing.assert_array_equal(c_from_words(r["mem"], 4, T0, L, out0)[:, :7], matmul(A0, B0))
    np.testing.assert_array_equal(c_from_words(r["mem"], 6, T1, L, out1)[:, :13], matmul(A1, B1))
    np.testing.assert_array_equal(c_from_words(r["mem"], 4, T2, L, out2)[:, :5], matmul(A0, B2))
    beats0, beats1 = 2 * T0 * 8, 3 * T1 * 64
    stored = [mac for _, mac, word in samples if word != samples[0][2]]
    assert stored, "the watched STORE_C never wrote its last word"
    # The last word of STORE_C 0 was out while MATMUL 1 had more than half to go.
    assert stored[0] < beats0 + beats1 // 2, (stored[0], beats0, beats1)
    assert r["MAC_CYCLES"] == beats0 + beats1 + 2 * T2 * 8
    # Three MATMULs back to back (K ≥ L: one-cycle gaps), then the pipeline tail.
    tail = PE.MAC_LATENCY + L + PE.D_Y + 1
    assert r["ARRAY_CYCLES"] == beats0 + (1 + beats1) + (1 + 2 * T2 * 8) + tail, r


def test_matmul_does_not_wait_for_an_earlier_store():
    """A long STORE_C between two MATMULs on disjoint CMEM regions: the second MATMUL starts
    (MAC_CYCLES grows past the first's beats) before the STORE_C has written its last word."""
    P, L = 2, 4
    rng = np.random.default_rng(2)
    A0, B0 = rng.integers(-128, 128, (24, 4)), rng.integers(-128, 128, (4, 32))
    A1, B1 = rng.integers(-128, 128, (4, 16)), rng.integers(-128, 128, (16, 8))
    T0, T1 = tiles(32, L), tiles(8, L)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A0, L)), rows=24, k=4, a_base=0, a_stride=4)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A1, L)), rows=4, k=16, a_base=64, a_stride=16)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B0, L)), count=T0 * 4, b_base=0)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B1, L)), count=T1 * 16, b_base=64)
    pg(Op.MATMUL, rows=24, k=4, tiles=T0, a_base=0, a_stride=4, b_base=0, dst=Dst.CMEM,
       out_base=0, out_stride=T0 * L)
    nwords = 24 * T0 * 4
    out0 = sentinel_block(pg, nwords)
    pg(Op.STORE_C, ext_addr=out0, rows=24, tiles=T0, out_base=0, out_stride=T0 * L)
    pg(Op.MATMUL, rows=4, k=16, tiles=T1, a_base=64, a_stride=16, b_base=64, dst=Dst.CMEM,
       out_base=500, out_stride=T1 * L)
    out1 = pg.reserve(4 * T1 * 4)
    pg(Op.STORE_C, ext_addr=out1, rows=4, tiles=T1, out_base=500, out_stride=T1 * L)
    pg(Op.HALT)
    r, samples = watch_run(pg, pes=P, watch=out0 + nwords - 1)
    np.testing.assert_array_equal(c_from_words(r["mem"], 24, T0, L, out0), matmul(A0, B0))
    np.testing.assert_array_equal(c_from_words(r["mem"], 4, T1, L, out1), matmul(A1, B1))
    beats0, beats1 = 12 * T0 * 4, 2 * T1 * 16
    later = [word for _, mac, word in samples if mac > beats0]
    assert later and later[0] == samples[0][2], "MATMUL 1 waited for the STORE_C"
    assert r["MAC_CYCLES"] == beats0 + beats1


@pytest.mark.parametrize("stall", [0, 40])
def test_chained_disjoint_cmem_accum_and_amem(stall):
    """STORE_Cs between MATMULs on disjoint CMEM regions, an ACCUM MATMUL whose drain reads
    CMEM while a STORE_C reads another region (the shared read port), and a requantize-to-AMEM
    MATMUL feeding the next one; with and without ext-memory back-pressure."""
    P, L = 3, 4
    rng = np.random.default_rng(3 + stall)
    A0, B0 = rng.integers(-128, 128, (7, 9)), rng.integers(-128, 128, (9, 10))
    A1 = rng.integers(-128, 128, (8, 12))
    B1, B2 = rng.integers(-128, 128, (12, 6)), rng.integers(-128, 128, (12, 6))
    B3 = rng.integers(-128, 128, (6, 5))
    bias = rng.integers(-5000, 5000, 6)
    from tests.test_accelerator import _requant_params
    m, sh = _requant_params(rng, 6, 2e-3, 4e-2)
    T0, T1, T3 = tiles(10, L), tiles(6, L), tiles(5, L)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A0, L)), rows=7, k=9, a_base=0, a_stride=9)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A1, L)), rows=8, k=12, a_base=40, a_stride=12)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B0, L) + b_words(B1, L) + b_words(B2, L)
                                  + b_words(B3, L)), count=T0 * 9 + 2 * T1 * 12 + T3 * 6,
       b_base=0)
    b1, b2, b3 = T0 * 9, T0 * 9 + T1 * 12, T0 * 9 + 2 * T1 * 12
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, m, sh, L)), count=T1, p_base=0)
    # R0 = A0·B0, stored while the rest runs.
    pg(Op.MATMUL, rows=7, k=9, tiles=T0, count=10, a_base=0, a_stride=9, b_base=0,
       dst=Dst.CMEM, out_base=0, out_stride=T0 * L)
    o0 = pg.reserve(7 * T0 * 4)
    pg(Op.STORE_C, ext_addr=o0, rows=7, tiles=T0, out_base=0, out_stride=T0 * L)
    # R1 = A1·B1 + A1·B2 (ACCUM reads R1 through the CMEM read port the STORE_C also uses).
    pg(Op.MATMUL, rows=8, k=12, tiles=T1, count=6, a_base=40, a_stride=12, b_base=b1,
       dst=Dst.CMEM, out_base=100, out_stride=T1 * L + 1)
    pg(Op.MATMUL, rows=8, k=12, tiles=T1, count=6, a_base=40, a_stride=12, b_base=b2,
       dst=Dst.CMEM, out_base=100, out_stride=T1 * L + 1, flags=Flag.ACCUM)
    o1 = pg.reserve(8 * T1 * 4)
    pg(Op.STORE_C, ext_addr=o1, rows=8, tiles=T1, out_base=100, out_stride=T1 * L + 1)
    # Y = requant(A1·B1 + bias) into AMEM, then R2 = Y·B3 (AMEM read after write interlock).
    pg(Op.MATMUL, rows=8, k=12, tiles=T1, count=6, a_base=40, a_stride=12, b_base=b1,
       p_base=0, dst=Dst.AMEM, sat=Sat.INT8, out_base=200, out_stride=6, flags=Flag.BIAS)
    pg(Op.MATMUL, rows=8, k=6, tiles=T3, count=5, a_base=200, a_stride=6, b_base=b3,
       dst=Dst.CMEM, out_base=300, out_stride=T3 * L)
    o2 = pg.reserve(8 * T3 * 4)
    pg(Op.STORE_C, ext_addr=o2, rows=8, tiles=T3, out_base=300, out_stride=T3 * L)
    pg(Op.HALT)
    r = pg.run(pes=P, latency=5 if stall else 3, stall=stall, max_cycles=50_000)
    assert r["halted"] and not r["error"], r["code"]
    np.testing.assert_array_equal(c_from_words(r["mem"], 7, T0, L, o0)[:, :10], matmul(A0, B0))
    np.testing.assert_array_equal(c_from_words(r["mem"], 8, T1, L, o1)[:, :6],
                                  matmul(A1, B2, matmul(A1, B1)))
    Y = requant(matmul(A1, B1, bias[None, :]), m, sh, -128, 127)
    np.testing.assert_array_equal(c_from_words(r["mem"], 8, T3, L, o2)[:, :5], matmul(Y, B3))


@pytest.mark.parametrize("P, L, M, K, N", [(3, 4, 10, 12, 9), (2, 8, 5, 3, 17)])
def test_array_cycles(P, L, M, K, N):
    """ARRAY_CYCLES of one MATMUL on an idle array: K cycles for its first tile, max(K, L) for
    each of the others, plus the pipeline until the last result is written
    (MAC_LATENCY + L + D_Y + 1); a second one right behind it adds its tiles, the first one
    after max(K + 1, L) (a one-cycle gap, or the drain spacing), the pipelines overlapping."""
    T = tiles(N, L)
    nt = -(-M // P) * T
    first = K + (nt - 1) * max(K, L)
    nxt = max(K + 1, L) + (nt - 1) * max(K, L)
    tail = PE.MAC_LATENCY + L + PE.D_Y + 1
    mm = dict(rows=M, k=K, tiles=T, count=N, a_base=0, a_stride=K, b_base=0, dst=Dst.CMEM,
              out_base=0, out_stride=T * L)
    for n in (1, 2):
        pg = Program(L)
        pg(Op.SYNC)
        for _ in range(n):
            pg(Op.MATMUL, **mm)
        pg(Op.HALT)
        r = pg.run(pes=P, max_cycles=20_000)
        assert r["halted"], r["code"]
        assert r["array_cycles"] == first + (n - 1) * nxt + tail, (n, r["array_cycles"])
        assert r["mac_cycles"] == n * -(-M // P) * T * K


@pytest.mark.parametrize("P, L, M, K, N, bias", [
    (2, 4, 23, 16, 19, True),
    pytest.param(3, 8, 40, 24, 40, False, marks=pytest.mark.slow)])
def test_overlapped_matmul_program(P, L, M, K, N, bias):
    """``matmul_program``'s overlapped program on the hardware: bit-exact, CYCLES and
    ARRAY_CYCLES as the cost model says, and well below the serial sum of its loads, stores
    and beats (the transfers really overlap compute)."""
    cfg = AccelConfig(pes=P, lanes=L, amem_depth=1024, cmem_depth=1024, bbuf_depth=512,
                      pbuf_depth=16, imem_depth=64, mem_latency=3)
    rng = np.random.default_rng(M)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    bv = rng.integers(-9999, 9999, N) if bias else None
    job = matmul_program(a, b, config=cfg, bias=bv)
    ops = [i["op"] for i in job.program.instrs]
    assert ops.count(Op.MATMUL) > 1 and ops.count(Op.STORE_C) > 1 and Op.SYNC not in ops
    c, res = run_job(job, AmaranthBackend(poll=16))
    np.testing.assert_array_equal(c, matmul(a, b, bv))
    model = CostModel(mem_latency=cfg.mem_latency).run(job.program, cfg)
    got = res.counters
    assert abs(got["CYCLES"] - model["CYCLES"]) <= 10, (got, model)
    assert abs(got["ARRAY_CYCLES"] - model["ARRAY_CYCLES"]) <= 4, (got, model)
    T = tiles(N, L)
    words = M * -(-K // L) + T * K + (7 * T if bias else 0) + M * T * 4
    assert got["CYCLES"] < got["MAC_CYCLES"] + 0.6 * words, (got, words)


def _load_c_behind(first_dst):
    P, L = 2, 4
    rng = np.random.default_rng(7)
    A1, B1 = rng.integers(-128, 128, (8, 64)), rng.integers(-128, 128, (64, 8))
    A2, B2 = rng.integers(-128, 128, (6, 8)), rng.integers(-128, 128, (8, 5))
    C0 = rng.integers(-2**20, 2**20, (6, 8))
    from tests.test_accelerator import _requant_params
    from tests.test_accelerator_ops import c_words
    m, sh = _requant_params(rng, 8, 2e-3, 4e-2)
    T1, T2 = tiles(8, L), tiles(5, L)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A1, L)), rows=8, k=64, a_base=0, a_stride=64)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A2, L)), rows=6, k=8, a_base=400, a_stride=8)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B1, L) + b_words(B2, L)), count=T1 * 64 + T2 * 8,
       b_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(np.zeros(8, np.int64), m, sh, L)), count=T1,
       p_base=0)
    pg(Op.MATMUL, rows=8, k=64, tiles=T1, count=8, a_base=0, a_stride=64, b_base=0, p_base=0,
       dst=first_dst, sat=Sat.INT8, out_base=600, out_stride=8)
    pg(Op.LOAD_C, ext_addr=pg.put(c_words(C0, L)), rows=6, tiles=T2, out_base=100,
       out_stride=T2 * L)
    pg(Op.MATMUL, rows=6, k=8, tiles=T2, count=5, a_base=400, a_stride=8, b_base=T1 * 64,
       dst=Dst.CMEM, out_base=100, out_stride=T2 * L, flags=Flag.ACCUM)
    out = pg.reserve(6 * T2 * 4)
    pg(Op.STORE_C, ext_addr=out, rows=6, tiles=T2, out_base=100, out_stride=T2 * L)
    pg(Op.HALT)
    r, _ = watch_run(pg, pes=P, watch=out, latency=3)
    np.testing.assert_array_equal(c_from_words(r["mem"], 6, T2, L, out)[:, :5],
                                  matmul(A2, B2, C0[:, :5]))
    cfg = AccelConfig(pes=P, lanes=L, mem_latency=3, **SMALL)
    model = CostModel(mem_latency=3).run(SwProgram([decode(i) for i in pg.prog]), cfg)
    assert abs(r["CYCLES"] - model["CYCLES"]) <= 12, (first_dst, r, model)
    return r["CYCLES"]


def test_load_c_behind_a_matmul():
    """A LOAD_C issued behind a long MATMUL: its words go into CMEM while that MATMUL runs if it
    writes AMEM, and only after it if it writes CMEM (the shared write port); an ACCUM MATMUL
    on the loaded rows is right either way, and CYCLES is what the cost model says."""
    behind_amem, behind_cmem = _load_c_behind(Dst.AMEM), _load_c_behind(Dst.CMEM)
    # the LOAD_C moves 6 rows · 2 tiles · 4 = 48 words
    assert behind_cmem - behind_amem >= 40, (behind_amem, behind_cmem)
