"""Reduction unit: a row's exact integer sum or maximum by a pipelined log₂-depth tree.

Golden model: :func:`sim.golden.reduce_sum` and :func:`sim.golden.reduce_max`
(docs/numerics.md §6). Integer addition and max are associative, so the tree shape, the split of
a row into beats and the split of a row over PEs never change the result.
"""
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import check_int

__all__ = ["ReduceOp", "Reduce"]


class ReduceOp(enum.Enum, shape=1):
    """Operation of one beat: ``SUM`` (identity 0) or ``MAX`` (identity −2^(width−1))."""
    SUM = 0
    MAX = 1


def _clog2(n):
    return (n - 1).bit_length()


class Reduce(wiring.Component):
    """Row sum or row maximum over ``lanes`` signed inputs per beat, one beat per cycle.

    A beat carries ``lanes`` values, a lane mask, the operation and a ``last`` flag. The beats up
    to and including one with ``last = 1`` form a row; the unit emits one result per row (a row
    of one beat has ``last = 1`` on it). Example: a row of 99 scores with ``lanes = 16`` is 7
    beats, masks ``0xFFFF`` six times then ``0x0007``, ``last`` on the seventh. Each beat goes
    through a binary tree (pairs per level, an odd value passes to the next level unchanged, so
    any ``lanes ≥ 1`` works; depth ``ceil(log2(lanes))``), then a row accumulator folds the
    beat's result into the row.

    Parameters (keyword-only, read-only properties)
    ----------
    lanes : int, 1…256
        Values per beat.
    width : int, 1…64
        Width of the signed input values.
    max_row : int, 1…2^24, default ``lanes``
        Most valid values one row may hold; it sets :attr:`out_width` so that no row sum can
        overflow. A longer row still works for ``MAX``; its sum wraps modulo 2^out_width.

    Ports
    -----
    i : In(stream.Signature(StructLayout))
        ``data``: ``ArrayLayout(signed(width), lanes)``; ``mask``: ``unsigned(lanes)``, bit k set
        when lane k belongs to the row (masked lanes count as the identity of the operation);
        ``op``: :class:`ReduceOp`; ``last``: 1 on the final beat of a row.
    o : Out(stream.Signature(StructLayout))
        ``value``: ``signed(out_width)``, the row's sum or maximum; ``op``: the row's operation.

    Rules: every beat of a row carries the same ``op``. A beat with an empty mask is not a
    valid beat (a zero-length row has no maximum, docs/numerics.md §6); the hardware treats it
    as the identity, so inside a row it is harmless, and a row of only empty beats yields 0
    (``SUM``) or −2^(width−1) (``MAX``).

    Composition across PEs: each PE's ``Reduce`` produces its row partial (a PE whose lanes were
    all masked yields the identity). A second ``Reduce`` with ``lanes = P``, ``width`` = the
    first level's :attr:`out_width` and ``max_row`` = the number of partials per row takes the
    P partials as the lanes of one beat (``last = 1``; mask all ones, or just the PEs that hold
    part of the row) and returns the whole row's sum or maximum. The partials of lockstep PEs
    arrive together, so the join is an AND of the P ``o.valid``. Partials that arrive one at a
    time instead (a chain) go into a ``lanes = 1`` instance, one beat each, ``last`` on the
    final one. Either way the result equals the golden reduction of the whole row.

    Latency: :attr:`latency` = ``ceil(log2(lanes)) + 1`` cycles from accepting a row's last beat
    to its result on ``o``; throughput one beat per cycle. Back-pressure on ``o`` stalls the
    whole pipeline (``i.ready`` follows ``o.ready`` combinationally).
    """

    def __init__(self, *, lanes=16, width=32, max_row=None):
        self._lanes = check_int("lanes", lanes, lo=1, hi=256)
        self._width = check_int("width", width, lo=1, hi=64)
        self._max_row = check_int("max_row", lanes if max_row is None else max_row, lo=1, hi=1 << 24)
        self._depth = _clog2(self._lanes)
        self._tree_width = self._width + self._depth
        self._out_width = self._width + _clog2(max(self._lanes, self._max_row))
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(self._width), self._lanes),
                "mask": unsigned(self._lanes),
                "op": ReduceOp,
                "last": unsigned(1),
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "value": signed(self._out_width),
                "op": ReduceOp,
            }))),
        })

    lanes = property(lambda self: self._lanes)
    width = property(lambda self: self._width)
    max_row = property(lambda self: self._max_row)
    tree_width = property(lambda self: self._tree_width, doc="Width of one beat's tree result.")
    out_width = property(lambda self: self._out_width, doc="Width of ``o.payload.value``.")
    latency = property(lambda self: self._depth + 1, doc="Cycles from a row's last beat to its result.")

    def elaborate(self, platform):
        m = Module()
        # Stall-all control: every register below advances on ce. Unlike pipeline_control, only a
        # row's last beat raises o.valid, so the valid bookkeeping is done here. Datapath
        # registers are reset_less: a reset would put a LUT in front of every enabled flop.
        ce = Signal()
        m.d.comb += [ce.eq(~self.o.valid | self.o.ready), self.i.ready.eq(ce)]

        is_max = self.i.payload.op == ReduceOp.MAX
        # Level 0: masked lanes become the identity (0 for sum, the most negative value for max).
        level = []
        for k in range(self._lanes):
            x = Signal(signed(self._width), name=f"x{k}")
            ident = Mux(is_max, -(1 << (self._width - 1)), 0)
            m.d.comb += x.eq(Mux(self.i.payload.mask[k], self.i.payload.data[k], ident))
            level.append(x)
        vld, op, last = self.i.valid, self.i.payload.op, self.i.payload.last

        # Tree levels, one register level each; a sum grows one bit per level.
        for lvl in range(1, self._depth + 1):
            w = self._width + lvl
            sel_max = Signal(name=f"max_{lvl - 1}")
            m.d.comb += sel_max.eq(op == ReduceOp.MAX)
            nxt = []
            for k in range(0, len(level), 2):
                r = Signal(signed(w), name=f"t{lvl}_{k // 2}", reset_less=True)
                if k + 1 < len(level):
                    a, b = level[k], level[k + 1]
                    with m.If(ce):
                        m.d.sync += r.eq(Mux(sel_max, Mux(_greater(a, b), a, b), a + b))
                else:
                    with m.If(ce):
                        m.d.sync += r.eq(level[k])
                nxt.append(r)
            vld_r = Signal(name=f"valid_{lvl}")
            op_r = Signal(ReduceOp, name=f"op_{lvl}", reset_less=True)
            last_r = Signal(name=f"last_{lvl}", reset_less=True)
            with m.If(ce):
                m.d.sync += [vld_r.eq(vld), op_r.eq(op), last_r.eq(last)]
            level, vld, op, last = nxt, vld_r, op_r, last_r
        t, = level

        # Row accumulator: the first beat after a row's end loads, later beats fold in. Inside a
        # MAX row both the accumulator and t hold width-bit values, so the compare needs only
        # those bits (a shorter carry chain in the accumulation loop).
        acc = Signal(signed(self._out_width), reset_less=True)
        out_op = Signal(ReduceOp, reset_less=True)
        start = Signal(init=1)
        w = self._width
        acc_max = Mux(_greater(acc[:w].as_signed(), t[:w].as_signed()), acc, t)
        m.d.comb += [self.o.payload.value.eq(acc), self.o.payload.op.eq(out_op)]
        with m.If(ce):
            m.d.sync += self.o.valid.eq(vld & last)
            with m.If(vld):
                m.d.sync += [
                    acc.eq(Mux(start, t, Mux(op == ReduceOp.MAX, acc_max, acc + t))),
                    out_op.eq(op),
                    start.eq(last),
                ]
        return m


def _greater(a, b):
    """``a > b`` for signed values as the sign of ``b − a`` (one clean carry chain on FPGAs)."""
    return (b - a)[-1]
