"""Lane: one slice of a PE's vector storage, a MAC and the elementwise operations.

Golden models: :func:`sim.golden.mac`/:func:`~sim.golden.matmul` (docs/numerics.md §3),
:func:`sim.golden.requant` (§4), :func:`sim.golden.add` (§5), :func:`sim.golden.relu` (§12), and
the per-element steps of :func:`sim.golden.exp_weights` (§9), :func:`sim.golden.attention`'s
deferred normalization (§9, §14) and :func:`sim.golden.layernorm` (§10).
"""
from amaranth.hdl import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac import MACCore, MACOp
from .multiplier import Multiplier
from .params import check_choice, check_int
from .pipeline import pipeline_stages

__all__ = ["LaneOp", "Sat", "SAT_RANGE", "Lane", "M_SHAPE"]

#: Shape of the lane multiplier ``m``: int18 holds every uint15 multiplier of docs/numerics.md,
#: the signed int16 LayerNorm ``G`` and ``mantissa15``'s one result of 2¹⁵ (``r = 65535``), and
#: is the full operand width of an 18×18 DSP.
M_SHAPE = signed(18)


class LaneOp(enum.Enum, shape=5):
    """Lane opcodes. ``X = mem[rx]``, ``Y = mem[ry]``, ``imm`` comes with the instruction.

    MAC ops update the accumulator ``acc`` (int32, wraps); their result is ``acc`` after the
    update. Every other op computes an int33 value ``d`` and an int32 addend ``A`` and returns
    ``sat(A + rshift_round(d·m, sh))`` (with ``m = 1, sh = 0`` the plain op), except FMA/FMAI,
    which add ``A`` before the rounding shift: ``sat(rshift_round(d·m + A, sh))``.
    """
    NOP = 0     #: nothing: no write, no output
    MAC = 1     #: ``acc ← acc + a·b``
    MACI = 2    #: ``acc ← imm + a·b`` (start a sum at a C₀/bias delivered as imm; 0 clears)
    MACM = 3    #: ``acc ← X + a·b`` (start a sum at a stored C₀, partial sum or delta state)
    REQ = 4     #: ``d = X``, ``A = 0``: requant (§4); ReLU after requant with ``sat`` RELU8/RELU16
    ADD = 5     #: ``d = X``, ``A = Y``: residual add with rescale (§5), ``add(a=Y, b=X, m, sh)``
    ADDI = 6    #: ``d = X``, ``A = imm``: add bias (``m = 1, sh = 0``), or golden ``add(a=imm, b=X)``
    LDI = 7     #: ``d = imm``: load a value delivered with the instruction
    SUB = 8     #: ``d = X − Y``
    SUBI = 9    #: ``d = X − imm`` (e.g. LayerNorm's ``h − μ``)
    RSUBI = 10  #: ``d = imm − X`` (softmax ``u = min(65535, rshift_round((M − S)·c_e, sh_e))``)
    MAX = 11    #: ``d = max(X, Y)``
    MAXI = 12   #: ``d = max(X, imm)`` (ReLU: ``imm = 0``)
    LT = 13     #: ``d = 1 if X < Y else 0``
    LTI = 14    #: ``d = 1 if X < imm else 0``
    GTI = 15    #: ``d = 1 if X > imm else 0``
    SEL = 16    #: ``d = X if Y ≠ 0 else imm`` (mask/select: keep X where the mask Y is set)
    FMA = 17    #: ``sat(rshift_round(X·m + Y, sh))``: LayerNorm ``y = n·G + B`` with B stored
    FMAI = 18   #: ``sat(rshift_round(X·m + imm, sh))``: LayerNorm ``y = n·G + B`` with B as imm


class Sat(enum.Enum, shape=3):
    """Saturation range of a non-MAC result (:data:`SAT_RANGE`)."""
    INT8 = 0
    INT16 = 1
    INT32 = 2
    UINT8 = 3
    UINT16 = 4
    RELU8 = 5   #: ReLU of an int8 result: ``max(0, clip(v, −128, 127))``
    RELU16 = 6  #: ReLU of an int16 result
    INT9 = 7    #: the A-operand range


#: ``Sat`` → ``(lo, hi)``
SAT_RANGE = {
    Sat.INT8: (-128, 127),
    Sat.INT16: (-32768, 32767),
    Sat.INT32: (-(1 << 31), (1 << 31) - 1),
    Sat.UINT8: (0, 255),
    Sat.UINT16: (0, 65535),
    Sat.RELU8: (0, 127),
    Sat.RELU16: (0, 32767),
    Sat.INT9: (-256, 255),
}

# Internal decode of an opcode: what d is (selected in stage 3 from stage-2 registers: an operand,
# three dedicated subtractors X − Y, X − imm, imm − X, whose sign bits are the comparisons, and
# the maxima) and which addend A the op adds.
(_D_X, _D_IMM, _D_XY, _D_XI, _D_IX, _D_LT_XY, _D_LT_XI, _D_LT_IX, _D_MAX_XY, _D_MAX_XI,
 _D_SEL) = range(11)
_A_ZERO, _A_Y, _A_IMM = 0, 1, 2
# op: (uses X, uses Y, d, A, A before the shift). A MAC op's start value is d's operand: imm for
# MACI (_D_IMM), X for MACM.
_DECODE = {
    LaneOp.MAC:   (0, 0, _D_X, _A_ZERO, 0),
    LaneOp.MACI:  (0, 0, _D_IMM, _A_ZERO, 0),
    LaneOp.MACM:  (1, 0, _D_X, _A_ZERO, 0),
    LaneOp.REQ:   (1, 0, _D_X, _A_ZERO, 0),
    LaneOp.ADD:   (1, 1, _D_X, _A_Y, 0),
    LaneOp.ADDI:  (1, 0, _D_X, _A_IMM, 0),
    LaneOp.LDI:   (0, 0, _D_IMM, _A_ZERO, 0),
    LaneOp.SUB:   (1, 1, _D_XY, _A_ZERO, 0),
    LaneOp.SUBI:  (1, 0, _D_XI, _A_ZERO, 0),
    LaneOp.RSUBI: (1, 0, _D_IX, _A_ZERO, 0),
    LaneOp.MAX:   (1, 1, _D_MAX_XY, _A_ZERO, 0),
    LaneOp.MAXI:  (1, 0, _D_MAX_XI, _A_ZERO, 0),
    LaneOp.LT:    (1, 1, _D_LT_XY, _A_ZERO, 0),
    LaneOp.LTI:   (1, 0, _D_LT_XI, _A_ZERO, 0),
    LaneOp.GTI:   (1, 0, _D_LT_IX, _A_ZERO, 0),
    LaneOp.SEL:   (1, 1, _D_SEL, _A_ZERO, 0),
    LaneOp.FMA:   (1, 1, _D_X, _A_Y, 1),
    LaneOp.FMAI:  (1, 0, _D_X, _A_IMM, 1),
}
_MAC_OPS = (LaneOp.MAC, LaneOp.MACI, LaneOp.MACM)


class Lane(wiring.Component):
    """One lane of a PE: ``depth`` int32 elements of storage, a MAC and elementwise operations.

    Lane ``l`` of a PE with ``L`` lanes holds elements ``l, l + L, l + 2L, …`` of the PE's row
    at addresses ``0, 1, 2, …``. Every instruction does one element: an A-row-parallel matmul
    tile is one MACI/MACM beat, K − 1 MAC beats, the last with ``we`` (write ``acc`` to
    ``mem[rd]``); post-processing (requant, residual add, ReLU, …) is one instruction per
    element, reading ``X = mem[rx]`` and ``Y = mem[ry]`` and writing ``mem[rd]``.

    ======  =================  ===================================  ===============================
    op      storage read       result r                             use
    ======  =================  ===================================  ===============================
    MAC     —                  ``acc ← acc + a·b``                  beats 2…K of a dot product
    MACI    —                  ``acc ← imm + a·b``                  beat 1, C₀ (bias) delivered
    MACM    X                  ``acc ← X + a·b``                    beat 1, C₀/partial sum stored
    REQ     X                  ``sat(rs(X·m, sh))``                 requant §4, ReLU (RELU8),
                                                                    read-out, LN ``n = c·R``,
                                                                    attention ``t = acc·m_r``,
                                                                    ``w = min(255, rs(e, 7))``
    ADD     X, Y               ``sat(Y + rs(X·m, sh))``             residual add §5
    ADDI    X                  ``sat(imm + rs(X·m, sh))``           add bias
    LDI     —                  ``sat(rs(imm·m, sh))``               load a value
    SUB     X, Y               ``sat(rs((X − Y)·m, sh))``           subtract
    SUBI    X                  ``sat(rs((X − imm)·m, sh))``         LN ``c = h − μ``
    RSUBI   X                  ``sat(rs((imm − X)·m, sh))``         softmax ``u = (M − S)·c_e``
    MAX(I)  X, Y               ``sat(rs(max(X, Y|imm)·m, sh))``     max, ReLU (MAXI 0)
    LT(I)   X, Y               ``sat(rs([X < Y|imm]·m, sh))``       compare → 0/1 mask
    GTI     X                  ``sat(rs([X > imm]·m, sh))``         compare → 0/1 mask
    SEL     X, Y               ``sat(rs((Y ≠ 0 ? X : imm)·m, sh))`` masked fill
    FMA     X, Y               ``sat(rs(X·m + Y, sh))``             LN ``y = n·G + B``, B stored
    FMAI    X                  ``sat(rs(X·m + imm, sh))``           LN ``y = n·G + B``, B as imm
    ======  =================  ===================================  ===============================

    ``rs`` is ``rshift_round``, ``sat`` clips to :data:`SAT_RANGE` ``[sat]``, ``m`` is signed
    (:data:`M_SHAPE`, int18). Every op writes ``r`` to ``mem[rd]`` if ``we`` and sends it on
    ``o`` if ``emit``; a MAC op's r is ``acc`` (wrapping int32; ``sat``, ``m`` and ``sh`` are
    ignored).

    Parameters
    ----------
    depth : int
        Storage elements, a power of two, 2…4096 (keyword-only).
    ram : ``"distributed"`` | ``"block"``
        Synthesis hint for the storage (yosys ``ram_style``). Distributed (LUT) RAM with a
        fabric read register is the default: an ECP5 DP16KD's clock-to-output alone (≈ 6 ns
        without its output register, which yosys does not use) keeps the lane well below
        150 MHz; ``"block"`` saves ≈ 350 LUTs per lane for deep storage.

    Ports
    -----
    i : In(stream.Signature(instr_layout))
        One instruction (:attr:`instr_layout`):

        ``op`` (:class:`LaneOp`), ``sat`` (:class:`Sat`),
        ``rx``, ``ry`` (read addresses of X and Y), ``rd`` (write address),
        ``we`` (write the result to ``mem[rd]``), ``emit`` (send the result on ``o``),
        ``a`` (int9), ``b`` (int8) (MAC operands), ``m`` (int18, :data:`M_SHAPE`),
        ``sh`` (uint6) (rescale), ``imm`` (int32: bias, C₀, a per-row scalar, a value to load,
        the addend of FMAI).

        ``op``, ``rx``, ``ry``, ``rd``, ``we`` and ``emit`` decide the handshake (interlock,
        output); lanes driven in lockstep with a shared valid must get equal values of those
        (``a``, ``b``, ``m``, ``sh``, ``imm``, ``sat`` may differ per lane: the per-column B
        operand and constants). A NOP or an opcode above 18 does nothing.
    o : Out(stream.Signature(signed(32)))
        The result of every instruction with ``emit`` set, in order: ``acc`` after a MAC op,
        otherwise ``sat(A + rshift_round(d·m, sh))``, or ``sat(rshift_round(d·m + A, sh))``
        for FMA/FMAI (see :class:`LaneOp`). An element is read out by ``REQ`` with
        ``m = 1, sh = 0, sat = INT32``.

    Semantics are those of executing the instructions one by one: ``rshift_round`` and the
    saturation are bit-exact with :func:`sim.golden.requant`/:func:`~sim.golden.add` and with
    the LayerNorm, softmax-weight and attention-normalization steps of sim.golden (``sh``
    48…63, outside docs/numerics.md, follow the same formula); MAC ops wrap like
    :func:`sim.golden.mac`. Nothing before the saturation wraps: d is exact in 33 bits (SUB and
    RSUBI reach ±(2³² − 1), softmax's ``M − S_j``), ``d·m`` in 51 bits, ``d·m + A`` in 51 bits
    and ``A + rs(d·m, sh)`` in 53 bits.

    Latency and throughput: an in-order, stall-all pipeline of :attr:`LATENCY` stages; an
    instruction's result is on ``o`` :attr:`LATENCY` cycles after it is accepted (and written to
    ``mem[rd]`` as it enters the output register), one instruction per cycle. Read-after-write
    interlock: an instruction whose X (or Y) address matches the ``rd`` of an older instruction
    whose write is not done waits (``i.ready`` low, a bubble enters), so it is accepted
    :attr:`LATENCY` cycles after its producer at the earliest; instructions without such a
    dependency never wait (a PE controller keeps a row's dependent steps that far apart, or
    lets the interlock do it). Back-pressure on ``o`` stalls the whole pipeline; instructions
    without ``emit`` never wait for ``o``.

    Stages (each ≤ about three LUT levels or one carry chain, for ≥ 150 MHz on ECP5):

    1. decode; X and Y into the memory read ports' registers;
    2. three subtractors straight from those registers, ``X − Y``, ``X − imm``, ``imm − X``
       (int33; their sign bits are the comparisons), the operand for pass/SEL, MAX's other
       operand, a one-hot select of d;
    3. d (int33) by an AND-OR of registered values;
    4. d·m as two 18×18 products with their product register, d[16:33]·m (signed 17 × 18) and
       d[0:16]·m (unsigned 16 × signed 18), each a :class:`hw.multiplier.Multiplier` (on ECP5 a
       ``MULT18X18D`` whose output register holds the product, so the multiply is not a fabric
       path); beside them the addend is split into the part added before the shift (FMA/FMAI)
       and the part added after;
    5. ``(p_hi << 16) + p_lo + A_pre`` (int51);
    6. and 7. arithmetic shift right by ``max(sh − 1, 0)``: by its multiple of 8, then by the rest
       (one 64-position shifter is six LUT levels);
    8. ``A_post + (t >> 1) + t[0]`` (round half up adds the bit below the result) — the MAC
       (:class:`hw.mac.MACCore`) takes its start value in stage 3 and accumulates in stages 4–6;
    9. range test in three partial flags (by bit groups: every range ends at bit 7, 8, 15, 16 or 31);
    10. saturation into the output register; the saturated value is written to ``mem[rd]`` on
        the same edge.

    Storage is a :class:`~amaranth.lib.memory.Memory` with two synchronous read ports and one write
    port (yosys duplicates it per read port). Resources and Fmax on ECP5: docs/units.md.
    """
    LATENCY = 10

    def __init__(self, *, depth=64, ram="distributed"):
        check_int("depth", depth, lo=2, hi=4096)
        if depth & (depth - 1):
            raise ValueError(f"depth must be a power of two, not {depth}")
        self._ram = check_choice("ram", ram, ("distributed", "block"))
        self._depth = depth
        self._addr_width = depth.bit_length() - 1
        aw = unsigned(self._addr_width)
        self._instr_layout = data.StructLayout({
            "op": LaneOp,
            "sat": Sat,
            "rx": aw,
            "ry": aw,
            "rd": aw,
            "we": 1,
            "emit": 1,
            "a": signed(9),
            "b": signed(8),
            "m": M_SHAPE,
            "sh": unsigned(6),
            "imm": signed(32),
        })
        super().__init__({
            "i": In(stream.Signature(self._instr_layout)),
            "o": Out(stream.Signature(signed(32))),
        })

    depth = property(lambda self: self._depth, doc="Storage elements.")
    ram = property(lambda self: self._ram, doc="Storage style hint.")
    addr_width = property(lambda self: self._addr_width, doc="Width of ``rx``, ``ry``, ``rd``.")
    instr_layout = property(lambda self: self._instr_layout, doc="Layout of ``i.payload``.")

    def elaborate(self, platform):
        m = Module()
        lat = self.LATENCY
        ins = self.i.payload
        ctrl = data.StructLayout({
            "mac": 1, "keep": 1, "dsel": 4, "a_y": 1, "a_imm": 1,
            "pre": 1, "we": 1, "emit": 1, "rd": unsigned(self._addr_width),
            "sat": Sat, "m": M_SHAPE, "sh": unsigned(6),
        })
        # c[k]: control of the item in stage k (c[0] unused).
        c = [None] + [Signal(ctrl, name=f"c{k}") for k in range(1, lat + 1)]
        hold = Signal()
        ce, valid = pipeline_stages(m, self.i, self.o, lat, hold=hold, emit=c[lat].emit)

        # Decode at the input: use_x/use_y feed the interlock, dec is registered into stage 1.
        dec = Signal(ctrl)
        use_x = Signal()
        use_y = Signal()
        live = Signal()
        with m.Switch(ins.op):
            for op, (ux, uy, dsel, asel, pre) in _DECODE.items():
                with m.Case(op):
                    m.d.comb += [
                        use_x.eq(ux), use_y.eq(uy), live.eq(1),
                        dec.mac.eq(op in _MAC_OPS), dec.keep.eq(op == LaneOp.MAC),
                        dec.dsel.eq(dsel),
                        dec.a_y.eq(asel == _A_Y), dec.a_imm.eq(asel == _A_IMM),
                        dec.pre.eq(pre),
                    ]
            with m.Default():  # NOP and unused opcodes: every field explicit, no latch-like case
                m.d.comb += [
                    use_x.eq(0), use_y.eq(0), live.eq(0),
                    dec.mac.eq(0), dec.keep.eq(0), dec.dsel.eq(_D_X),
                    dec.a_y.eq(0), dec.a_imm.eq(0), dec.pre.eq(0),
                ]
        m.d.comb += [
            dec.we.eq(ins.we & live),
            dec.emit.eq(ins.emit & live),
            dec.rd.eq(ins.rd),
            dec.sat.eq(ins.sat),
            dec.m.eq(ins.m),
            dec.sh.eq(ins.sh),
        ]

        # Read-after-write interlock against every write not yet done: the result is written
        # from stage lat − 1 as it enters the output register, so the items in stages 1 … lat − 1
        # count (stage lat − 1's write lands on the same edge as this instruction's read).
        # wv[k]: stage k holds an item that writes, a register from stage 2 on (a bubble leaving
        # stage 1 clears it), so each hit is one address compare and one more input.
        wv = [None, Signal(name="wv1")] + [Signal(name=f"wv{k}") for k in range(2, lat)]
        m.d.comb += wv[1].eq(valid[0] & c[1].we)
        with m.If(ce):
            m.d.sync += [wv[k + 1].eq(wv[k]) for k in range(1, lat - 1)]
        hit_x = Cat(*(wv[k] & (c[k].rd == ins.rx) for k in range(1, lat))).any()
        hit_y = Cat(*(wv[k] & (c[k].rd == ins.ry) for k in range(1, lat))).any()
        m.d.comb += hold.eq((use_x & hit_x) | (use_y & hit_y))

        m.submodules.mem = mem = Memory(shape=signed(32), depth=self._depth, init=[],
                                        attrs={"ram_style": self._ram})
        rport_x = mem.read_port(domain="sync")
        rport_y = mem.read_port(domain="sync")
        wport = mem.write_port()
        m.d.comb += [
            rport_x.addr.eq(ins.rx), rport_x.en.eq(ce),
            rport_y.addr.eq(ins.ry), rport_y.en.eq(ce),
        ]

        # Datapath registers, named <what><stage>.
        x1, y1 = rport_x.data, rport_y.data
        imm1 = Signal(signed(32))
        a = [None] + [Signal(signed(9), name=f"a{k}") for k in range(1, 4)]
        b = [None] + [Signal(signed(8), name=f"b{k}") for k in range(1, 4)]
        pass2 = Signal(signed(32))     # imm for LDI/MACI, else X (also MAX's, SEL's, MACM's)
        imm2 = Signal(signed(32))
        sel_imm2 = Signal()            # SEL with Y = 0: d is imm
        r2 = Signal(signed(32))        # MAX's other operand: Y or imm
        dxy2 = Signal(signed(33))      # X − Y
        dxi2 = Signal(signed(33))      # X − imm
        dix2 = Signal(signed(33))      # imm − X
        # One-hot select of d for stage 3 (an AND-OR of registered values, two LUT levels).
        sel2 = Signal(data.StructLayout({k: 1 for k in (
            "pass", "xy", "xi", "ix", "lt_xy", "lt_xi", "lt_ix", "max_xy", "max_xi")}))
        addend2 = Signal(signed(32))
        addend3 = Signal(signed(32))
        apre4 = Signal(signed(32))     # added before the shift (FMA, FMAI), else 0
        apost = [None] * 4 + [Signal(signed(32), name=f"apost{k}") for k in range(4, 8)]
        c0_3 = Signal(signed(32))
        p5 = Signal(signed(51))        # |d·m| ≤ 2^49, |A| < 2^31
        shnz5 = Signal()
        shm5 = Signal(6)
        u6 = Signal(signed(51))
        shf6 = Signal(3)
        shnz = [None] * 6 + [Signal(name=f"shnz{k}") for k in range(6, 8)]
        t7 = Signal(signed(51))
        s8 = Signal(signed(53))
        acc = [None] * 7 + [Signal(signed(32), name=f"acc{k}") for k in range(7, 9)]
        lo8 = Signal(signed(32))
        hi8 = Signal(signed(32))
        # The range [lo, hi] is [−2^(n−1), 2^(n−1) − 1] or [0, 2^n − 1]; s8 is in it iff every bit
        # from n − 1 (signed) or n (unsigned) up equals the sign (which must be 0 if unsigned).
        # That top bit index is 7, 8, 15, 16 or 31: bits 31… always count, the others by group.
        top8 = Signal(data.StructLayout({"b7": 1, "b8": 1, "b15": 1, "b16": 1, "uns": 1}))
        bad9 = Signal(3)         # partial "out of range" flags: bits 31…, bits 16…30, the rest
        mac9 = Signal()
        val9 = Signal(signed(32))
        satv9 = Signal(signed(32))
        res10 = Signal(signed(32))

        # The MAC takes its start value (pass2: imm for MACI, X for MACM) and accumulates in stages 4–6.
        m.submodules.mac = mac = MACCore()

        # Stage 4: d3·m by two 18×18 multipliers with their product register (the signed top 17
        # bits and the unsigned low 16 bits of d, each times m, int18); d3 drives nothing else.
        d3 = Signal(signed(33))
        m.submodules.mul_hi = mul_hi = Multiplier(a_shape=signed(17), b_shape=M_SHAPE, latency=1)
        m.submodules.mul_lo = mul_lo = Multiplier(a_shape=unsigned(16), b_shape=M_SHAPE, latency=1)
        m.d.comb += [
            mul_hi.ce.eq(ce), mul_hi.a.eq(d3[16:]), mul_hi.b.eq(c[3].m),
            mul_lo.ce.eq(ce), mul_lo.a.eq(d3[:16]), mul_lo.b.eq(c[3].m),
        ]
        ph4, pl4 = mul_hi.p, mul_lo.p
        # The three stage-5 addends, sign-extended to the width of p5 (the sum is exact there).
        csa_x, csa_y, csa_z = (Signal(len(p5), name=f"csa_{n}") for n in "xyz")
        m.d.comb += [csa_x.eq(ph4 << 16), csa_y.eq(pl4), csa_z.eq(apre4)]

        with m.If(ce):
            m.d.sync += [c[k + 1].eq(c[k]) for k in range(1, lat)]
            m.d.sync += [a[k + 1].eq(a[k]) for k in range(1, 3)]
            m.d.sync += [b[k + 1].eq(b[k]) for k in range(1, 3)]
            m.d.sync += [apost[k + 1].eq(apost[k]) for k in range(4, 7)]
            # Stage 1: decode; X and Y are read into the memory's read registers.
            m.d.sync += [c[1].eq(dec), imm1.eq(ins.imm), a[1].eq(ins.a), b[1].eq(ins.b)]
            # Stage 2: every difference an op may need, each by its own subtractor straight from
            # the read registers (no select in front of a carry chain, and stage 3 selects by
            # registered sign bits instead of by the end of a carry chain).
            dsel = c[1].dsel
            m.d.sync += [
                pass2.eq(Mux(dsel == _D_IMM, imm1, x1)), imm2.eq(imm1),
                sel_imm2.eq((dsel == _D_SEL) & ~y1.any()),
                r2.eq(Mux(dsel == _D_MAX_XI, imm1, y1)),
                dxy2.eq(x1 - y1), dxi2.eq(x1 - imm1), dix2.eq(imm1 - x1),
                # `dsel == _D_X` (0) as ~any(): Amaranth writes `== 0` as a lint-unfriendly `!vec`.
                sel2["pass"].eq(~dsel.any() | (dsel == _D_IMM) | (dsel == _D_SEL)),
                sel2.xy.eq(dsel == _D_XY), sel2.xi.eq(dsel == _D_XI), sel2.ix.eq(dsel == _D_IX),
                sel2.lt_xy.eq(dsel == _D_LT_XY), sel2.lt_xi.eq(dsel == _D_LT_XI),
                sel2.lt_ix.eq(dsel == _D_LT_IX),
                sel2.max_xy.eq(dsel == _D_MAX_XY), sel2.max_xi.eq(dsel == _D_MAX_XI),
                addend2.eq(Mux(c[1].a_y, y1, Mux(c[1].a_imm, imm1, 0))),
            ]
            # Stage 3: d, an AND-OR select among registered values.
            lt_xy, lt_xi, lt_ix = dxy2[-1], dxi2[-1], dix2[-1]
            m.d.sync += d3.eq(
                Mux(sel2["pass"], Mux(sel_imm2, imm2, pass2), 0) | Mux(sel2.xy, dxy2, 0) | Mux(sel2.xi, dxi2, 0)
                | Mux(sel2.ix, dix2, 0)
                | Mux(sel2.max_xy, Mux(lt_xy, r2, pass2), 0) | Mux(sel2.max_xi, Mux(lt_xi, r2, pass2), 0)
                | ((sel2.lt_xy & lt_xy) | (sel2.lt_xi & lt_xi) | (sel2.lt_ix & lt_ix)))
            m.d.sync += [c0_3.eq(pass2), addend3.eq(addend2)]
            # Stage 4: the products (in the multipliers); the addend goes before or after the
            # shift, so that stage 5 and stage 8 each add it without a select.
            m.d.sync += [
                apre4.eq(Mux(c[3].pre, addend3, 0)),
                apost[4].eq(Mux(c[3].pre, 0, addend3)),
            ]
            # Stage 5: d·m + A_pre (int51) by a carry-save step and one carry chain (two chained
            # adders would be two carry chains); the shift amount for stages 6 and 7.
            m.d.sync += [
                p5.eq((csa_x ^ csa_y ^ csa_z) + (((csa_x & csa_y) | (csa_x & csa_z) | (csa_y & csa_z)) << 1)),
                shnz5.eq(c[4].sh.any()),
                shm5.eq(Mux(c[4].sh.any(), c[4].sh - 1, 0)),
            ]
            # Stages 6 and 7: arithmetic shift right by sh − 1 (keeping the rounding bit as
            # t7[0]) in two steps of an 8:1 select each: a 51-bit, 64-position shifter in one
            # stage is six LUT levels, 7.3 ns on ECP5.
            m.d.sync += [u6.eq(p5 >> Cat(C(0, 3), shm5[3:])), shf6.eq(shm5[:3]), shnz[6].eq(shnz5)]
            m.d.sync += [t7.eq(u6 >> shf6), shnz[7].eq(shnz[6])]
            # Stage 8: round half up is floor(p / 2^sh) + bit (sh − 1) of p; add A_post.
            m.d.sync += [
                s8.eq(apost[7] + Mux(shnz[7], t7 >> 1, t7) + (shnz[7] & t7[0])),
                acc[7].eq(mac.acc), acc[8].eq(acc[7]),
            ]
            with m.Switch(c[7].sat):
                for sat, (lo, hi) in SAT_RANGE.items():
                    top = hi.bit_length()
                    assert top in (7, 8, 15, 16, 31)
                    with m.Case(sat):
                        m.d.sync += [lo8.eq(lo), hi8.eq(hi), top8.uns.eq(lo == 0), top8.b7.eq(top <= 7),
                                     top8.b8.eq(top <= 8), top8.b15.eq(top <= 15), top8.b16.eq(top <= 16)]
            # Stage 9: range test by bits instead of two wide comparisons, in three partial
            # flags, beside the value (MAC ops pass the wrapping accumulator) and the bound it
            # saturates to.
            sign8 = s8[-1]
            ne = s8.as_unsigned() ^ sign8.replicate(len(s8))     # bits that differ from the sign
            m.d.sync += [
                bad9[0].eq(ne[31:].any()),
                bad9[1].eq(ne[16:31].any() & top8.b16),
                bad9[2].eq((ne[15] & top8.b15) | (ne[8:15].any() & top8.b8) | (ne[7] & top8.b7)
                           | (sign8 & top8.uns)),
                mac9.eq(c[8].mac),
                val9.eq(Mux(c[8].mac, acc[8], s8[:32])),
                satv9.eq(Mux(sign8, lo8, hi8)),
            ]
        # Stage 10: saturate into the output register; the same value is written to storage.
        result = Signal(signed(32))
        m.d.comb += result.eq(Mux(~bad9.any() | mac9, val9, satv9))
        with m.If(ce):
            m.d.sync += res10.eq(result)

        m.d.comb += [
            mac.ce.eq(ce),
            mac.valid.eq(valid[2] & c[3].mac),
            mac.payload.a.eq(a[3]),
            mac.payload.b.eq(b[3]),
            mac.payload.c0.eq(c0_3),
            mac.payload.op.eq(Mux(c[3].keep, MACOp.ACC, MACOp.LOAD)),
        ]

        m.d.comb += [
            self.o.payload.eq(res10),
            wport.addr.eq(c[lat - 1].rd),
            wport.data.eq(result),
            # Not gated by ce: while the pipeline stalls, the item in stage lat − 1 rewrites the
            # same value to the same address, which is harmless (every older access is done and
            # younger readers of it wait) and keeps o.ready off the RAM's write-enable paths.
            wport.en.eq(wv[lat - 1]),
        ]
        return m
