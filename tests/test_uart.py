# amaranth: UnusedElaboratable=no
"""hw.uart: the divisor rule, transmitter → receiver loopback with random back-pressure, exact
frame timing on the line, and the receiver's glitch, framing-error and overrun handling."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.uart import UartRx, UartTx, uart_divisor
from tb.runner import emit, lint

from .streams import Watchdog

CLK = 4_000_000


def _sim(dut, *benches, max_cycles, background=()):
    """Run ``benches`` (and ``background`` processes) until the benches are done; a watchdog
    fails the run after ``max_cycles``."""
    async def watchdog(ctx):
        await ctx.delay(max_cycles / CLK)
        raise Watchdog(f"testbenches not finished after {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(watchdog, background=True)
    for b in background:
        sim.add_testbench(b, background=True)
    for b in benches:
        sim.add_testbench(b)
    sim.run()


def test_divisor_rules():
    assert uart_divisor(4_000_000, 1_000_000) == 4
    assert uart_divisor(25_000_000, 115_200) == 217       # 0.01 % off
    assert uart_divisor(12_000_000, 115_200) == 104       # 0.16 % off
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(4_000_000, 2_000_000)
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(1_000_000, 115_200)                   # 9 cycles: 3.5 % off
    with pytest.raises(TypeError, match="baud"):
        UartRx(clk_hz=CLK, baud=1e6)
    with pytest.raises(ValueError, match="clk_hz"):
        UartTx(clk_hz=0, baud=9600)
    tx = UartTx(clk_hz=CLK, baud=500_000)
    assert (tx.divisor, tx.baud, tx.clk_hz) == (8, 500_000, CLK)


@pytest.mark.parametrize("baud", [1_000_000, 571_429, 400_000])   # divisors 4, 7, 10
def test_loopback_random_bytes(baud):
    m = Module()
    m.submodules.tx = tx = UartTx(clk_hz=CLK, baud=baud)
    m.submodules.rx = rx = UartRx(clk_hz=CLK, baud=baud)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(baud)
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(60)]
    got, errors = [], []

    async def send(ctx):
        for b in data:
            if rng.random() < 0.3:
                await ctx.tick().repeat(rng.randrange(1, 3 * tx.divisor))
            ctx.set(tx.i.payload, b)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)

    async def recv(ctx):
        # The receiver holds a byte until taken; taking it within a frame time loses nothing.
        rng_out = random.Random(baud + 1)
        while len(got) < len(data):
            ctx.set(rx.o.ready, rng_out.random() < 0.5)
            *_, payload, valid, ready, fe, ov = await ctx.tick().sample(
                rx.o.payload, rx.o.valid, rx.o.ready, rx.frame_error, rx.overrun)
            if valid and ready:
                got.append(payload)
            if fe or ov:
                errors.append((fe, ov))

    _sim(m, send, recv, max_cycles=12 * tx.divisor * len(data) + 1000)
    assert got == data and not errors


def test_tx_frame_timing_and_back_to_back():
    dut = UartTx(clk_hz=CLK, baud=1_000_000)
    line, taken = [], []

    async def feed(ctx):
        assert ctx.get(dut.tx) == 1 and ctx.get(dut.i.ready) == 1
        for b in (0x35, 0xC2):
            ctx.set(dut.i.payload, b)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def record(ctx):
        for cycle in range(100):
            *_, tx, valid, ready = await ctx.tick().sample(dut.tx, dut.i.valid, dut.i.ready)
            line.append(tx)
            if valid and ready:
                taken.append(cycle)

    _sim(dut, feed, record, max_cycles=200)

    def frame(b):
        return [0] * 4 + sum(([(b >> k) & 1] * 4 for k in range(8)), []) + [1] * 4
    # Each frame starts the cycle after its byte was taken and lasts exactly 10 bits of 4
    # cycles; the second byte is taken in the last cycle of the first stop bit.
    t0, t1 = taken
    assert line[:t0 + 1] == [1] * (t0 + 1)
    assert line[t0 + 1:t0 + 41] == frame(0x35)
    assert t1 == t0 + 40
    assert line[t1 + 1:t1 + 41] == frame(0xC2)
    assert set(line[t1 + 41:]) == {1}


async def _drive_line(ctx, rx, bits, div):
    for bit in bits:
        ctx.set(rx, bit)
        await ctx.tick().repeat(div)


def _frame(b, stop=1):
    return [0] + [(b >> k) & 1 for k in range(8)] + [stop]


def test_rx_glitch_framing_error_and_overrun():
    div = 8
    dut = UartRx(clk_hz=CLK, baud=CLK // div)
    events = []

    async def drive(ctx):
        ctx.set(dut.o.ready, 1)
        await ctx.tick().repeat(5)
        # A 2-cycle low glitch (shorter than half a bit) is not a start bit.
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * div)
        # A frame with a 0 stop bit: framing error, no byte; line low a while (break), then idle.
        await _drive_line(ctx, dut.rx, _frame(0x5A, stop=0) + [0] * 3, div)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * div)
        await _drive_line(ctx, dut.rx, _frame(0x81), div)
        # Overrun: two frames while nobody takes the first; the second is dropped.
        ctx.set(dut.o.ready, 0)
        await _drive_line(ctx, dut.rx, _frame(0x11) + _frame(0x22) + [1] * 2, div)
        await ctx.tick().repeat(2)
        ctx.set(dut.o.ready, 1)
        await ctx.tick().repeat(2)
        await _drive_line(ctx, dut.rx, _frame(0x33) + [1], div)

    async def watch(ctx):
        while True:
            *_, valid, ready, payload, fe, ov = await ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload, dut.frame_error, dut.overrun)
            if valid and ready:
                events.append(("byte", payload))
            if fe:
                events.append(("frame_error",))
            if ov:
                events.append(("overrun",))

    _sim(dut, drive, max_cycles=20 * 10 * div, background=[watch])
    assert events == [("frame_error",), ("byte", 0x81), ("overrun",), ("byte", 0x11), ("byte", 0x33)]


def test_uart_lint():
    lint(emit(UartRx(clk_hz=CLK, baud=115_200), "uart_rx"), "uart_rx")
    lint(emit(UartTx(clk_hz=CLK, baud=115_200), "uart_tx"), "uart_tx")
