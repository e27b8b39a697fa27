# amaranth: UnusedElaboratable=no
"""hw.activation.Activation against sim.golden.activation: table error against float64,
exhaustive lookups with the GELU and elu+1 tables, run-time reload mid-stream, back-pressure."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.activation import Activation
from sim.golden import INT9, UINT8, activation, elu1, elu1_lut, gelu_lut, gelu_tanh
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import measure_latency, run_full_rate, run_stream_test

X_ALL = np.arange(-128, 128)
S_INS = (0.02, 0.05, 0.1, 0.5)


def gelu_table(s_in):
    # docs/numerics.md §12: s_out = max f / 255; over int8 inputs GELU peaks at x = 127·s_in.
    s_out = float(gelu_tanh(127 * s_in)) / 255
    return gelu_lut(s_in, s_out), s_out


def elu1_table(s_in):
    # Same rule for elu+1 (max at x = 127·s_in), so its table spans 0…255.
    s_out = float(elu1(127 * s_in)) / 255
    return elu1_lut(s_in, s_out), s_out


@pytest.mark.parametrize("s_in", S_INS)
@pytest.mark.parametrize("f,table,lo_hi", [(gelu_tanh, gelu_table, INT9), (elu1, elu1_table, UINT8)])
def test_golden_table_error(s_in, f, table, lo_hi):
    # Every entry is within ½ LSB of float64 f, except where it is clipped to the output range.
    lut, s_out = table(s_in)
    exact = f(X_ALL * s_in) / s_out
    lo, hi = lo_hi
    clipped = (exact < lo - 0.5) | (exact >= hi + 0.5)
    assert np.abs(lut - exact)[~clipped].max() <= 0.5
    np.testing.assert_array_equal(lut[clipped], np.where(exact[clipped] < lo, lo, hi))
    assert lut.min() >= lo and lut.max() <= hi and lut[-1] == 255
    if f is gelu_tanh:
        assert not clipped.any()          # GELU's minimum (−0.17) fits the int9 negative side


def _beats(x, lanes):
    return [x[k:k + lanes].tolist() for k in range(0, len(x), lanes)]


def _load_table(dut, table):
    async def setup(ctx):
        for addr, value in enumerate(table):
            ctx.set(dut.load.valid, 1)
            ctx.set(dut.load.payload, {"addr": addr, "data": int(value)})
            await ctx.tick()
        ctx.set(dut.load.valid, 0)
    return setup


@pytest.mark.parametrize("lanes", [1, 4])
def test_activation_exhaustive_gelu(lanes):
    lut, _ = gelu_table(0.05)
    rng = np.random.default_rng(lanes)
    x = np.concatenate([X_ALL, rng.permutation(X_ALL), X_ALL[::-1]])
    out = run_stream_test(Activation(lanes=lanes, init=lut), _beats(x, lanes), seed=lanes,
                          convert_out=lambda p: [int(v) for v in p])
    np.testing.assert_array_equal(np.concatenate(out), activation(x, lut))


def test_activation_exhaustive_elu1_loaded():
    # Configured with GELU, reloaded with elu+1 through the load port before streaming.
    gelu, _ = gelu_table(0.05)
    elu, _ = elu1_table(0.05)
    dut = Activation(lanes=4, init=gelu)
    x = np.concatenate([X_ALL, np.random.default_rng(9).permutation(X_ALL)])
    out = run_stream_test(dut, _beats(x, 4), seed=9, setup=_load_table(dut, elu),
                          convert_out=lambda p: [int(v) for v in p])
    np.testing.assert_array_equal(np.concatenate(out), activation(x, elu))


@pytest.mark.parametrize("write_rate", [0.1, 0.9])
def test_activation_reload_mid_stream(write_rate):
    # Cycle-exact model of the documented semantics: writes block lookups in their cycle, and a
    # beat accepted in cycle c reads the table as written by load beats of cycles < c. Random
    # writes, random input gaps and output stalls; every 300 cycles a whole-table swap
    # (GELU ↔ elu+1) runs under the stream.
    lanes = 4
    gelu, _ = gelu_table(0.05)
    elu, _ = elu1_table(0.05)
    dut = Activation(lanes=lanes, init=gelu)
    rng = random.Random(int(write_rate * 10))
    n_cycles = 3000
    table = [int(v) for v in gelu]
    expected, outputs = [], []
    state = {"done": False}

    async def driver(ctx):
        pending = None
        swap = []
        for cycle in range(n_cycles):
            if cycle % 300 == 0:
                swap = list(enumerate(elu if (cycle // 300) % 2 == 0 else gelu))
            if pending is None and rng.random() < 0.8:
                pending = [rng.randrange(-128, 128) for _ in range(lanes)]
            ctx.set(dut.i.valid, pending is not None)
            if pending is not None:
                ctx.set(dut.i.payload, pending)
            write = None
            if swap and rng.random() < 0.5:
                write = swap.pop(0)
            elif rng.random() < write_rate:
                write = (rng.randrange(256), rng.randrange(-256, 256))
            ctx.set(dut.load.valid, write is not None)
            if write is not None:
                ctx.set(dut.load.payload, {"addr": write[0], "data": int(write[1])})
            *_, ready = await ctx.tick().sample(dut.i.ready)
            if pending is not None and ready:
                assert write is None, "a lookup was accepted in a table-write cycle"
                expected.append([table[v + 128] for v in pending])
                pending = None
            if write is not None:
                table[write[0]] = int(write[1])
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.load.valid, 0)
        state["done"] = True

    async def consumer(ctx):
        while not state["done"] or len(outputs) < len(expected):
            ctx.set(dut.o.ready, rng.random() < 0.7)
            *_, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                outputs.append([int(v) for v in payload])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * (n_cycles * 3 + 100))
    assert state["done"] and len(expected) > 100
    assert outputs == expected


def test_activation_latency():
    dut = Activation(lanes=2, init=list(range(-128, 128)))
    latency, y = measure_latency(dut, [-128, 127])
    assert (latency, [int(v) for v in y]) == (Activation.LATENCY, [-128, 127])


def test_activation_bad_params():
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        Activation(lanes=0)
    with pytest.raises(TypeError, match="lanes must be an integer"):
        Activation(lanes=None)
    with pytest.raises(ValueError, match="256 entries"):
        Activation(init=[0] * 255)
    with pytest.raises(ValueError, match="int9"):
        Activation(init=[256] * 256)
    with pytest.raises(TypeError):
        Activation(init=[0.5] * 256)
    with pytest.raises(TypeError):
        Activation(4)
    dut = Activation(lanes=3, init=np.arange(-128, 128))
    assert dut.lanes == 3 and dut.init[0] == -128 and len(dut.init) == 256
    with pytest.raises(AttributeError):
        dut.lanes = 1


@pytest.mark.parametrize("lanes", [1, 4])
def test_activation_lint(lanes):
    name = f"activation_{lanes}"
    lint(emit(Activation(lanes=lanes, init=gelu_table(0.05)[0]), name), name)


@pytest.mark.parametrize("simulator", simulators())
def test_activation_cocotb(simulator):
    # Tables go in through the load port (the configured table is all zero): elu+1 first, then
    # GELU; each time all 256 inputs and 10^4 random ones.
    lanes = 4
    rng = np.random.default_rng(31)
    tables = np.stack([elu1_table(0.05)[0], gelu_table(0.05)[0]])
    x = np.stack([np.concatenate([X_ALL, rng.integers(-128, 128, 10_240)]) for _ in tables])
    y = np.stack([activation(xs, t) for xs, t in zip(x, tables)])
    run_cocotb(Activation(lanes=lanes), "activation", "tb.test_activation", simulator=simulator,
               vectors={"tables": tables, "x": x, "y": y, "lanes": np.array(lanes)})


def test_activation_throughput():
    # Without back-pressure or table writes, one beat per cycle.
    dut = Activation(lanes=4, init=list(range(-128, 128)))
    x = np.random.default_rng(5).integers(-128, 128, 4 * 300)
    beats = _beats(x, 4)
    accepted, outputs = run_full_rate(dut, beats, len(beats), lambda y: [int(v) for v in y])
    assert all(accepted)
    np.testing.assert_array_equal(np.concatenate(outputs), x)
