"""Activation unit: GELU / elu+1 (or any int8 → int9 function) by a run-time loadable table.

Golden model: :func:`sim.golden.activation`; tables from :func:`sim.golden.gelu_lut` and
:func:`sim.golden.elu1_lut` (docs/numerics.md §12).
"""
import operator

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import check_int

__all__ = ["Activation"]


def _check_table(init):
    table = [operator.index(v) for v in init]
    if len(table) != 256:
        raise ValueError(f"init must have 256 entries, not {len(table)}")
    bad = [v for v in table if not -256 <= v <= 255]
    if bad:
        raise ValueError(f"init entries must be int9 (-256…255); found {bad[0]}")
    return table


class Activation(wiring.Component):
    """``y = LUT[x + 128]`` on ``lanes`` int8 inputs per beat, one beat per cycle.

    Parameters (keyword-only, read-only properties)
    ----------
    lanes : int, 1…64
        Lookups per beat. There is one logical table with ``lanes`` read ports and one write
        port; synthesis replicates the storage per read port (256 × 9 bits each).
    init : sequence of 256 ints in −256…255, optional
        Table contents after configuration (default all zero), e.g. ``gelu_lut(s_in, s_out)``.

    Ports
    -----
    i : In(stream.Signature(ArrayLayout(signed(8), lanes)))
        ``x``, the requantized int8 inputs.
    o : Out(stream.Signature(ArrayLayout(signed(9), lanes)))
        ``y = LUT[x + 128]``.
    load : In(stream.Signature(StructLayout))
        Table write: ``addr`` (``unsigned(8)``, the table index ``x + 128``, as in the golden
        ``lut`` array) and ``data`` (``signed(9)``). ``ready`` is always 1: one entry per cycle,
        written whenever ``valid``, independent of ``i``/``o`` and of stalls.

    Reload semantics: a write has priority; ``i.ready`` is low in every cycle with
    ``load.valid``, so no lookup shares a cycle with a write. A lookup reads the table in the
    cycle its beat is accepted on ``i`` and sees exactly the writes of earlier cycles: a table
    can be swapped mid-stream at an exact beat boundary, and beats already accepted keep the old
    entries even while stalled. A full reload takes 256 cycles (lookups pause meanwhile).

    Latency :attr:`LATENCY` cycles (table read, output register); one beat per cycle while no
    write is in progress; back-pressure on ``o`` stalls the whole pipeline (``i.ready`` follows
    ``o.ready`` and ``load.valid`` combinationally).
    """
    LATENCY = 2

    def __init__(self, *, lanes=1, init=None):
        self._lanes = check_int("lanes", lanes, lo=1, hi=64)
        self._init = tuple(_check_table([0] * 256 if init is None else init))
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(8), self._lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(9), self._lanes))),
            "load": In(stream.Signature(data.StructLayout({
                "addr": unsigned(8),
                "data": signed(9),
            }))),
        })

    lanes = property(lambda self: self._lanes)
    init = property(lambda self: self._init, doc="Table contents at configuration.")

    def elaborate(self, platform):
        m = Module()
        ce = Signal()
        m.d.comb += ce.eq(~self.o.valid | self.o.ready)
        # A table write blocks lookups for that cycle, so a read never meets a write of the same
        # cycle: block RAMs need no collision logic (no_rw_check) and the order is exact.
        accept = Signal()
        m.d.comb += [self.i.ready.eq(ce & ~self.load.valid), accept.eq(self.i.valid & self.i.ready)]
        valid = Signal(self.LATENCY)
        m.d.comb += self.o.valid.eq(valid[-1])
        with m.If(ce):
            m.d.sync += valid.eq((valid << 1) | accept)

        # no_rw_check: a read never meets a write (see above), so synthesis needs no collision
        # logic. Yosys honours it when it folds the read register into the port itself, hence
        # asynchronous read ports followed by an explicit register (same timing as a sync port).
        m.submodules.lut = lut = Memory(shape=signed(9), depth=256, init=self._init,
                                        attrs={"no_rw_check": 1})
        wr = lut.write_port()
        m.d.comb += [
            wr.addr.eq(self.load.payload.addr),
            wr.data.eq(self.load.payload.data),
            wr.en.eq(self.load.valid),
            self.load.ready.eq(1),
        ]
        # Registers without reset: a reset would put a LUT between the table and them.
        y = Signal(self.o.payload.shape(), reset_less=True)
        m.d.comb += self.o.payload.eq(y)
        for k in range(self._lanes):
            rd = lut.read_port(domain="comb")
            r1 = Signal(signed(9), name=f"r1_{k}", reset_less=True)
            # Index x + 128 of an int8 is x with its sign bit flipped.
            m.d.comb += rd.addr.eq(self.i.payload[k].as_unsigned() ^ 0x80)
            with m.If(ce):
                m.d.sync += [r1.eq(rd.data), y[k].eq(r1)]
        return m
