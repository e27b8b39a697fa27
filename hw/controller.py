"""Controller: program load, fetch, decode with range checks, dispatch, interlocks, counters.

docs/isa.md defines the instructions and error codes; docs/architecture.md the timing.
"""
import numpy as np
from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .array import MM_TAG_BITS, matmul_desc_layout
from .dma import DmaOp, dma_desc_layout
from .isa import INSTR_BITS, INSTR_LAYOUT, Dst, ErrorCode, Op, Sat
from .params import check_choice, check_int
from .pe import LANE_CHOICES, _log2, is_zero

__all__ = ["Controller", "ceil_div_const"]


def ceil_div_const(x, divisor, width):
    """``⌈x / divisor⌉`` for an unsigned ``width``-bit value and a constant divisor, by a
    multiplication with the rounded-up reciprocal (exact for every x < 2^width; checked)."""
    if divisor & (divisor - 1) == 0:
        return (x + (divisor - 1)) >> _log2(divisor)
    xw = width + 1                      # x + divisor − 1 < 2^(width+1) for divisor < 2^width
    s = xw + (divisor - 1).bit_length()
    c = -(-(1 << s) // divisor)
    xs = np.arange(1 << xw, dtype=np.int64)
    if not np.array_equal((xs * c) >> s, xs // divisor):   # pragma: no cover - a proof check
        raise AssertionError(f"reciprocal of {divisor} is not exact over {xw} bits")
    return ((x + (divisor - 1)) * c) >> s


class Controller(wiring.Component):
    """Runs the program: loads it into IMEM, then fetches, checks and dispatches instructions.

    Ports
    -----
    start, clear : In(1)
        Pulses from CTRL. ``start`` (from idle, halted or error) resets the counters, checks
        PROG_LEN and loads the program; ``clear`` returns to idle and zeroes the counters.
    prog_base, prog_len : In(32)
    busy, halted, error : Out(1); code : Out(8); pc : Out(16)
        STATUS and PC (the current instruction; after HALT the HALT, after an error the
        failing instruction or PROG_LEN). ``busy`` stays high after an error until queued DMA
        transfers and the array have finished (bounded).
    cycles, mac_cycles, stall_dma, stall_wb, instret, array_cycles : Out(32)
        The counters of docs/isa.md (ARRAY_CYCLES: cycles with ``array_busy``).
    dma : Out(stream.Signature(dma_desc_layout())); dma_idle, dma_loads_idle : In(1)
        ``dma_idle``: nothing queued or running (SYNC, HALT, the program load);
        ``dma_loads_idle``: no load queued or running (MATMUL).
    array : Out(stream.Signature(matmul_desc_layout())); array_active, array_busy, array_mac,
    array_stall_wb : In(1)
    imem_w_en, imem_w_addr, imem_w_data : In
        Program words from the DMA engine.

    Every instruction takes 9 cycles from fetch to dispatch (IMEM read, six decode stages
    whose last raises any error, dispatch); MATMUL, SYNC, HALT and full-queue DMA
    instructions then wait for their interlock. The array runs a MATMUL while the controller
    goes on, so fetch and decode hide behind compute.

    Interlocks (docs/architecture.md, *Ordering*): a MATMUL waits until no load is queued or
    running in the DMA (``dma_loads_idle``; queued STORE_Cs do not hold it) and, behind a
    MATMUL with dst AMEM/BBUF_*, until the array is idle. MATMULs are numbered (a wrapping
    count of those issued, never reset); a STORE_C carries the count of MATMULs issued before
    it as its ``tag``, and the DMA starts it once the array's completion count reaches the tag.
    """

    def __init__(self, *, pes, lanes, amem_depth, cmem_depth, bbuf_depth, pbuf_depth,
                 imem_depth):
        self._pes = check_int("pes", pes, lo=1, hi=64)
        self._lanes = check_choice("lanes", lanes, LANE_CHOICES)
        self._depths = dict(amem=amem_depth, cmem=cmem_depth, bbuf=bbuf_depth, pbuf=pbuf_depth,
                            imem=imem_depth)
        for name, v in self._depths.items():
            check_int(f"{name}_depth", v, lo=1, hi=1 << 16)
        super().__init__({
            "start": In(1), "clear": In(1),
            "prog_base": In(32), "prog_len": In(32),
            "busy": Out(1), "halted": Out(1), "error": Out(1), "code": Out(8), "pc": Out(16),
            "cycles": Out(32), "mac_cycles": Out(32), "stall_dma": Out(32), "stall_wb": Out(32),
            "instret": Out(32), "array_cycles": Out(32),
            "dma": Out(stream.Signature(dma_desc_layout())),
            "dma_idle": In(1), "dma_loads_idle": In(1),
            "array": Out(stream.Signature(matmul_desc_layout())),
            "array_active": In(1), "array_busy": In(1), "array_mac": In(1),
            "array_stall_wb": In(1),
            "imem_w_en": In(1), "imem_w_addr": In(16), "imem_w_data": In(INSTR_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        P, L = self._pes, self._lanes
        lsh = _log2(L)
        D = self._depths
        W = INSTR_BITS // (8 * L)

        m.submodules.imem = imem = Memory(shape=unsigned(INSTR_BITS), depth=D["imem"], init=[])
        iw = imem.write_port()
        ir_port = imem.read_port()
        m.d.comb += [iw.addr.eq(self.imem_w_addr), iw.data.eq(self.imem_w_data),
                     iw.en.eq(self.imem_w_en)]

        pc = Signal(16)
        ins = Signal(INSTR_LAYOUT)
        code = Signal(8)
        halted, error = Signal(), Signal()
        prev_local = Signal()   # a MATMUL in flight may write AMEM or BBUF
        mm_req = Signal()       # MATMUL handed to the array (array.valid)
        counters = {name: Signal(32, name=name) for name in
                    ("cycles", "mac_cycles", "stall_dma", "stall_wb", "instret",
                     "array_cycles")}
        mm_issued = Signal(MM_TAG_BITS)   # MATMULs handed to the array (wraps, never reset)
        m.d.comb += [self.pc.eq(pc), self.code.eq(code), self.halted.eq(halted),
                     self.error.eq(error)]
        m.d.comb += [getattr(self, k).eq(v) for k, v in counters.items()]

        # ---------------------------------------------------------------- decode
        # Stage 1: derived counts and field checks.
        f = ins
        op = f.op
        passes1, rowsl1, n1 = Signal(17), Signal(17), Signal(17)
        bad1 = Signal()
        is_mm = op == Op.MATMUL
        accum = f.flags[1]   # Flag.ACCUM
        tl = f.tiles << lsh
        sat_ok = Mux(f.dst == Dst.AMEM, f.sat != Sat.INT16,
                     Mux(f.dst[1], is_zero(f.sat), 1))   # BBUF: Sat.INT8 only
        # Stage 2: multiplier operands. Stage 3: products. Stage 4: ends. Stage 5: compares.
        # Stage 6: the error code (first failing check). One register level per step.
        fa2, fo2 = Signal(17), Signal(17)
        fb2 = Signal(8)
        pa3, pb3, po3 = Signal(33), Signal(33), Signal(33)
        a_end4, b_end4, p_end4, o_end4 = (Signal(35, name=n) for n in
                                          ("a_end4", "b_end4", "p_end4", "o_end4"))
        o_lim4 = Signal(17)
        o_code4 = Signal(8)
        check_a4, check_b4, check_p4, check_o4 = (Signal(name=n) for n in (
            "check_a4", "check_b4", "check_p4", "check_o4"))
        bad = {k: Signal(name=f"bad{k}") for k in range(2, 6)}
        n2, n3 = Signal(17), Signal(17)
        n_tl = Signal(17)
        legal5, a_bad5, o_bad5, b_bad5, p_bad5 = (Signal(name=n) for n in (
            "legal5", "a_bad5", "o_bad5", "b_bad5", "p_bad5"))
        o_code5 = Signal(8)
        err6 = Signal(8)

        m.d.sync += [
            passes1.eq(ceil_div_const(f.rows, P, 16)),
            rowsl1.eq((f.rows + (L - 1)) >> lsh),
            n1.eq(Mux(is_zero(f.count), tl, f.count[:17])),
            bad1.eq(is_mm & (is_zero(f.rows) | is_zero(f.k) | is_zero(f.tiles) | (f.dst > 3) |
                             (f.sat > 3) | f.flags[3:].any() |
                             (accum & f.dst.any()) | (f.count > tl) | ~sat_ok)),
        ]
        # Stage 2.
        rm1 = Mux(is_zero(passes1), 0, passes1 - 1)
        with m.If(op == Op.MATMUL):
            m.d.sync += [fa2.eq(rm1), fb2.eq(f.tiles),
                         fo2.eq(Mux(f.dst == Dst.BBUF_ROWS, f.tiles - 1,
                                    Mux(f.dst == Dst.BBUF_T, rowsl1 - 1, rm1)))]
        with m.Elif(op == Op.LOAD_A):
            m.d.sync += [fa2.eq(rm1), fb2.eq(0), fo2.eq(0)]
        with m.Else():
            m.d.sync += [fa2.eq(0), fb2.eq(0), fo2.eq(rm1)]
        m.d.sync += [bad[2].eq(bad1), n2.eq(n1), n_tl.eq(tl)]
        # Stage 3.
        m.d.sync += [pa3.eq(fa2 * f.a_stride), pb3.eq(fb2 * f.k), po3.eq(fo2 * f.out_stride),
                     bad[3].eq(bad[2]), n3.eq(n2)]
        # Stage 4.
        with m.If(op == Op.MATMUL):
            o_extent = Mux(f.dst == Dst.BBUF_ROWS, f.rows, n3)
            m.d.sync += [
                a_end4.eq(f.a_base + pa3 + f.k), check_a4.eq(1),
                b_end4.eq(f.b_base + pb3), check_b4.eq(1),
                p_end4.eq(f.p_base + f.tiles),
                check_p4.eq(f.flags[0] | f.dst.any()),   # BIAS, or requantized
                o_end4.eq(f.out_base + po3 + o_extent), check_o4.eq(1),
            ]
            with m.If(is_zero(f.dst)):
                m.d.sync += [o_lim4.eq(D["cmem"]), o_code4.eq(ErrorCode.CMEM_RANGE)]
            with m.Elif(f.dst == Dst.AMEM):
                m.d.sync += [o_lim4.eq(D["amem"]), o_code4.eq(ErrorCode.AMEM_RANGE)]
            with m.Else():
                m.d.sync += [o_lim4.eq(D["bbuf"]), o_code4.eq(ErrorCode.BBUF_RANGE)]
        with m.Elif(op == Op.LOAD_A):
            m.d.sync += [a_end4.eq(f.a_base + pa3 + f.k),
                         check_a4.eq(f.rows.any() & f.k.any()),
                         check_b4.eq(0), check_p4.eq(0), check_o4.eq(0)]
        with m.Elif(op == Op.LOAD_B):
            m.d.sync += [b_end4.eq(f.b_base + f.count), check_b4.eq(1),
                         check_a4.eq(0), check_p4.eq(0), check_o4.eq(0)]
        with m.Elif(op == Op.LOAD_P):
            m.d.sync += [p_end4.eq(f.p_base + f.count), check_p4.eq(1),
                         check_a4.eq(0), check_b4.eq(0), check_o4.eq(0)]
        with m.Elif(op == Op.STORE_C):
            m.d.sync += [o_end4.eq(f.out_base + po3 + n_tl),
                         check_o4.eq(f.rows.any() & f.tiles.any()),
                         o_lim4.eq(D["cmem"]), o_code4.eq(ErrorCode.CMEM_RANGE),
                         check_a4.eq(0), check_b4.eq(0), check_p4.eq(0)]
        with m.Else():
            m.d.sync += [check_a4.eq(0), check_b4.eq(0), check_p4.eq(0), check_o4.eq(0)]
        m.d.sync += bad[4].eq(bad[3])
        # Stage 5.
        m.d.sync += [
            legal5.eq(is_zero(op) | (op == Op.HALT) | (op == Op.SYNC) | (op == Op.LOAD_B) |
                      (op == Op.LOAD_A) | (op == Op.LOAD_P) | (op == Op.STORE_C) |
                      (op == Op.MATMUL)),
            a_bad5.eq(check_a4 & (a_end4 > D["amem"])),
            o_bad5.eq(check_o4 & (o_end4 > o_lim4)),
            b_bad5.eq(check_b4 & (b_end4 > D["bbuf"])),
            p_bad5.eq(check_p4 & (p_end4 > D["pbuf"])),
            o_code5.eq(o_code4), bad[5].eq(bad[4]),
        ]
        # Stage 6.
        o_bad = o_bad5
        m.d.sync += err6.eq(
            Mux(~legal5, ErrorCode.ILLEGAL_OPCODE,
            Mux(bad[5], ErrorCode.BAD_FIELD,
            Mux(a_bad5, ErrorCode.AMEM_RANGE,
            Mux(o_bad & (o_code5 == ErrorCode.AMEM_RANGE), ErrorCode.AMEM_RANGE,
            Mux(o_bad & (o_code5 == ErrorCode.CMEM_RANGE), ErrorCode.CMEM_RANGE,
            Mux(b_bad5 | (o_bad & (o_code5 == ErrorCode.BBUF_RANGE)), ErrorCode.BBUF_RANGE,
            Mux(p_bad5, ErrorCode.PBUF_RANGE, ErrorCode.NONE))))))))

        # ---------------------------------------------------------------- dispatch values
        dd = self.dma.payload
        m.d.comb += [dd.ext_addr.eq(f.ext_addr), dd.count.eq(f.count), dd.rows.eq(f.rows),
                     dd.k.eq(f.k), dd.tiles.eq(f.tiles), dd.tag.eq(mm_issued)]
        with m.If(op == Op.LOAD_A):
            m.d.comb += [dd.op.eq(DmaOp.LOAD_A), dd.base.eq(f.a_base),
                         dd.stride.eq(f.a_stride)]
        with m.Elif(op == Op.LOAD_P):
            m.d.comb += [dd.op.eq(DmaOp.LOAD_P), dd.base.eq(f.p_base)]
        with m.Elif(op == Op.STORE_C):
            m.d.comb += [dd.op.eq(DmaOp.STORE_C), dd.base.eq(f.out_base),
                         dd.stride.eq(f.out_stride)]
        with m.Else():
            m.d.comb += [dd.op.eq(DmaOp.LOAD_B), dd.base.eq(f.b_base)]
        ad = self.array.payload
        m.d.comb += [
            ad.rows.eq(f.rows), ad.passes.eq(passes1), ad.k.eq(f.k), ad.tiles.eq(f.tiles),
            ad.ncols.eq(n3), ad.a_base.eq(f.a_base), ad.a_stride.eq(f.a_stride),
            ad.b_base.eq(f.b_base), ad.p_base.eq(f.p_base), ad.out_base.eq(f.out_base),
            ad.out_stride.eq(f.out_stride), ad.dst.eq(f.dst), ad.sat.eq(f.sat),
            ad.flags.eq(f.flags),
        ]

        # ---------------------------------------------------------------- state machine
        running = Signal()
        retire = Signal()
        stall_dma = Signal()
        m.d.comb += self.busy.eq(running | ~self.dma_idle | self.array_busy)

        with m.If(running):
            m.d.sync += counters["cycles"].eq(counters["cycles"] + 1)
        with m.If(self.array_mac):
            m.d.sync += counters["mac_cycles"].eq(counters["mac_cycles"] + 1)
        with m.If(self.array_busy):
            m.d.sync += counters["array_cycles"].eq(counters["array_cycles"] + 1)
        with m.If(self.array_stall_wb):
            m.d.sync += counters["stall_wb"].eq(counters["stall_wb"] + 1)
        with m.If(stall_dma):
            m.d.sync += counters["stall_dma"].eq(counters["stall_dma"] + 1)
        with m.If(retire):   # PC stays on a HALT
            m.d.sync += counters["instret"].eq(counters["instret"] + 1)
            with m.If(op != Op.HALT):
                m.d.sync += pc.eq(pc + 1)

        idle_all = self.dma_idle & ~self.array_busy
        # States (a plain register: lint wants every case statement complete).
        (STOPPED, LOAD, LOAD_WAIT, FETCH, FETCH2,
         DEC1, DEC2, DEC3, DEC4, DEC5, DEC6, EXEC) = range(12)
        state = Signal(range(16), init=STOPPED)

        def fail(c):
            m.d.sync += [error.eq(1), code.eq(c), running.eq(0), state.eq(STOPPED)]

        with m.If(state == LOAD):
            m.d.comb += [
                self.dma.valid.eq(1), dd.op.eq(DmaOp.LOAD_I),
                dd.ext_addr.eq(self.prog_base), dd.count.eq(self.prog_len << _log2(W)),
                dd.base.eq(0),
            ]
            with m.If(self.dma.ready):
                m.d.sync += state.eq(LOAD_WAIT)
        with m.Elif(state == LOAD_WAIT):
            m.d.comb += stall_dma.eq(~self.dma_idle)
            with m.If(self.dma_idle):
                m.d.sync += state.eq(FETCH)
        with m.Elif(state == FETCH):
            m.d.comb += [ir_port.addr.eq(pc), ir_port.en.eq(1)]
            m.d.sync += state.eq(FETCH2)
        with m.Elif(state == FETCH2):
            m.d.sync += [ins.eq(ir_port.data), state.eq(DEC1)]
        with m.Elif((state >= DEC1) & (state <= DEC6)):
            m.d.sync += state.eq(state + 1)
        with m.Elif(state == EXEC):
            with m.If(err6.any()):
                fail(err6)
            with m.Else():
                go = Signal()
                with m.If(is_zero(op)):
                    m.d.comb += go.eq(1)
                with m.Elif((op == Op.HALT) | (op == Op.SYNC)):
                    m.d.comb += [go.eq(idle_all), stall_dma.eq(~self.dma_idle)]
                with m.Elif((op == Op.LOAD_B) | (op == Op.LOAD_A) | (op == Op.LOAD_P) |
                            (op == Op.STORE_C)):
                    m.d.comb += [self.dma.valid.eq(1), go.eq(self.dma.ready),
                                 stall_dma.eq(~self.dma.ready)]
                with m.Else():   # MATMUL (other opcodes stopped at decode)
                    # The request is a register (the array's accept enables hundreds of its
                    # registers); it may rise while the previous MATMUL still issues beats and
                    # is accepted when the sequencer is free (ready), so MATMULs follow each
                    # other with a one-cycle gap. Once raised its conditions stay true: the
                    # DMA gets no new load meanwhile, and a previous MATMUL writing AMEM/BBUF
                    # has finished. Loads issued before the MATMUL must have landed; STORE_Cs
                    # do not hold it (they wait for their own MATMULs in the DMA).
                    ok = self.dma_loads_idle & ~(prev_local & self.array_busy)
                    with m.If(ok):
                        m.d.sync += mm_req.eq(1)
                    m.d.comb += [self.array.valid.eq(mm_req), go.eq(mm_req & self.array.ready),
                                 stall_dma.eq(~self.dma_loads_idle)]
                    with m.If(go):
                        m.d.sync += [prev_local.eq(f.dst.any()), mm_req.eq(0),
                                     mm_issued.eq(mm_issued + 1)]
                with m.If(go):
                    m.d.comb += retire.eq(1)
                    with m.If(op == Op.HALT):
                        m.d.sync += [halted.eq(1), running.eq(0), state.eq(STOPPED)]
                    with m.Elif(pc + 1 == self.prog_len):
                        fail(ErrorCode.PROGRAM_RANGE)
                    with m.Else():
                        m.d.sync += state.eq(FETCH)
        with m.Else():   # STOPPED
            with m.If(self.start):
                m.d.sync += [c.eq(0) for c in counters.values()]
                m.d.sync += [halted.eq(0), error.eq(0), code.eq(0), pc.eq(0)]
                with m.If(is_zero(self.prog_len) | (self.prog_len > D["imem"])):
                    fail(ErrorCode.PROGRAM_RANGE)
                with m.Else():
                    m.d.sync += [running.eq(1), state.eq(LOAD)]
            with m.Elif(self.clear):
                m.d.sync += [c.eq(0) for c in counters.values()]
                m.d.sync += [halted.eq(0), error.eq(0), code.eq(0), pc.eq(0)]
        return m
