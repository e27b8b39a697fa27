"""8N1 UART receiver and transmitter with byte streams (the board's host link, docs/board.md).

Both take the clock frequency and the baud rate and count ``divisor = round(clk_hz / baud)``
clock cycles per bit; the constructors refuse rates the divisor cannot hit within 2 % (a
receiver samples each bit at its middle, so the accumulated error over the ten bits of a frame
must stay well under half a bit).
"""
import enum

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .params import check_int
from .pe import is_zero

__all__ = ["UartRx", "UartTx", "uart_divisor", "MIN_DIVISOR", "MAX_RATE_ERROR"]

#: Fewest clock cycles per bit: the receiver needs a middle distinct from both edges.
MIN_DIVISOR = 4
#: Largest accepted relative difference between the requested and the generated baud rate.
MAX_RATE_ERROR = 0.02


def uart_divisor(clk_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clk_hz``; ``ValueError`` if not reachable."""
    check_int("clk_hz", clk_hz, lo=1)
    check_int("baud", baud, lo=1)
    div = max(1, round(clk_hz / baud))
    if div < MIN_DIVISOR:
        raise ValueError(f"baud {baud} is too fast for a {clk_hz} Hz clock: a bit needs at least "
                         f"{MIN_DIVISOR} clock cycles, not {clk_hz / baud:.2f}")
    err = abs(clk_hz / div - baud) / baud
    if err > MAX_RATE_ERROR:
        raise ValueError(f"baud {baud} at {clk_hz} Hz is off by {100 * err:.1f} % (divisor {div}); "
                         f"at most {100 * MAX_RATE_ERROR:.0f} % is accepted")
    return div


class _Uart(wiring.Component):
    def __init__(self, members, *, clk_hz, baud):
        self._divisor = uart_divisor(clk_hz, baud)
        self._clk_hz, self._baud = clk_hz, baud
        super().__init__(members)

    clk_hz = property(lambda self: self._clk_hz, doc="Clock frequency in Hz.")
    baud = property(lambda self: self._baud, doc="Requested bit rate.")
    divisor = property(lambda self: self._divisor, doc="Clock cycles per bit.")


class _RxState(enum.IntEnum):
    IDLE = 0
    BIT = 1
    BREAK = 2


class UartRx(_Uart):
    """8N1 receiver: start bit, 8 data bits LSB first, one stop bit.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    clk_hz : int
        Frequency of the ``sync`` clock.
    baud : int
        Bit rate; ``divisor`` = round(clk_hz / baud) ≥ 4 within 2 %.

    Ports
    -----
    rx : In(1, init=1)
        The serial line (idle high); synchronized inside (two flip-flops).
    o : Out(stream.Signature(8))
        Received bytes. A byte is offered until taken; a byte completed while the previous one
        is still offered is dropped (``overrun``).
    frame_error : Out(1)
        One-cycle pulse: a stop bit read 0 (the receiver then waits for the line to go idle).
    overrun : Out(1)
        One-cycle pulse: a byte was dropped because ``o`` was not ready.

    Each bit is sampled once, ``divisor/2`` cycles after the start edge was seen and then every
    ``divisor`` cycles; a start bit that is high again at its middle is ignored (a glitch).
    """

    def __init__(self, *, clk_hz, baud):
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "frame_error": Out(1),
            "overrun": Out(1),
        }, clk_hz=clk_hz, baud=baud)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        meta = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [meta.eq(self.rx), line.eq(meta)]

        cnt = Signal(range(div))
        bit = Signal(range(10))          # 0 start, 1…8 data, 9 stop
        shreg = Signal(8)
        state = Signal(_RxState)
        m.d.sync += [self.frame_error.eq(0), self.overrun.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # If/Elif rather than m.FSM / m.Switch: no incomplete case statements (Verilator lint).
        with m.If(is_zero(state)):       # IDLE
            with m.If(~line):
                m.d.sync += [cnt.eq(div // 2 - 1), bit.eq(0), state.eq(_RxState.BIT)]
        with m.Elif(state == _RxState.BIT):
            with m.If(cnt.any()):
                m.d.sync += cnt.eq(cnt - 1)
            with m.Else():
                m.d.sync += [cnt.eq(div - 1), bit.eq(bit + 1)]
                with m.If(is_zero(bit)):
                    with m.If(line):
                        m.d.sync += state.eq(_RxState.IDLE)     # a glitch, not a start bit
                with m.Elif(bit != 9):
                    m.d.sync += shreg.eq(Cat(shreg[1:], line))
                with m.Elif(line):
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                    m.d.sync += state.eq(_RxState.IDLE)
                with m.Else():
                    m.d.sync += [self.frame_error.eq(1), state.eq(_RxState.BREAK)]
        with m.Else():                   # BREAK: after a bad stop bit, wait for an idle line
            with m.If(line):
                m.d.sync += state.eq(_RxState.IDLE)
        return m


class UartTx(_Uart):
    """8N1 transmitter.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    clk_hz : int
        Frequency of the ``sync`` clock.
    baud : int
        Bit rate; ``divisor`` = round(clk_hz / baud) ≥ 4 within 2 %.

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes to send; ``ready`` is high while the transmitter is idle and in the last cycle of
        a stop bit: a byte taken goes out from the next cycle, so consecutive bytes follow each
        other with no idle time (10 bits per byte).
    tx : Out(1, init=1)
        The serial line, driven from a register (idle high).
    """

    def __init__(self, *, clk_hz, baud):
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        }, clk_hz=clk_hz, baud=baud)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        cnt = Signal(range(div))
        left = Signal(range(11))         # bits still to put on the line, this one included
        frame = Signal(10, init=(1 << 10) - 1)
        m.d.comb += self.tx.eq(frame[0])
        # Ready in the last cycle of a stop bit too: back-to-back frames without an idle cycle.
        m.d.comb += self.i.ready.eq(is_zero(left) | ((left == 1) & is_zero(cnt)))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [frame.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                         left.eq(10), cnt.eq(div - 1)]
        with m.Elif(left.any()):
            with m.If(cnt.any()):
                m.d.sync += cnt.eq(cnt - 1)
            with m.Else():
                m.d.sync += [frame.eq(Cat(frame[1:], Const(1, 1))), left.eq(left - 1),
                             cnt.eq(div - 1)]
        return m
