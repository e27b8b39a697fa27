"""MAC: ``acc ← acc + a·b`` with a: int9, b: int8 and a wrapping int32 accumulator.

Golden model: :func:`sim.golden.mac` and :func:`sim.golden.matmul` (docs/numerics.md §3).
"""
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .multiplier import Multiplier
from .pipeline import pipeline_stages

__all__ = ["MACOp", "MAC_PAYLOAD", "MACCore", "MAC"]


class MACOp(enum.Enum, shape=2):
    """What a beat does to the accumulator before adding its product ``a·b``."""
    ACC = 0    #: ``acc ← acc + a·b`` (continue the running sum)
    CLEAR = 1  #: ``acc ← a·b`` (start a new sum at 0)
    LOAD = 2   #: ``acc ← c0 + a·b`` (start a new sum at the initial value ``c0``: bias, C₀)
    # 3 is unused and behaves like CLEAR.


#: One MAC beat. ``c0`` is only read by :attr:`MACOp.LOAD`; ``last`` sends the accumulator, after
#: this beat's product, to the output.
MAC_PAYLOAD = data.StructLayout({
    "a": signed(9),
    "b": signed(8),
    "c0": signed(32),
    "op": MACOp,
    "last": 1,
})


class MACCore(wiring.Component):
    """The MAC datapath without flow control, for embedding in a stall-all pipeline.

    Ports
    -----
    ce : In(1)
        Clock enable of every register (the enclosing pipeline's ``ce``).
    valid : In(1)
        An item is on ``payload``; it enters stage 1 at a clock edge with ``ce`` high. Bubbles
        (``valid`` low) travel through without touching the accumulator.
    payload : In(MAC_PAYLOAD)
    acc : Out(signed(32))
        The accumulator register, i.e. the running sum including the item in stage
        :attr:`LATENCY`.
    last : Out(1)
        ``last`` of the item in stage :attr:`LATENCY`.

    Stage 1 registers the operands, stage 2 the 17-bit product (both inside one
    :class:`hw.multiplier.Multiplier`: on ECP5 the ``MULT18X18D``'s own input and output
    registers), stage 3 is the accumulator: a 32-bit adder that wraps.
    """
    LATENCY = 3

    def __init__(self):
        super().__init__({
            "ce": In(1),
            "valid": In(1),
            "payload": In(MAC_PAYLOAD),
            "acc": Out(signed(32)),
            "last": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.payload
        # Operand and product registers (stages 1 and 2) are the multiplier's own.
        m.submodules.mul = mul = Multiplier(a_shape=signed(9), b_shape=signed(8), latency=2)
        m.d.comb += [mul.ce.eq(self.ce), mul.a.eq(p.a), mul.b.eq(p.b)]
        prod2 = mul.p
        c1 = Signal(signed(32))
        op1 = Signal(MACOp)
        last1 = Signal()
        v1 = Signal()
        init2 = Signal(signed(32))
        keep2 = Signal()
        last2 = Signal()
        v2 = Signal()
        with m.If(self.ce):
            # Stage 1: operand registers (a, b in the multiplier).
            m.d.sync += [c1.eq(p.c0), op1.eq(p.op), last1.eq(p.last), v1.eq(self.valid)]
            # Stage 2: product (in the multiplier); the start value is resolved here so stage 3
            # has one 2:1 mux.
            m.d.sync += [
                init2.eq(Mux(op1 == MACOp.LOAD, c1, 0)),
                keep2.eq(~op1.as_value().any()),  # op1 == ACC (0), without a lint-unfriendly `!op`
                last2.eq(last1),
                v2.eq(v1),
            ]
            # Stage 3: accumulate; bubbles must not add.
            with m.If(v2):
                m.d.sync += self.acc.eq(Mux(keep2, self.acc, init2) + prod2)
            m.d.sync += self.last.eq(last2)
        return m


class MAC(wiring.Component):
    """Pipelined multiply-accumulate, one beat per cycle.

    Ports
    -----
    i : In(stream.Signature(MAC_PAYLOAD))
        One beat ``(a, b, c0, op, last)``: ``op`` picks the start value (:class:`MACOp`), then
        the product ``a·b`` (int17, exact) is added to the int32 accumulator, which wraps mod 2³²
        like :func:`sim.golden.mac`. A K-term dot product with bias ``c0`` is one LOAD (or CLEAR)
        beat followed by K − 1 ACC beats, the last one with ``last`` set (K = 1: one
        LOAD/CLEAR beat with ``last``). ACC after a ``last`` beat keeps summing.
    o : Out(stream.Signature(signed(32)))
        The accumulator after each beat that has ``last`` set; other beats produce no output.

    Latency is :attr:`LATENCY` cycles from a ``last`` beat's acceptance to its valid output;
    back-pressure on ``o`` stalls the whole pipeline; beats without ``last`` never wait for ``o``.
    """
    LATENCY = MACCore.LATENCY

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(MAC_PAYLOAD)),
            "o": Out(stream.Signature(signed(32))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = MACCore()
        ce, _ = pipeline_stages(m, self.i, self.o, self.LATENCY, emit=core.last)
        m.d.comb += [
            core.ce.eq(ce),
            core.valid.eq(self.i.valid),
            core.payload.eq(self.i.payload),
            self.o.payload.eq(core.acc),
        ]
        return m
