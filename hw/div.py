"""Divide unit: ``floor(n / d)`` by a restoring radix-2 divider, one quotient bit per stage.

Golden model: :func:`sim.golden.divide` (docs/numerics.md §8).
"""
from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.golden.divide import D_BITS, N_BITS
from .pipeline import pipeline_control

__all__ = ["Divide", "DivideIn", "DivideOut"]

DivideIn = data.StructLayout({"n": unsigned(N_BITS), "d": unsigned(D_BITS)})
DivideOut = data.StructLayout({"q": unsigned(N_BITS), "div_by_zero": unsigned(1)})


class Divide(wiring.Component):
    """Fully pipelined restoring divider, one result per cycle.

    Ports
    -----
    i : In(stream.Signature(DivideIn))
        ``n`` (uint33) and ``d`` (uint32).
    o : Out(stream.Signature(DivideOut))
        ``q = floor(n / d)`` (uint33) and ``div_by_zero``. A zero divisor gives
        ``q = 2**33 − 1`` (every trial subtraction of 0 succeeds) and sets ``div_by_zero``.

    Latency is :attr:`LATENCY` = 33 cycles (one stage per quotient bit, MSB first) from an
    accepted input to its valid output; back-pressure on ``o`` stalls the whole pipeline.

    Stage ``j`` forms the trial remainder ``t = 2·r + n[32−j]``; ``t < 2**(j+1)``, so stage
    ``j`` needs only a ``j+1``-bit subtractor plus the flag "d < 2**(j+1)", which the previous
    stage computes from its own copy of ``d`` (that keeps the OR-reduction off the carry chain).
    The partial remainder grows by one bit per stage up to 32 bits, and ``n`` shifts out of the
    top of a 33-bit register while quotient bits shift in at the bottom.
    """
    LATENCY = N_BITS

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(DivideIn)),
            "o": Out(stream.Signature(DivideOut)),
        })

    def elaborate(self, platform):
        m = Module()
        ce = pipeline_control(m, self.i, self.o, self.LATENCY)

        nq = self.i.payload.n      # unconsumed n bits on top, quotient bits below
        d = self.i.payload.d
        r = None                   # partial remainder, j bits wide entering stage j (max 32)
        fits = ~d[1:].any()        # d < 2**(j+1), i.e. d fits the trial width of stage j
        for j in range(N_BITS):
            w = j + 1
            t = nq[-1] if r is None else Cat(nq[-1], r)
            last = j == N_BITS - 1
            # Trial subtraction; the top bit of the (w+1)-bit difference is the borrow.
            sub = Signal(w + 1, name=f"sub{j}")
            if w < D_BITS:
                m.d.comb += sub.eq(t - d[:w])
                ge = Signal(name=f"ge{j}")
                m.d.comb += ge.eq(fits & ~sub[w])
            else:
                m.d.comb += sub.eq(t - d)
                ge = ~sub[w]

            nq_next = Signal(N_BITS, name=f"nq{j + 1}")
            with m.If(ce):
                m.d.sync += nq_next.eq(Cat(ge, nq[:-1]))
            if last:
                flag = Signal(name="div_by_zero")
                with m.If(ce):
                    m.d.sync += flag.eq(~d.any())
                m.d.comb += [self.o.payload.q.eq(nq_next), self.o.payload.div_by_zero.eq(flag)]
                break

            rw = min(w, D_BITS)
            r_next = Signal(rw, name=f"r{j + 1}")
            d_next = Signal(D_BITS, name=f"d{j + 1}")
            with m.If(ce):
                m.d.sync += [r_next.eq(Mux(ge, sub[:rw], t[:rw])), d_next.eq(d)]
            if w + 1 < D_BITS:
                fits_next = Signal(name=f"fits{j + 1}")
                with m.If(ce):
                    m.d.sync += fits_next.eq(~d[w + 1:].any())
                fits = fits_next
            nq, r, d = nq_next, r_next, d_next
        return m
