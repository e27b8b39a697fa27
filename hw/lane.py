"""Lane: one slice of a PE's vector storage, a MAC and the elementwise operations.

Golden models: :func:`sim.golden.mac`/:func:`~sim.golden.matmul` (docs/numerics.md §3),
:func:`sim.golden.requant` (§4), :func:`sim.golden.add` (§5), :func:`sim.golden.relu` (§12).
"""
from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac import MACCore, MACOp
from .params import check_choice, check_int
from .pipeline import pipeline_stages

__all__ = ["LaneOp", "Sat", "SAT_RANGE", "Lane"]


class LaneOp(enum.Enum, shape=5):
    """Lane opcodes. ``X = mem[rx]``, ``Y = mem[ry]``, ``imm`` comes with the instruction.

    MAC ops update the accumulator ``acc`` (int32, wraps); their result is ``acc`` after the
    update. Every other op computes an int33 value ``d`` and an addend ``A`` and returns
    ``sat(A + rshift_round(d·m, sh))`` (with ``m = 1, sh = 0`` the plain op).
    """
    NOP = 0     #: nothing: no write, no output
    MAC = 1     #: ``acc ← acc + a·b``
    MACI = 2    #: ``acc ← imm + a·b`` (start a sum at a bias/C₀ delivered with the operand; imm 0 clears)
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

# Internal decode of an opcode: the operand selects of stages 3 and 4.
_R_Y, _R_IMM, _R_X = 0, 1, 2                         # right operand of the stage-4 subtractor
_D_PASS, _D_DIFF, _D_NEG, _D_MAX, _D_SEL = range(5)  # what d is
_A_ZERO, _A_Y, _A_IMM = 0, 1, 2                      # the addend A
# op: (uses X, uses Y, left operand is imm (else X), right operand, d, A)
_DECODE = {
    LaneOp.MAC:   (0, 0, 0, _R_Y, _D_PASS, _A_ZERO),
    LaneOp.MACI:  (0, 0, 1, _R_Y, _D_PASS, _A_ZERO),
    LaneOp.MACM:  (1, 0, 0, _R_Y, _D_PASS, _A_ZERO),
    LaneOp.REQ:   (1, 0, 0, _R_Y, _D_PASS, _A_ZERO),
    LaneOp.ADD:   (1, 1, 0, _R_Y, _D_PASS, _A_Y),
    LaneOp.ADDI:  (1, 0, 0, _R_Y, _D_PASS, _A_IMM),
    LaneOp.LDI:   (0, 0, 1, _R_Y, _D_PASS, _A_ZERO),
    LaneOp.SUB:   (1, 1, 0, _R_Y, _D_DIFF, _A_ZERO),
    LaneOp.SUBI:  (1, 0, 0, _R_IMM, _D_DIFF, _A_ZERO),
    LaneOp.RSUBI: (1, 0, 1, _R_X, _D_DIFF, _A_ZERO),
    LaneOp.MAX:   (1, 1, 0, _R_Y, _D_MAX, _A_ZERO),
    LaneOp.MAXI:  (1, 0, 0, _R_IMM, _D_MAX, _A_ZERO),
    LaneOp.LT:    (1, 1, 0, _R_Y, _D_NEG, _A_ZERO),
    LaneOp.LTI:   (1, 0, 0, _R_IMM, _D_NEG, _A_ZERO),
    LaneOp.GTI:   (1, 0, 1, _R_X, _D_NEG, _A_ZERO),
    LaneOp.SEL:   (1, 1, 0, _R_IMM, _D_SEL, _A_ZERO),
}
_MAC_OPS = (LaneOp.MAC, LaneOp.MACI, LaneOp.MACM)


class Lane(wiring.Component):
    """One lane of a PE: ``depth`` int32 elements of storage, a MAC and elementwise operations.

    Lane ``l`` of a PE with ``L`` lanes holds elements ``l, l + L, l + 2L, …`` of the PE's row
    at addresses ``0, 1, 2, …``. Every instruction does one element: an A-row-parallel matmul
    tile is one MACI/MACM beat, K − 1 MAC beats, the last with ``we`` (write ``acc`` to
    ``mem[rd]``); post-processing (requant, residual add, ReLU, …) is one instruction per
    element, reading ``X = mem[rx]`` and ``Y = mem[ry]`` and writing ``mem[rd]``.

    Parameters
    ----------
    depth : int
        Storage elements, a power of two, 2…4096 (keyword-only).
    ram : ``"distributed"`` | ``"block"``
        Synthesis hint for the storage (yosys ``ram_style``). Distributed (LUT) RAM with a
        fabric read register is the default: an ECP5 DP16KD's clock-to-output alone (≈ 6 ns
        without its output register, which yosys does not use) caps the lane near 120 MHz.

    Ports
    -----
    i : In(stream.Signature(instr_layout))
        One instruction (:attr:`instr_layout`):

        ``op`` (:class:`LaneOp`), ``sat`` (:class:`Sat`),
        ``rx``, ``ry`` (read addresses of X and Y), ``rd`` (write address),
        ``we`` (write the result to ``mem[rd]``), ``emit`` (send the result on ``o``),
        ``a`` (int9), ``b`` (int8) (MAC operands), ``m`` (uint15), ``sh`` (uint6) (rescale),
        ``imm`` (int32: bias, C₀, a per-row scalar, a value to load).

        ``op``, ``rx``, ``ry``, ``rd``, ``we`` and ``emit`` decide the handshake (interlock,
        output); lanes driven in lockstep with a shared valid must get equal values of those
        (``a``, ``b``, ``m``, ``sh``, ``imm``, ``sat`` may differ per lane: the per-column B
        operand and constants). A NOP or an opcode above 16 does nothing.
    o : Out(stream.Signature(signed(32)))
        The result of every instruction with ``emit`` set, in order: ``acc`` after a MAC op,
        otherwise ``sat(A + rshift_round(d·m, sh))`` (see :class:`LaneOp`). An element is read
        out by ``REQ`` with ``m = 1, sh = 0, sat = INT32``.

    Semantics are those of executing the instructions one by one: ``rshift_round`` and the
    saturation are bit-exact with :func:`sim.golden.requant`/:func:`~sim.golden.add`
    (``sh`` 48…63, outside docs/numerics.md, follow the same formula); MAC ops wrap like
    :func:`sim.golden.mac` and ignore ``sat``, ``m`` and ``sh``.

    Latency and throughput: an in-order, stall-all pipeline of :attr:`LATENCY` stages; an
    instruction's result is on ``o`` (and written to ``mem[rd]``) :attr:`LATENCY` cycles after
    it is accepted, one instruction per cycle. Read-after-write interlock: an instruction whose
    X (or Y) address matches the ``rd`` of an older instruction still in flight with ``we``
    waits (``i.ready`` low, a bubble enters) until that write is done, up to
    :attr:`LATENCY` cycles; instructions without such a dependency never wait. Back-pressure
    on ``o`` stalls the whole pipeline; instructions without ``emit`` never wait for ``o``.

    Stages: 1 decode and memory read (into the read ports' registers); 2 operand selects;
    3 subtract/compare → d (int33); 4 d·m as two DSP products (d[16:33]·m signed 17×16,
    d[0:16]·m 16×15); 5 their sum (int48); 6 arithmetic shift by ``max(sh − 1, 0)``;
    7 ``A + (t >> 1) + t[0]`` (round half up adds the bit below the result) — the MAC
    (:class:`hw.mac.MACCore`) takes d as its start value and accumulates in stages 4–6; 8 range
    test; 9 saturation, output and write. Storage is a :class:`~amaranth.lib.memory.Memory`
    with two synchronous read ports and one write port (yosys duplicates it per read port).
    """
    LATENCY = 9

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
            "m": unsigned(15),
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
            "mac": 1, "keep": 1, "l_imm": 1, "r_imm": 1, "r_x": 1, "dmode": 3, "a_y": 1, "a_imm": 1,
            "we": 1, "emit": 1, "rd": unsigned(self._addr_width),
            "sat": Sat, "m": unsigned(15), "sh": unsigned(6),
        })
        # c[k]: control of the item in stage k (c[0] unused).
        c = [None] + [Signal(ctrl, name=f"c{k}") for k in range(1, lat + 1)]
        hold = Signal()
        ce, valid = pipeline_stages(m, self.i, self.o, lat, hold=hold, emit=c[lat].emit)

        # Decode at the input (only the handshake-relevant fields are needed here).
        dec = Signal(ctrl)
        use_x = Signal()
        use_y = Signal()
        live = Signal()
        with m.Switch(ins.op):
            for op, (ux, uy, l_imm, rsel, dmode, asel) in _DECODE.items():
                with m.Case(op):
                    m.d.comb += [
                        use_x.eq(ux), use_y.eq(uy), live.eq(1),
                        dec.mac.eq(op in _MAC_OPS), dec.keep.eq(op == LaneOp.MAC),
                        dec.l_imm.eq(l_imm), dec.r_imm.eq(rsel == _R_IMM), dec.r_x.eq(rsel == _R_X),
                        dec.dmode.eq(dmode), dec.a_y.eq(asel == _A_Y), dec.a_imm.eq(asel == _A_IMM),
                    ]
            with m.Default():  # NOP and unused opcodes: every field explicit, no latch-like case
                m.d.comb += [
                    use_x.eq(0), use_y.eq(0), live.eq(0),
                    dec.mac.eq(0), dec.keep.eq(0), dec.l_imm.eq(0), dec.r_imm.eq(0), dec.r_x.eq(0),
                    dec.dmode.eq(_D_PASS), dec.a_y.eq(0), dec.a_imm.eq(0),
                ]
        m.d.comb += [
            dec.we.eq(ins.we & live),
            dec.emit.eq(ins.emit & live),
            dec.rd.eq(ins.rd),
            dec.sat.eq(ins.sat),
            dec.m.eq(ins.m),
            dec.sh.eq(ins.sh),
        ]

        # Read-after-write interlock against every in-flight write, the output stage included
        # (its write lands on the same edge as this instruction's read).
        hazards = []
        for k in range(1, lat + 1):
            hit = (use_x & (c[k].rd == ins.rx)) | (use_y & (c[k].rd == ins.ry))
            hazards.append(valid[k - 1] & c[k].we & hit)
        m.d.comb += hold.eq(Cat(*hazards).any())

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
        l2 = Signal(signed(32))
        r2 = Signal(signed(32))
        ynz2 = Signal()
        addend = [None] * 2 + [Signal(signed(32), name=f"addend{k}") for k in range(2, 7)]
        d3 = Signal(signed(33))
        ph4 = Signal(signed(32))
        pl4 = Signal(unsigned(31))
        p5 = Signal(signed(48))
        shnz5 = Signal()
        shm5 = Signal(6)
        t6 = Signal(signed(48))
        shnz6 = Signal()
        s7 = Signal(signed(49))
        acc7 = Signal(signed(32))
        lo7 = Signal(signed(32))
        hi7 = Signal(signed(32))
        free7 = Signal(49)       # bits of s7 that must all equal its sign bit for s7 to be in range
        uns7 = Signal()
        in8 = Signal()           # the result needs no saturation
        val8 = Signal(signed(32))
        satv8 = Signal(signed(32))
        res9 = Signal(signed(32))

        # The MAC takes its start value (imm or X) from d and accumulates in stages 4–6.
        m.submodules.mac = mac = MACCore()
        diff = Signal(signed(33))
        m.d.comb += diff.eq(l2 - r2)
        neg = diff[-1]

        with m.If(ce):
            m.d.sync += [c[k + 1].eq(c[k]) for k in range(1, lat)]
            m.d.sync += [a[k + 1].eq(a[k]) for k in range(1, 3)]
            m.d.sync += [b[k + 1].eq(b[k]) for k in range(1, 3)]
            m.d.sync += [addend[k + 1].eq(addend[k]) for k in range(2, 6)]
            # Stage 1: decode; X and Y are read into the memory's read registers.
            m.d.sync += [c[1].eq(dec), imm1.eq(ins.imm), a[1].eq(ins.a), b[1].eq(ins.b)]
            # Stage 2: operand selects.
            m.d.sync += [
                l2.eq(Mux(c[1].l_imm, imm1, x1)),
                r2.eq(Mux(c[1].r_imm, imm1, Mux(c[1].r_x, x1, y1))),
                ynz2.eq(y1.any()),
                addend[2].eq(Mux(c[1].a_y, y1, Mux(c[1].a_imm, imm1, 0))),
            ]
            # Stage 3: one 33-bit subtractor gives differences, comparisons and max.
            with m.Switch(c[2].dmode):
                with m.Case(_D_DIFF):
                    m.d.sync += d3.eq(diff)
                with m.Case(_D_NEG):
                    m.d.sync += d3.eq(neg)
                with m.Case(_D_MAX):
                    m.d.sync += d3.eq(Mux(neg, r2, l2))
                with m.Case(_D_SEL):
                    m.d.sync += d3.eq(Mux(ynz2, l2, r2))
                with m.Default():
                    m.d.sync += d3.eq(l2)
            # Stage 4: d·m split over two 18×18 multipliers (d3 acts as their input register).
            m.d.sync += [
                ph4.eq(d3[16:].as_signed() * c[3].m),
                pl4.eq(d3[:16] * c[3].m),
            ]
            # Stage 5: the 48-bit product; the shift amount for stage 6.
            m.d.sync += [
                p5.eq((ph4 << 16) + pl4),
                shnz5.eq(c[4].sh.any()),
                shm5.eq(Mux(c[4].sh.any(), c[4].sh - 1, 0)),
            ]
            # Stage 6: shift right by sh − 1, keeping the rounding bit as t6[0].
            m.d.sync += [t6.eq(p5 >> shm5), shnz6.eq(shnz5)]
            # Stage 7: round half up is floor(p / 2^sh) + bit (sh − 1) of p; add A.
            m.d.sync += [
                s7.eq(addend[6] + Mux(shnz6, t6 >> 1, t6) + (shnz6 & t6[0])),
                acc7.eq(mac.acc),
            ]
            with m.Switch(c[6].sat):
                for sat, (lo, hi) in SAT_RANGE.items():
                    # [lo, hi] is [−2^(n−1), 2^(n−1) − 1] or [0, 2^n − 1]: s7 is in range iff its
                    # bits from n − 1 (signed) or n (unsigned) up all equal the sign (0 if unsigned).
                    top = hi.bit_length()
                    with m.Case(sat):
                        m.d.sync += [lo7.eq(lo), hi7.eq(hi), uns7.eq(lo == 0),
                                     free7.eq(((1 << 49) - 1) & ~((1 << top) - 1))]
            # Stage 8: range test by bits instead of two 49-bit comparisons, beside the value
            # (MAC ops pass the wrapping accumulator) and the bound it saturates to.
            sign7 = s7[-1]
            in_range = ~((s7.as_unsigned() ^ sign7.replicate(49)) & free7).any() & ~(uns7 & sign7)
            m.d.sync += [
                in8.eq(in_range | c[7].mac),
                val8.eq(Mux(c[7].mac, acc7, s7[:32])),
                satv8.eq(Mux(sign7, lo7, hi7)),
            ]
            # Stage 9: saturate.
            m.d.sync += res9.eq(Mux(in8, val8, satv8))

        m.d.comb += [
            mac.ce.eq(ce),
            mac.valid.eq(valid[2] & c[3].mac),
            mac.payload.a.eq(a[3]),
            mac.payload.b.eq(b[3]),
            mac.payload.c0.eq(d3[:32]),
            mac.payload.op.eq(Mux(c[3].keep, MACOp.ACC, MACOp.LOAD)),
        ]

        m.d.comb += [
            self.o.payload.eq(res9),
            wport.addr.eq(c[lat].rd),
            wport.data.eq(res9),
            wport.en.eq(valid[lat - 1] & c[lat].we & ce),
        ]
        return m
