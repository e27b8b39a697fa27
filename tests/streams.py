"""Amaranth-simulator helpers: stream put/get with seeded random back-pressure, a watchdog.

Used by every unit test (``async`` testbenches, ``ctx.set/get/tick``).
"""
import random

from amaranth.sim import Simulator

__all__ = ["stream_put", "stream_get", "run_stream_test", "Watchdog"]


async def stream_put(ctx, stream, payload):
    """Offer one payload on ``stream`` and wait until it is accepted."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Accept one payload from ``stream``."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


class Watchdog(Exception):
    """A simulation ran past its cycle budget: the design is hung or too slow."""


def run_stream_test(dut, inputs, *, convert_in=None, convert_out=None, n_out=None, seed=0,
                    stall=0.3, max_cycles=None, vcd=None, setup=None):
    """Feed ``inputs`` into ``dut.i``, collect ``n_out`` results from ``dut.o``.

    ``stall`` is the probability of an idle cycle on each side (random valid gaps on the input,
    random ready drops on the output), drawn from ``random.Random(seed)``. ``setup(ctx)`` may set
    control inputs before streaming. The run fails with :class:`Watchdog` after ``max_cycles``
    (default: 20 cycles per item + 200).
    """
    inputs = list(inputs)
    n_out = len(inputs) if n_out is None else n_out
    max_cycles = max_cycles or 20 * max(len(inputs), n_out) + 200
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    outputs = []
    state = {"done": False}

    async def producer(ctx):
        if setup is not None:
            await setup(ctx)
        for x in inputs:
            while rng_in.random() < stall:
                await ctx.tick()
            await stream_put(ctx, dut.i, convert_in(x) if convert_in else x)

    async def consumer(ctx):
        while len(outputs) < n_out:
            while rng_out.random() < stall:
                await ctx.tick()
            y = await stream_get(ctx, dut.o)
            outputs.append(convert_out(y) if convert_out else y)
        state["done"] = True

    async def watchdog(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
            if state["done"]:
                return
        raise Watchdog(f"no completion within {max_cycles} cycles "
                       f"({len(outputs)}/{n_out} outputs received)")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.add_testbench(watchdog)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return outputs


def run_full_rate(dut, beats, n_out, convert_out=None):
    """Offer one beat per cycle with ``o.ready`` held high; return ``(accepted, outputs)``.

    ``accepted[k]`` says whether beat k was taken on its cycle: a unit that keeps up with one beat
    per cycle accepts every one. Outputs are the payloads seen with ``o.valid`` high.
    """
    accepted, outputs = [], []

    async def producer(ctx):
        ctx.set(dut.i.valid, 1)
        for beat in beats:
            ctx.set(dut.i.payload, beat)
            *_, ready = await ctx.tick().sample(dut.i.ready)
            accepted.append(bool(ready))
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        while len(outputs) < n_out:
            *_, valid, y = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                outputs.append(convert_out(y) if convert_out else y)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return accepted, outputs


def measure_latency(dut, payload, max_cycles=64):
    """Send one beat into an idle ``dut``; return ``(cycles until o.valid, o.payload)``."""
    seen = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, payload)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, max_cycles):
            if ctx.get(dut.o.valid):
                seen["out"] = cycle, ctx.get(dut.o.payload)
                return
            await ctx.tick()
        raise Watchdog(f"no output within {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen["out"]
