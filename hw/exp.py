"""Exp unit: ``e = round(2^15 · 2^(−u/256))`` by a 256-entry table and a rounding shift.

Golden model: :func:`sim.golden.exp` (docs/numerics.md §7).
"""
from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sim.golden.exp import EXP_LUT
from .pipeline import pipeline_control

__all__ = ["Exp"]


class Exp(wiring.Component):
    """Fully pipelined exp unit, one result per cycle.

    Ports
    -----
    i : In(stream.Signature(unsigned(16)))
        ``u``, the negative base-2 exponent in Q8.8.
    o : Out(stream.Signature(unsigned(16)))
        ``e`` in Q1.15 (0…32768).

    Latency is :attr:`LATENCY` cycles from an accepted input to its valid output; back-pressure
    on ``o`` stalls the whole pipeline.
    """
    LATENCY = 3

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(unsigned(16))),
            "o": Out(stream.Signature(unsigned(16))),
        })

    def elaborate(self, platform):
        m = Module()
        ce = pipeline_control(m, self.i, self.o, self.LATENCY)

        m.submodules.lut = lut = Memory(shape=unsigned(16), depth=256, init=[int(x) for x in EXP_LUT])
        rd = lut.read_port(domain="sync")
        n1, n2 = Signal(4), Signal(4)
        zero1, zero2 = Signal(), Signal()
        lut2 = Signal(16)
        half = Signal(16)
        m.d.comb += [
            rd.addr.eq(self.i.payload[:8]),
            rd.en.eq(ce),
            half.eq((1 << n2) >> 1),
        ]
        with m.If(ce):
            # Stage 1: table read (in the memory's read register) beside the integer part.
            m.d.sync += [n1.eq(self.i.payload[8:12]), zero1.eq(self.i.payload[12:] != 0)]
            # Stage 2: a plain register after the block RAM, whose clock-to-output is ~6 ns on ECP5.
            m.d.sync += [lut2.eq(rd.data), n2.eq(n1), zero2.eq(zero1)]
            # Stage 3: rounding right shift by n; a shift of 16 or more gives 0.
            m.d.sync += self.o.payload.eq(Mux(zero2, 0, (lut2 + half) >> n2))
        return m
