"""Rsqrt unit: ``R·2^(−22−p) ≈ 1/√v`` by an even normalization shift and a 768-entry table.

Golden model: :func:`sim.golden.rsqrt` (docs/numerics.md §11).
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sim.golden.rsqrt import RSQRT_LUT, V_BITS
from .pipeline import pipeline_control

__all__ = ["Rsqrt", "RsqrtOut"]

RsqrtOut = data.StructLayout({"r": unsigned(15), "p": signed(6)})


class Rsqrt(wiring.Component):
    """Fully pipelined reciprocal square root, one result per cycle.

    Ports
    -----
    i : In(stream.Signature(unsigned(48)))
        ``v`` (uint48); 0 is treated as 1.
    o : Out(stream.Signature(RsqrtOut))
        ``r``: the mantissa ``R`` (uint15), ``p``: the exponent (signed, −7…16), with
        ``R·2**(−22−p) ≈ 1/√max(v, 1)``.

    Latency is :attr:`LATENCY` = 5 cycles from an accepted input to its valid output;
    back-pressure on ``o`` stalls the whole pipeline.

    Normalization counts leading zero *bit pairs* ``z`` (0…23) so that the shift ``2z`` is even
    and ``p = 16 − z``: a left shift by 32, 16, 8, 4, 2 when the top 32, 16, 8, 4, 2 bits are
    zero (stages 1–4; each stage keeps only the bits later stages can still reach). The top ten
    bits of the normalized value are the table index ``i`` (256…1023). ``v = 0`` leaves
    ``i < 256``; it then reads entry 0 with ``p = −7``, exactly as ``v = 1``. The table read is
    stage 4 (its address register is the memory's), and stage 5 registers the table output: an
    ECP5 block RAM has a slow clock-to-out, so nothing else follows it in the same cycle.
    """
    LATENCY = 5

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(unsigned(V_BITS))),
            "o": Out(stream.Signature(RsqrtOut)),
        })

    def elaborate(self, platform):
        m = Module()
        ce = pipeline_control(m, self.i, self.o, self.LATENCY)

        m.submodules.lut = lut = Memory(shape=unsigned(15), depth=len(RSQRT_LUT),
                                        init=[int(x) for x in RSQRT_LUT])
        rd = lut.read_port(domain="sync")
        v = self.i.payload

        # x_k holds bits [lo, 48) of the value shifted so far: later shifts total at most
        # 2 + 4 + ... bits, so lower bits can never reach the 10-bit index.
        # Stage 1: shift by 32 if v[16:48] is zero; keep bits [8, 48).
        z32 = ~v[16:].any()
        s32, x1 = Signal(name="s32"), Signal(40, name="x1")
        with m.If(ce):
            m.d.sync += [s32.eq(z32), x1.eq(Mux(z32, Cat(Const(0, 24), v[:16]), v[8:]))]
        # Stage 2: shift by 16 if the top 16 bits are zero; keep bits [24, 48).
        # z2, z3 accumulate the shift decisions (leading zero bit pairs, MSB = shift by 32).
        z2, x2 = Signal(2, name="z2"), Signal(24, name="x2")
        z16 = ~x1[24:].any()
        with m.If(ce):
            m.d.sync += [z2.eq(Cat(z16, s32)), x2.eq(Mux(z16, x1[:24], x1[16:]))]
        # Stage 3: shifts by 8 and by 4; keep bits [36, 48).
        z3, x3 = Signal(4, name="z3"), Signal(12, name="x3")
        z8 = ~x2[16:].any()
        y = Mux(z8, x2[:16], x2[8:])
        z4 = ~y[12:].any()
        with m.If(ce):
            m.d.sync += [z3.eq(Cat(z4, z8, z2)), x3.eq(Mux(z4, y[:12], y[4:]))]
        # Stage 4: shift by 2, then the table read (address registered inside the memory).
        s2 = ~x3[10:].any()
        idx = Mux(s2, x3[:10], x3[2:])
        zero = ~idx[8:].any()                  # only for v = 0: no leading one anywhere
        # idx − 256 for idx in 256..1023: decrement of the top two bits (01, 10, 11 → 00, 01, 10).
        hi = Signal(2)
        m.d.comb += hi.eq(Mux(zero, 0, idx[8:] - 1))
        m.d.comb += [rd.addr.eq(Cat(idx[:8], hi)), rd.en.eq(ce)]
        z = Cat(s2, z3)                         # leading zero bit pairs, 0..23 (31 for v = 0)
        p4 = Signal(signed(6))
        with m.If(ce):
            m.d.sync += p4.eq(Mux(zero, -7, 16 - z))
        # Stage 5: register the table output next to p.
        with m.If(ce):
            m.d.sync += [self.o.payload.r.eq(rd.data), self.o.payload.p.eq(p4)]
        return m
