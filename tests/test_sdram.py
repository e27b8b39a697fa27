# amaranth: UnusedElaboratable=no
"""hw.sdram.SdramController against the behavioural SDRAM of tb/sdram_model.py (every timing
rule checked on every edge): random reads and writes with random byte masks, random gaps and
random ``rsp.ready`` back-pressure, checked against a reference memory, over a small geometry so
that row misses, bank switches and refreshes are frequent; the streaming rate of row hits; the
model's own rule checks; argument errors; Verilator lint."""
import random

import pytest
from amaranth.sim import Simulator

from hw.sdram import Cmd, SdramController
from tb.runner import emit, lint
from tb.sdram_model import SdramModel, SdramViolation

from .streams import Watchdog

FAST = dict(init_us=1.0, timing={"tREFI": 700.0})       # 100 MHz: refresh every 70 cycles


def _ctrl(lanes=4, clk_hz=100_000_000, cas_latency=2, rows=16, cols=16, **kw):
    return SdramController(lanes=lanes, clk_hz=clk_hz, cas_latency=cas_latency, rows=rows,
                           cols=cols, **{**FAST, **kw})


def _simulate(ctrl, bench, *, max_cycles, extra=()):
    model = SdramModel(ctrl)

    async def watchdog(ctx):
        await ctx.delay(max_cycles * 1e-8)
        raise Watchdog(f"not finished after {max_cycles} cycles")

    sim = Simulator(ctrl)
    sim.add_clock(1e-8)
    sim.add_testbench(model.process, background=True)
    sim.add_testbench(watchdog, background=True)
    for b in extra:
        sim.add_testbench(b, background=True)
    sim.add_testbench(bench)
    sim.run()
    return model


# tREFI shortened (but for the 4 MHz board simulation clock: 31 cycles) to refresh often.
@pytest.mark.parametrize("lanes, cas_latency, clk_hz, trefi, seed", [
    (4, 2, 100_000_000, 700, 1), (16, 3, 100_000_000, 1000, 2), (8, 2, 25_000_000, 2000, 3),
    (32, 2, 25_000_000, 2000, 6), (4, 3, 4_000_000, 7812.5, 4), (16, 2, 4_000_000, 7812.5, 5)])
def test_random_traffic_against_reference(lanes, cas_latency, clk_hz, trefi, seed):
    timing = {"tREFI": trefi}
    ctrl = _ctrl(lanes, clk_hz, cas_latency, timing=timing)
    depth = ctrl.depth
    rng = random.Random(seed)
    ref = {}
    expected, got = [], []
    n_ops = 250
    full = (1 << 8 * lanes) - 1
    # Addresses from a few rows of every bank (hits, misses, bank switches) plus random ones.
    hot = [rng.randrange(depth) for _ in range(12)]

    async def bench(ctx):
        cmd = ctrl.bus.cmd
        for _ in range(n_ops):
            while rng.random() < 0.3:
                await ctx.tick()
            addr = rng.choice(hot) + rng.randrange(4) if rng.random() < 0.7 else rng.randrange(depth)
            addr %= depth
            we = rng.random() < 0.45
            data = rng.getrandbits(8 * lanes)
            mask = rng.choice([(1 << lanes) - 1, rng.randrange(1 << lanes)])
            if rng.random() < 0.05:
                addr += depth                       # addresses wrap at the chip size
            ctx.set(cmd.payload, {"addr": addr, "we": we, "data": data, "mask": mask})
            ctx.set(cmd.valid, 1)
            await ctx.tick().until(cmd.ready)
            ctx.set(cmd.valid, 0)
            a = addr % depth
            if we:
                old = ref.get(a, 0)
                for b in range(lanes):
                    if mask >> b & 1:
                        old = (old & ~(0xFF << 8 * b)) | (data & (0xFF << 8 * b))
                ref[a] = old & full
            else:
                expected.append((a, ref.get(a, 0)))
        while len(got) < len(expected):
            await ctx.tick()
        await ctx.tick().repeat(100)              # the last write leaves the controller

    async def reader(ctx):
        rsp = ctrl.bus.rsp
        r = random.Random(seed + 100)
        while True:
            ready = r.random() < 0.6
            ctx.set(rsp.ready, ready)
            _, _, valid, data = await ctx.tick().sample(rsp.valid, rsp.payload.data)
            if ready and valid:
                got.append(data)

    model = _simulate(ctrl, bench, max_cycles=60_000, extra=[reader])
    assert len(got) == len(expected) > 50
    for n, ((a, want), g) in enumerate(zip(expected, got)):
        assert g == want, f"read {n} of word {a}: got {g:#x}, expected {want:#x}"
    assert model.words(0, depth) == [ref.get(a, 0) for a in range(depth)]
    s = model.stats
    assert s["PRECHARGE"] > 10 and s["ACTIVE"] > 10 and model.refreshes > 3
    assert model.cl == cas_latency


def test_row_hits_stream_at_one_word_per_burst():
    """64 sequential words written, then read with rsp.ready high: L/2 cycles per word while
    the rows are open (plus the row changes and refreshes)."""
    lanes, n = 16, 64
    ctrl = _ctrl(lanes, rows=16, cols=512, timing={"tREFI": 7812.5})
    t = {}
    got = []

    async def bench(ctx):
        cmd, rsp = ctrl.bus.cmd, ctrl.bus.rsp
        await ctx.tick().until(ctrl.ready)
        ctx.set(rsp.ready, 1)
        for phase, we in (("write", 1), ("read", 0)):
            t0 = 0
            for a in range(n):
                ctx.set(cmd.payload, {"addr": a, "we": we, "data": a * 0x0101 + 7, "mask": 0xFFFF})
                ctx.set(cmd.valid, 1)
                await ctx.tick().until(cmd.ready)
                t0 += 0
            ctx.set(cmd.valid, 0)
            t[phase] = ctx.get(cycles)
        while len(got) < n:
            await ctx.tick()

    cycles_seen = {"n": 0}

    async def counter(ctx):
        async for _ in ctx.tick():
            cycles_seen["n"] += 1

    async def collect(ctx):
        rsp = ctrl.bus.rsp
        async for _, _, valid, ready, data in ctx.tick().sample(rsp.valid, rsp.ready, rsp.payload.data):
            if valid and ready:
                got.append(data)

    from amaranth.hdl import Module, Signal
    m = Module()
    m.submodules.ctrl = ctrl
    cycles = Signal(32)
    m.d.sync += cycles.eq(cycles + 1)
    model = SdramModel(ctrl)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(model.process, background=True)
    sim.add_testbench(collect, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert got == [a * 0x0101 + 7 for a in range(n)]
    per_word = (t["read"] - t["write"]) / n
    assert per_word <= lanes // 2 + 0.5, per_word        # 8 beats per 16-byte word


def _model(**kw):
    ctrl = _ctrl(**kw)
    return ctrl, SdramModel(ctrl)


def _cmd(model, c, ba=0, a=0, *, dqm=0, dq=0, oe=0):
    return model.step(1, *c, ba, a, dqm, dq, oe, 1)


def _init(ctrl, model):
    for _ in range(ctrl.init_cycles):
        _cmd(model, Cmd.NOP)
    t = ctrl.timing_cycles
    seq = [(Cmd.PRECHARGE, 1 << 10, t["tRP"])] + [(Cmd.REFRESH, 0, t["tRFC"])] * ctrl.init_refresh \
        + [(Cmd.MODE, ctrl.mode_register, t["tMRD"])]
    for c, a, wait in seq:
        _cmd(model, c, a=a)
        for _ in range(wait - 1):
            _cmd(model, Cmd.NOP)


def test_model_rules():
    ctrl, model = _model()
    t = ctrl.timing_cycles
    with pytest.raises(SdramViolation, match="power-up pause"):
        _cmd(model, Cmd.PRECHARGE, a=1 << 10)
    ctrl, model = _model()
    for _ in range(ctrl.init_cycles):
        _cmd(model, Cmd.NOP)
    with pytest.raises(SdramViolation, match="before the initialization"):
        _cmd(model, Cmd.ACTIVE)
    ctrl, model = _model()
    _init(ctrl, model)
    with pytest.raises(SdramViolation, match="no open row"):
        _cmd(model, Cmd.READ, ba=1)
    ctrl, model = _model()
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=2, a=3)
    with pytest.raises(SdramViolation, match="tRCD"):
        _cmd(model, Cmd.READ, ba=2)
    ctrl, model = _model()
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=2, a=3)
    with pytest.raises(SdramViolation, match="tRAS"):
        _cmd(model, Cmd.PRECHARGE, ba=2)
    ctrl, model = _model()
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=0, a=1)
    with pytest.raises(SdramViolation, match="already|open"):
        for _ in range(t["tRC"]):
            _cmd(model, Cmd.NOP)
        _cmd(model, Cmd.ACTIVE, ba=0, a=2)
    ctrl, model = _model()
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=0, a=1)
    for _ in range(t["tRCD"] - 1):
        _cmd(model, Cmd.NOP)
    _cmd(model, Cmd.WRITE, ba=0, a=4, dq=0xBEEF, oe=1)
    with pytest.raises(SdramViolation, match="tWR|tRAS"):
        _cmd(model, Cmd.PRECHARGE, ba=0)
    ctrl, model = _model()
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=0, a=1)
    for _ in range(t["tRCD"] - 1):
        _cmd(model, Cmd.NOP)
    _cmd(model, Cmd.READ, ba=0, a=4)
    _cmd(model, Cmd.NOP)
    with pytest.raises(SdramViolation, match="contention"):
        _cmd(model, Cmd.WRITE, ba=0, a=5, dq=1, oe=1)          # read data due at this edge
    ctrl, model = _model(cas_latency=3)
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=0, a=1)
    for _ in range(t["tRCD"] - 1):
        _cmd(model, Cmd.NOP)
    _cmd(model, Cmd.READ, ba=0, a=4)
    with pytest.raises(SdramViolation, match="truncate"):
        _cmd(model, Cmd.WRITE, ba=0, a=5, dq=1, oe=1)          # the READ's data not out yet
    ctrl, model = _model()
    _init(ctrl, model)
    with pytest.raises(SdramViolation, match="refresh fell behind"):
        for _ in range(3 * ctrl.refresh_interval):
            _cmd(model, Cmd.NOP)
    ctrl, model = _model()
    for _ in range(ctrl.init_cycles):
        _cmd(model, Cmd.NOP)
    _cmd(model, Cmd.PRECHARGE, a=1 << 10)
    for _ in range(t["tRP"]):
        _cmd(model, Cmd.NOP)
    with pytest.raises(SdramViolation, match="initial AUTO REFRESH"):
        _cmd(model, Cmd.MODE, a=ctrl.mode_register)
    ctrl, model = _model()
    with pytest.raises(SdramViolation, match="CKE"):
        model.step(1, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def test_model_reads_back_what_was_written():
    ctrl, model = _model(cas_latency=3)
    t = ctrl.timing_cycles
    _init(ctrl, model)
    _cmd(model, Cmd.ACTIVE, ba=1, a=5)
    for _ in range(t["tRCD"] - 1):
        _cmd(model, Cmd.NOP)
    _cmd(model, Cmd.WRITE, ba=1, a=3, dq=0x1234, oe=1)
    _cmd(model, Cmd.WRITE, ba=1, a=3, dq=0xAB00, oe=1, dqm=1)    # high byte only
    outs = [_cmd(model, Cmd.READ, ba=1, a=3)] + [_cmd(model, Cmd.NOP) for _ in range(3)]
    assert outs == [None, 0xAB34, None, None]     # driven after edge READ + CL − 2


def test_arguments():
    for kw, msg in [(dict(lanes=6), "lanes"), (dict(cas_latency=1), "cas_latency"),
                    (dict(rows=100), "rows"), (dict(cols=2048), "cols"),
                    (dict(timing={"tXYZ": 1}), "unknown timing"), (dict(init_us=-1), "init_us"),
                    (dict(timing={"tREFI": 50.0}), "tREFI")]:
        with pytest.raises(ValueError, match=msg):
            _ctrl(**kw)
    c = SdramController(lanes=16, clk_hz=25_000_000)
    assert c.depth == (1 << 25) // 16 and c.refresh_interval == 195 and c.init_cycles == 5000
    assert c.timing_cycles["tRCD"] == 1 and c.timing_cycles["tRAS"] == 2
    assert c.split(1) == (0, 0, 8) and c.split(64) == (1, 0, 0) and c.split(256) == (0, 1, 0)


def test_lint():
    lint(emit(SdramController(lanes=16, clk_hz=25_000_000), "sdram_ctrl"), "sdram_ctrl")
