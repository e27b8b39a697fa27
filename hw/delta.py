"""Delta-threshold encoder of Delta KWT: sends a feature only when it moved by more than θ.

Golden model: :func:`sim.golden.delta_encode` (docs/numerics.md §13).
"""
from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import check_int
from .pipeline import pipeline_control

__all__ = ["DeltaEncoder"]


class DeltaEncoder(wiring.Component):
    """Per-element delta encoder with a run-time threshold, ``lanes`` features per beat.

    Each beat is one group of ``lanes`` consecutive features of a token: group ``index`` holds
    features ``index·lanes … index·lanes + lanes − 1``. The state X̂ lives in a memory of
    ``groups = ceil(features / lanes)`` words of ``lanes`` int8. For every lane::

        first beat (token 0):  Δ = X,                     X̂ ← X
        later beats:           d = X − X̂ (int9);  |d| > θ:  Δ = d, X̂ ← X;   else Δ = 0
        mask = (Δ ≠ 0)

    Parameters (keyword-only, read-only properties)
    ----------
    features : int, 1…1024
        Features per token (the depth of X̂ in int8 elements). A sequence may use fewer: any
        subset of the groups.
    lanes : int, 1…64
        Features per beat. When ``lanes`` does not divide ``features``, the last group has
        unused lanes: feed them 0 and they always give Δ = 0, mask = 0.

    Ports
    -----
    i : In(stream.Signature(StructLayout))
        ``data``: ``ArrayLayout(signed(8), lanes)``, X; ``index``: group number (< groups);
        ``first``: 1 for every beat of token 0 of a sequence (passes X and initializes X̂).
        Groups may come in any order within a token, and the same group may follow itself
        back to back (a read-after-write bypass keeps X̂ exact).
    theta : In(unsigned(8))
        θ, sampled on every accepted beat with ``first = 1`` and held for the later tokens of
        the sequence; hold it steady while token 0 is being sent. Beats already in flight keep
        the θ of their own sequence.
    o : Out(stream.Signature(StructLayout))
        ``delta``: ``ArrayLayout(signed(9), lanes)``, Δ; ``mask``: ``unsigned(lanes)``, bit k
        set when Δ[k] ≠ 0 (the pairs the array must process); ``index`` and ``first`` as on
        the input.

    X̂ has no reset (it is a memory): a sequence must start with its ``first`` token. The
    memory starts at zero in simulation.

    Latency :attr:`LATENCY` cycles, one beat per cycle; back-pressure on ``o`` stalls the whole
    pipeline. No compressed (index, value) output: the ``mask`` form keeps one output beat per
    input beat, which the array consumes as a per-lane enable.
    """
    LATENCY = 3

    def __init__(self, *, features=64, lanes=8):
        self._features = check_int("features", features, lo=1, hi=1024)
        self._lanes = check_int("lanes", lanes, lo=1, hi=64)
        self._groups = -(-self._features // self._lanes)
        index = unsigned(max(1, (self._groups - 1).bit_length()))
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(8), self._lanes),
                "index": index,
                "first": unsigned(1),
            }))),
            "theta": In(unsigned(8)),
            "o": Out(stream.Signature(data.StructLayout({
                "delta": data.ArrayLayout(signed(9), self._lanes),
                "mask": unsigned(self._lanes),
                "index": index,
                "first": unsigned(1),
            }))),
        })

    features = property(lambda self: self._features)
    lanes = property(lambda self: self._lanes)
    groups = property(lambda self: self._groups, doc="Depth of the X̂ memory (beats per token).")

    def elaborate(self, platform):
        m = Module()
        ce = pipeline_control(m, self.i, self.o, self.LATENCY)
        L = self._lanes
        row = data.ArrayLayout(signed(8), L)
        idx_shape = self.i.payload.index.shape()

        # Depth ≥ 2 keeps the address at least one bit wide (a 1-group memory would have none).
        m.submodules.xhat = mem = Memory(shape=row, depth=max(2, self._groups), init=[])
        wr = mem.write_port()
        # Transparent: a beat read in the same cycle as the write of the beat two ahead sees it.
        rd = mem.read_port(domain="sync", transparent_for=(wr,))

        # Stage 1: X̂ read (in the memory's read register) beside the beat; each beat carries
        # its own θ so that a new sequence never changes the θ of beats still in flight.
        theta_held = Signal(8)
        x1, idx1, first1, th1, v1 = Signal(row), Signal(idx_shape), Signal(), Signal(8), Signal()
        m.d.comb += [rd.addr.eq(self.i.payload.index), rd.en.eq(ce)]
        with m.If(ce):
            m.d.sync += [
                x1.eq(self.i.payload.data), idx1.eq(self.i.payload.index),
                first1.eq(self.i.payload.first), v1.eq(self.i.valid),
                th1.eq(Mux(self.i.payload.first, self.theta, theta_held)),
            ]
            with m.If(self.i.valid & self.i.payload.first):
                m.d.sync += theta_held.eq(self.theta)

        # Stage 2: the beat one ahead (now in stage 2) writes X̂ after this beat's read, so
        # mark a bypass from its result when both address the same group.
        x2, idx2, first2, th2, v2 = Signal(row), Signal(idx_shape), Signal(), Signal(8), Signal()
        xr2, fwd2 = Signal(row), Signal()
        with m.If(ce):
            m.d.sync += [
                x2.eq(x1), idx2.eq(idx1), first2.eq(first1), th2.eq(th1), v2.eq(v1),
                xr2.eq(rd.data), fwd2.eq(v2 & (idx2 == idx1)),
            ]

        # Stage 3 (output register): decide per lane and write X̂ back.
        new3 = Signal(row)
        xh = Signal(row)
        new = Signal(row)
        delta = Signal(data.ArrayLayout(signed(9), L))
        mask = Signal(L)
        m.d.comb += xh.eq(Mux(fwd2, new3, xr2))
        for k in range(L):
            d = Signal(signed(9), name=f"d{k}")
            send = Signal(name=f"send{k}")
            m.d.comb += [
                d.eq(x2[k] - xh[k]),
                send.eq(abs(d) > th2),
                new[k].eq(Mux(first2 | send, x2[k], xh[k])),
                delta[k].eq(Mux(first2, x2[k], Mux(send, d, 0))),
                # |d| > θ ≥ 0 implies d ≠ 0, so only token 0 needs the zero test.
                mask[k].eq(Mux(first2, x2[k] != 0, send)),
            ]
        m.d.comb += [wr.addr.eq(idx2), wr.data.eq(new), wr.en.eq(ce & v2)]
        with m.If(ce):
            m.d.sync += [
                new3.eq(new),
                self.o.payload.delta.eq(delta), self.o.payload.mask.eq(mask),
                self.o.payload.index.eq(idx2), self.o.payload.first.eq(first2),
            ]
        return m
