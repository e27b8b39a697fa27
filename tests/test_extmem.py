# amaranth: UnusedElaboratable=no
"""hw.extmem: two initiators with random traffic and back-pressure through MemArbiter into a
BlockRamMemory (every read checked against a per-initiator model, responses in order), the
round-robin share under contention, stable requests while the target stalls, and argument
checks."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib.wiring import connect
from amaranth.sim import Simulator

from hw.extmem import BlockRamMemory, MemArbiter
from tb.runner import emit, lint

from .streams import Watchdog

L = 4
DEPTH = 64
MASK = (1 << 8 * L) - 1


def _system(init=()):
    m = Module()
    m.submodules.arb = arb = MemArbiter(lanes=L, initiators=2, max_reads=4)
    m.submodules.mem = mem = BlockRamMemory(lanes=L, depth=DEPTH, init=init)
    connect(m, arb.target, mem.bus)
    return m, arb, mem


def _run(m, benches, background, max_cycles):
    async def watchdog(ctx):
        await ctx.delay(max_cycles * 1e-6)
        raise Watchdog(f"not finished after {max_cycles} cycles")

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(watchdog, background=True)
    for b in background:
        sim.add_testbench(b, background=True)
    for b in benches:
        sim.add_testbench(b)
    sim.run()


def test_two_initiators_random_traffic():
    init = [random.Random(5).getrandbits(8 * L) for _ in range(DEPTH)]
    m, arb, mem = _system(init)
    n_ops = 300
    # Initiator k owns words k·32 … k·32+31: its model predicts every read exactly.
    models = [{a: init[a] for a in range(k * 32, k * 32 + 32)} for k in range(2)]
    expected = [[], []]
    got = [[], []]
    held = []

    def issuer(k):
        rng = random.Random(10 + k)

        async def bench(ctx):
            port = arb.initiators[k].cmd
            for _ in range(n_ops):
                while rng.random() < 0.3:
                    await ctx.tick()
                addr = k * 32 + rng.randrange(32)
                we = rng.random() < 0.4
                data = rng.getrandbits(8 * L)
                mask = rng.randrange(1, 1 << L)
                ctx.set(port.payload, {"addr": addr, "we": we, "data": data, "mask": mask})
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
                if we:
                    old = models[k][addr]
                    for b in range(L):
                        if mask >> b & 1:
                            old = (old & ~(0xFF << 8 * b)) | (data & (0xFF << 8 * b))
                    models[k][addr] = old & MASK
                else:
                    expected[k].append(models[k][addr])
        return bench

    def consumer(k):
        rng = random.Random(20 + k)

        async def bench(ctx):
            port = arb.initiators[k].rsp
            while True:
                ctx.set(port.ready, rng.random() < 0.6)
                *_, valid, ready, data = await ctx.tick().sample(port.valid, port.ready, port.payload.data)
                if valid and ready:
                    got[k].append(data)
        return bench

    async def stable_requests(ctx):
        # A request offered to the memory and not taken is offered again, unchanged.
        prev = None
        while True:
            *_, valid, ready, payload = await ctx.tick().sample(
                arb.target.cmd.valid, arb.target.cmd.ready, arb.target.cmd.payload.as_value())
            if prev is not None:
                held.append(valid and payload == prev)
            prev = payload if valid and not ready else None

    done = []

    def wrap(bench):
        async def run(ctx):
            await bench(ctx)
            done.append(1)
        return run

    async def all_done(ctx):
        while len(done) < 2:
            await ctx.tick()
        while len(got[0]) < len(expected[0]) or len(got[1]) < len(expected[1]):
            await ctx.tick()
        await ctx.tick().repeat(10)

    _run(m, [wrap(issuer(0)), wrap(issuer(1)), all_done],
         [consumer(0), consumer(1), stable_requests], max_cycles=20 * n_ops)
    for k in range(2):
        assert len(expected[k]) > 100
        assert got[k] == expected[k], f"initiator {k}"
    assert held and all(held)


def test_round_robin_share():
    m, arb, mem = _system()
    grants = []

    async def bench(ctx):
        for k in range(2):
            ctx.set(arb.initiators[k].rsp.ready, 1)
            ctx.set(arb.initiators[k].cmd.payload, {"addr": k, "we": 0})
            ctx.set(arb.initiators[k].cmd.valid, 1)
        for _ in range(40):
            *_, r0, r1 = await ctx.tick().sample(arb.initiators[0].cmd.ready, arb.initiators[1].cmd.ready)
            grants.append((r0, r1))

    _run(m, [bench], [], max_cycles=100)
    # Both always asking: one request per cycle, alternating.
    assert all(r0 + r1 == 1 for r0, r1 in grants)
    assert all(grants[i] != grants[i + 1] for i in range(len(grants) - 1))


def test_block_ram_latency_and_throughput():
    """A read is answered three cycles after it was taken (the request register, the RAM);
    with rsp.ready high the memory takes a request every cycle, and a read right after a write
    of the same word returns the new data."""
    init = [random.Random(9).getrandbits(8 * L) for _ in range(DEPTH)]
    mem = BlockRamMemory(lanes=L, depth=DEPTH, init=init)
    taken, answered = [], []

    async def bench(ctx):
        cmd, rsp = mem.bus.cmd, mem.bus.rsp
        ctx.set(rsp.ready, 1)
        ops = [(1, 5, 0x1234), (0, 5, None)] + [(0, a, None) for a in range(20)]
        cycle = 0
        for we, addr, data in ops:
            ctx.set(cmd.payload, {"addr": addr, "we": we, "data": data or 0, "mask": MASK})
            ctx.set(cmd.valid, 1)
            while True:
                _, _, ready, rv, rd = await ctx.tick().sample(cmd.ready, rsp.valid,
                                                              rsp.payload.data)
                cycle += 1
                if rv:
                    answered.append((cycle - 1, rd))
                if ready:
                    if not we:
                        taken.append((cycle - 1, addr))
                    break
        ctx.set(cmd.valid, 0)
        for _ in range(8):
            _, _, rv, rd = await ctx.tick().sample(rsp.valid, rsp.payload.data)
            cycle += 1
            if rv:
                answered.append((cycle - 1, rd))

    _run(mem, [bench], [], max_cycles=200)
    model = list(init)
    model[5] = 0x1234
    assert [d for _, d in answered] == [model[a] for _, a in taken]
    assert [t for t, _ in answered] == [t + 3 for t, _ in taken]
    # one request per cycle: the 21 reads were taken in consecutive cycles
    assert [t for t, _ in taken] == list(range(taken[0][0], taken[0][0] + len(taken)))


def test_arguments():
    with pytest.raises(ValueError, match="lanes"):
        MemArbiter(lanes=6)
    with pytest.raises(ValueError, match="initiators"):
        MemArbiter(lanes=4, initiators=1)
    with pytest.raises(ValueError, match="max_reads"):
        MemArbiter(lanes=4, max_reads=6)
    with pytest.raises(ValueError, match="depth"):
        BlockRamMemory(lanes=4, depth=100)
    with pytest.raises(ValueError, match="init"):
        BlockRamMemory(lanes=4, depth=16, init=[0] * 17)
    arb = MemArbiter(lanes=8, initiators=3, max_reads=16)
    assert (arb.lanes, arb.n_initiators, arb.max_reads) == (8, 3, 16)


def test_extmem_lint():
    lint(emit(MemArbiter(lanes=4, initiators=3), "mem_arbiter"), "mem_arbiter")
    lint(emit(BlockRamMemory(lanes=16, depth=1024), "bram_memory"), "bram_memory")


def test_spram_variant_on_ice40_up():
    from amaranth.back import rtlil
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    up5k = ICEBreakerPlatform()
    mem = BlockRamMemory(lanes=4, depth=32768)
    assert mem.uses_spram(up5k) and not mem.uses_spram(None)
    assert rtlil.convert(mem, platform=up5k).count("SB_SPRAM256KA") == 4
    assert not BlockRamMemory(lanes=16, depth=4096).uses_spram(up5k)          # too wide
    assert not BlockRamMemory(lanes=8, depth=32768).uses_spram(up5k)          # too deep
    assert not BlockRamMemory(lanes=4, depth=64, init=[1]).uses_spram(up5k)   # SPRAM has no init


@pytest.mark.slow  # ≈ 10 s warm: yosys + nextpnr-ice40
def test_spram_variant_places():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from hw.synth import synthesize
    r = synthesize(BlockRamMemory(lanes=4, depth=32768), name="spram_mem_test", family="ice40",
                   platform=ICEBreakerPlatform(), freq_mhz=12)
    assert r["cells"].get("SB_SPRAM256KA") == 4 and r["utilization"]["ICESTORM_SPRAM"] == 4
    assert r["fmax_mhz"] > 12 and r["luts"] < 200
