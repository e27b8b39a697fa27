"""Delta-threshold encoder of Delta KWT: sends a feature only when it moved by more than θ.

Golden model: :func:`sim.golden.delta_encode` (docs/numerics.md §13).
"""
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import check_int

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
        Groups may come in any order within a token. ``i.ready`` also drops while the beat's
        group is still in stages 1–3 of the pipeline (read-after-write interlock, a
        combinational function of ``index``).
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

    Latency :attr:`LATENCY` cycles. Throughput one beat per cycle whenever a group does not
    recur within the three beats before it — always the case when a token's groups are sent in
    order and ``groups ≥ 4`` (KWT-1: 64 features, ``lanes ≤ 16``); otherwise the interlock
    inserts idle cycles (a single group, ``features ≤ lanes``, runs at one beat per four
    cycles). Back-pressure on ``o`` stalls the whole pipeline. No compressed (index, value)
    output: the ``mask`` form keeps one output beat per input beat, which the array consumes as
    a per-lane enable.
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
        L = self._lanes
        row = data.ArrayLayout(signed(8), L)
        idx_shape = self.i.payload.index.shape()
        i, o = self.i, self.o

        # Stall-all control plus a read-after-write interlock: X̂ of a group is read when its beat
        # is accepted and written back from stage 3 (a registered write keeps the block-RAM data
        # input off the decision path), so a beat whose group is still in stages 1–3 waits. No
        # bypass logic sits in the decision path.
        ce = Signal()
        hazard = Signal()
        accept = Signal()
        v1 = Signal()
        v2 = Signal()
        v3 = Signal()
        idx1 = Signal(idx_shape, reset_less=True)
        idx2 = Signal(idx_shape, reset_less=True)
        idx3 = Signal(idx_shape, reset_less=True)
        m.d.comb += [
            ce.eq(~o.valid | o.ready),
            hazard.eq((v1 & (idx1 == i.payload.index)) | (v2 & (idx2 == i.payload.index)) |
                      (v3 & (idx3 == i.payload.index))),
            i.ready.eq(ce & ~hazard),
            accept.eq(i.valid & i.ready),
            o.valid.eq(v3),
        ]
        with m.If(ce):
            m.d.sync += [v1.eq(accept), v2.eq(v1), v3.eq(v2)]

        # No read ever meets a write of the same group (interlock), so synthesis needs no
        # collision logic (no_rw_check; honoured when yosys folds the register into the read
        # port). Depth ≥ 2 keeps the address at least one bit wide.
        m.submodules.xhat = mem = Memory(shape=row, depth=max(2, self._groups), init=[],
                                         attrs={"no_rw_check": 1})
        wr = mem.write_port()
        rd = mem.read_port(domain="comb")

        # Stage 1: X̂ (read register) beside the beat. Each beat carries its own θ so that a new
        # sequence never changes the θ of beats still in flight.
        theta_held = Signal(8)
        xh1 = Signal(row, reset_less=True)
        x1 = Signal(row, reset_less=True)
        first1 = Signal(reset_less=True)
        th1 = Signal(8, reset_less=True)
        m.d.comb += rd.addr.eq(i.payload.index)
        with m.If(ce):
            m.d.sync += [
                xh1.eq(rd.data), x1.eq(i.payload.data), idx1.eq(i.payload.index),
                first1.eq(i.payload.first), th1.eq(Mux(i.payload.first, self.theta, theta_held)),
            ]
            with m.If(accept & i.payload.first):
                m.d.sync += theta_held.eq(self.theta)

        # Stage 2 registers: |X − X̂| > θ  ⇔  X̂ ≤ lo = X − θ − 1  or  X̂ > hi = X + θ, so the
        # bounds are computed here, away from X̂, and stage 2 only compares.
        xh2 = Signal(row, reset_less=True)
        x2 = Signal(row, reset_less=True)
        first2 = Signal(reset_less=True)
        lo2 = Signal(data.ArrayLayout(signed(10), L), reset_less=True)
        hi2 = Signal(data.ArrayLayout(signed(10), L), reset_less=True)
        with m.If(ce):
            m.d.sync += [xh2.eq(xh1), x2.eq(x1), idx2.eq(idx1), first2.eq(first1)]
            for k in range(L):
                m.d.sync += [lo2[k].eq(x1[k] - th1 - 1), hi2[k].eq(x1[k] + th1)]

        # Stage 2: decide per lane. Stage 3 is the output register and writes X̂ back (while a
        # beat waits there it rewrites the same value, which is harmless).
        new = Signal(row)
        new3 = Signal(row, reset_less=True)
        delta = Signal(data.ArrayLayout(signed(9), L), reset_less=True)
        mask = Signal(L, reset_less=True)
        first3 = Signal(reset_less=True)
        for k in range(L):
            send = Signal(name=f"send{k}")
            # Comparisons as subtraction signs: one carry chain each.
            m.d.comb += [
                send.eq(~(lo2[k] - xh2[k])[-1] | (hi2[k] - xh2[k])[-1]),
                new[k].eq(Mux(first2 | send, x2[k], xh2[k])),
            ]
            with m.If(ce):
                m.d.sync += [
                    delta[k].eq(Mux(first2, x2[k], Mux(send, x2[k] - xh2[k], 0))),
                    # |d| > θ ≥ 0 implies d ≠ 0, so only token 0 needs the zero test.
                    mask[k].eq(Mux(first2, x2[k] != 0, send)),
                ]
        with m.If(ce):
            m.d.sync += [new3.eq(new), idx3.eq(idx2), first3.eq(first2)]
        m.d.comb += [
            wr.addr.eq(idx3), wr.data.eq(new3), wr.en.eq(v3),
            o.payload.delta.eq(delta), o.payload.mask.eq(mask),
            o.payload.index.eq(idx3), o.payload.first.eq(first3),
        ]
        return m
