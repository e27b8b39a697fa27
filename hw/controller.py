"""Controller: program load, fetch, decode with range checks, dispatch, interlocks, counters.

docs/isa.md defines the instructions and error codes; docs/architecture.md the timing.
"""
import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .array import DELTA_WORDS, MM_TAG_BITS, matmul_desc_layout
from .dma import Dma, DmaOp, dma_desc_layout
from .isa import INSTR_BITS, INSTR_LAYOUT, Dst, ErrorCode, Flag, Op, Sat
from .params import check_choice, check_int
from .pe import ACT_ENTRIES, LANE_CHOICES, RS_ENTRIES, _log2, is_zero
from .rowunit import MAX_ROW_K, RowDatapath, row_desc_layout

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
    dma : Out(stream.Signature(dma_desc_layout())); dma_idle : In(1); dma_loads : In
        ``dma_idle``: nothing queued or running (SYNC, HALT, the program load);
        ``dma_loads``: loads queued or running (the load lag of MATMUL and row operations).
    array : Out(stream.Signature(matmul_desc_layout())); row : Out(stream.Signature(
    row_desc_layout())); array_active, array_busy, array_mac, array_stall_wb : In(1)
        MATMULs and row operations (SOFTMAX, LAYERNORM, RADD, RECIP) to the array.
    imem_w_en, imem_w_addr, imem_w_data : In
        Program words from the DMA engine.

    Every instruction takes 9 cycles from fetch to dispatch (IMEM read, six decode stages
    whose last raises any error, dispatch); MATMUL, SYNC, HALT and full-queue DMA
    instructions then wait for their interlock. The array runs a MATMUL while the controller
    goes on, so fetch and decode hide behind compute.

    Interlocks (docs/architecture.md, *Ordering*): a MATMUL or row operation waits until at
    most ``lag`` (``ext_addr[7:0]``) loads are queued or running in the DMA (loads complete in
    order, so every earlier one but the last ``lag`` has landed; queued STORE_Cs do not hold
    it). A MATMUL also waits, behind a MATMUL with dst AMEM/BBUF_*/AMEM_T or REQ or behind a row
    operation, until the array is idle; a row operation always waits until the array is idle.
    Array operations are numbered (a wrapping count of those issued, never reset); a STORE_C
    carries the count issued before it as its ``tag``, and the DMA starts it once the array's
    completion count reaches the tag.
    """

    def __init__(self, *, pes, lanes, amem_depth, cmem_depth, bbuf_depth, pbuf_depth,
                 imem_depth, delta_k=None, delta=True):
        self._pes = check_int("pes", pes, lo=1, hi=64)
        if not isinstance(delta, bool):
            raise TypeError(f"delta must be True or False, not {delta!r}")
        self._delta = delta       # False: no delta datapath, DMATMUL is ILLEGAL_OPCODE
        if delta_k is None:
            delta_k = DELTA_WORDS * lanes
        self._delta_k = check_int("delta_k", delta_k, lo=1, hi=1024)
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
            "dma_idle": In(1), "dma_loads": In(range(Dma.QUEUE_DEPTH + 2)),
            "array": Out(stream.Signature(matmul_desc_layout())),
            "row": Out(stream.Signature(row_desc_layout())),
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
        # The last array operation wrote AMEM/BBUF, REQ-ed into CMEM in D_Y, or was a row
        # operation: a MATMUL behind it waits for the array to be idle.
        prev_local = Signal()
        mm_req = Signal()       # MATMUL handed to the array (array.valid)
        row_req = Signal()      # row operation handed to the array (row.valid)
        counters = {name: Signal(32, name=name) for name in
                    ("cycles", "mac_cycles", "stall_dma", "stall_wb", "instret",
                     "array_cycles")}
        mm_issued = Signal(MM_TAG_BITS)   # array operations issued (wraps, never reset)
        m.d.comb += [self.pc.eq(pc), self.code.eq(code), self.halted.eq(halted),
                     self.error.eq(error)]
        m.d.comb += [getattr(self, k).eq(v) for k, v in counters.items()]

        # ---------------------------------------------------------------- decode
        # Stage 1: derived counts and field checks (BAD_FIELD).
        f = ins
        op = f.op
        fl = f.flags
        passes1, rowsl1, n1 = Signal(17), Signal(17), Signal(17)
        kt1 = Signal(17)          # ⌈k/L⌉: PBUF tiles of a row operation
        bad1 = Signal()
        gpass1 = Signal(9)        # DMATMUL: ⌈tiles/P⌉ column passes
        is_dm = (op == Op.DMATMUL) if self._delta else Const(0, 1)   # delta=False: illegal
        is_mm = (op == Op.MATMUL) | is_dm
        is_sm, is_ln, is_radd = op == Op.SOFTMAX, op == Op.LAYERNORM, op == Op.RADD
        is_rcp = op == Op.RECIP
        is_row = is_sm | is_ln | is_radd | is_rcp
        is_dmaop = ((op == Op.LOAD_B) | (op == Op.LOAD_A) | (op == Op.LOAD_P) |
                    (op == Op.STORE_C) | (op == Op.LOAD_C) | (op == Op.LOAD_T))
        accum, rscale, req, act = fl[1], fl[3], fl[4], fl[5]    # hw.isa.Flag bits
        res = is_ln & fl[6]      # LAYERNORM RES: fused residual add
        # RADD's AMEM row stride: imm[15:0]; LAYERNORM RES (imm holds r_D): ext_addr[23:8].
        x_stride = Mux(res, f.ext_addr[8:24], f.imm[:16])
        tl = f.tiles << lsh
        dst_a = (f.dst == Dst.AMEM) | (f.dst == Dst.AMEM_T)     # int9 into AMEM
        dst_amt = f.dst == Dst.AMEM_T
        sat_ok = Mux(dst_a, f.sat != Sat.INT16,
                     Mux(f.dst[1], is_zero(f.sat), 1))   # BBUF: Sat.INT8 only
        allowed = Signal(8)      # the flag bits the opcode has
        maxc = (op == Op.MATMUL) & fl[7]   # MAXC: row maxima into CMEM column N
        m.d.comb += allowed.eq(Mux(is_dm, Flag.BIAS | Flag.RELU | Flag.REQ | Flag.ACT,
                                   Mux(is_mm, 0x3F | Flag.MAXC,
                                       Mux(is_sm, Flag.NORM | Flag.MAXC,
                                           Mux(is_ln, Flag.RES, 0)))))
        # DMATMUL: K within the delta buffers, dst AMEM or CMEM with REQ, every base and
        # stride a multiple of L (whole AMEM rows are read and written).
        dm_bad = ((f.k > self._delta_k) | (f.dst > Dst.AMEM) | (is_zero(f.dst) & ~req) |
                  (f.a_base | f.a_stride | f.b_base | f.out_base | f.out_stride)[:lsh].any())
        mm_bad = (is_zero(f.rows) | is_zero(f.k) | is_zero(f.tiles) | (f.dst > Dst.AMEM_T) |
                  (f.sat > 3) | (f.count > tl) | ~sat_ok |
                  (accum & (f.dst[1] | dst_amt)) |                       # ACCUM: CMEM/AMEM
                  (req & f.dst.any()) |                                  # REQ: dst CMEM
                  (act & (~dst_a | f.sat.any())) |                       # ACT: AMEM(_T), INT8
                  (rscale & is_zero(f.dst) & ~req) |                     # RSCALE → CMEM: REQ
                  (dst_amt & (f.out_base[:lsh].any() | f.out_stride[:lsh].any())) |  # L-aligned
                  (maxc & (f.dst.any() | req)))                          # MAXC: s into CMEM
        row_bad = (is_zero(f.k) | (f.k > MAX_ROW_K) | is_zero(f.rows) | (f.dst > Dst.AMEM) |
                   (~is_sm & ((f.sat > 3) | ((f.dst == Dst.AMEM) & (f.sat == Sat.INT16)))) |
                   (is_rcp & ((f.k != 1) | f.dst.any())))    # RECIP: k = 1, writes RS only
        lt_bad = (op == Op.LOAD_T) & (f.a_base + f.count > ACT_ENTRIES)
        # Stage 2: multiplier operands. Stage 3: products. Stage 4: ends. Stage 5: compares.
        # Stage 6: the error code (first failing check). One register level per step.
        fa2, fo2, fb2 = Signal(17), Signal(17), Signal(17)
        fbm2 = Signal(16)
        pa3, pb3, po3 = Signal(33), Signal(33), Signal(33)
        a_end4, b_end4, p_end4, o_end4 = (Signal(35, name=n) for n in
                                          ("a_end4", "b_end4", "p_end4", "o_end4"))
        a_lim4, b_lim4, o_lim4 = Signal(17), Signal(17), Signal(17)
        a_code4, b_code4, o_code4 = Signal(8), Signal(8), Signal(8)
        check_a4, check_b4, check_p4, check_o4, check_c4 = (Signal(name=n) for n in (
            "check_a4", "check_b4", "check_p4", "check_o4", "check_c4"))
        bad = {k: Signal(name=f"bad{k}") for k in range(2, 6)}
        n2, n3 = Signal(17), Signal(17)
        n_tl = Signal(17)
        legal5 = Signal()
        # Stage 5: one bit per range error code that some check raises.
        amem5, cmem5, bbuf5, pbuf5 = (Signal(name=n) for n in ("amem5", "cmem5", "bbuf5",
                                                                "pbuf5"))
        err6 = Signal(8)

        m.d.sync += [
            passes1.eq(ceil_div_const(f.rows, P, 16)),
            rowsl1.eq((f.rows + (L - 1)) >> lsh),
            kt1.eq((f.k + (L - 1)) >> lsh),
            n1.eq(Mux(is_zero(f.count), tl, f.count[:17])),
            bad1.eq((fl & ~allowed).any() | (is_mm & mm_bad) | (is_row & row_bad) | lt_bad |
                    (is_dm & dm_bad)),
            gpass1.eq(ceil_div_const(f.tiles, P, 8)),
        ]
        # Stage 2 (and the row-scale bound: RSCALE or SOFTMAX in attention mode use one RS
        # entry per local row).
        rm1 = Mux(is_zero(passes1), 0, passes1 - 1)
        # MAXC: column N must not reach the next row (out_stride > N).
        mx_bad = maxc & (f.out_stride <= n1)
        rs_bad = mx_bad | ((((is_mm & rscale) | (is_sm & ~fl[3]) | is_rcp) &
                   (passes1 > RS_ENTRIES)) |
                  (res & (passes1 > RowDatapath.RES_ROWS)))   # RES: its row-constant table
        # AMEM_T: ⌈N/P⌉ − 1 column groups of out_stride (N ≥ 1 unless tiles = 0: BAD_FIELD).
        cg1 = ceil_div_const(n1, P, 17)
        with m.If(is_dm):
            # W slices in AMEM: ⌈tiles/P⌉ passes of K rows of L elements per PE.
            m.d.sync += [fa2.eq(rm1), fb2.eq(gpass1), fbm2.eq(f.k << lsh), fo2.eq(rm1)]
        with m.Elif(is_mm):
            m.d.sync += [fa2.eq(rm1), fb2.eq(f.tiles), fbm2.eq(f.k),
                         fo2.eq(Mux(f.dst == Dst.BBUF_ROWS, f.tiles - 1,
                                    Mux(f.dst == Dst.BBUF_T, rowsl1 - 1,
                                        Mux(dst_amt, cg1 - 1, rm1))))]
        with m.Elif((op == Op.LOAD_A) | is_row):
            m.d.sync += [fa2.eq(rm1), fb2.eq(rm1), fbm2.eq(x_stride), fo2.eq(rm1)]
        with m.Else():
            m.d.sync += [fa2.eq(0), fb2.eq(0), fbm2.eq(0), fo2.eq(rm1)]
        m.d.sync += [bad[2].eq(bad1 | rs_bad), n2.eq(n1), n_tl.eq(tl)]
        # Stage 3.
        m.d.sync += [pa3.eq(fa2 * f.a_stride), pb3.eq(fb2 * fbm2), po3.eq(fo2 * f.out_stride),
                     bad[3].eq(bad[2]), n3.eq(n2)]
        # Stage 4: the end of every region (one past its last element) and its memory.
        def region(lim, code, depth, err):
            return [lim.eq(depth), code.eq(err)]

        m.d.sync += [check_a4.eq(0), check_b4.eq(0), check_p4.eq(0), check_o4.eq(0),
                     check_c4.eq(0)]
        m.d.sync += region(a_lim4, a_code4, D["amem"], ErrorCode.AMEM_RANGE)
        m.d.sync += region(b_lim4, b_code4, D["bbuf"], ErrorCode.BBUF_RANGE)
        with m.If(is_mm):
            o_extent = Mux((f.dst == Dst.BBUF_ROWS) | dst_amt, f.rows, n3 + maxc)
            m.d.sync += [
                a_end4.eq(f.a_base + pa3 + f.k), check_a4.eq(1),
                b_end4.eq(f.b_base + pb3), check_b4.eq(1),
                p_end4.eq(f.p_base + f.tiles),
                check_p4.eq(fl[0] | req | f.dst.any()),   # BIAS, REQ, or requantized
                o_end4.eq(f.out_base + po3 + o_extent), check_o4.eq(1),
                check_c4.eq(accum & (f.dst == Dst.AMEM)),  # ACCUM reads CMEM at the output
            ]
            with m.If(is_dm):
                m.d.sync += region(b_lim4, b_code4, D["amem"], ErrorCode.AMEM_RANGE)
            with m.If(is_zero(f.dst)):
                m.d.sync += region(o_lim4, o_code4, D["cmem"], ErrorCode.CMEM_RANGE)
            with m.Elif(dst_a):
                m.d.sync += region(o_lim4, o_code4, D["amem"], ErrorCode.AMEM_RANGE)
            with m.Else():
                m.d.sync += region(o_lim4, o_code4, D["bbuf"], ErrorCode.BBUF_RANGE)
        with m.Elif(is_row):
            # Source rows in CMEM; RADD's x in AMEM; the destination (RECIP: none, it writes
            # RS); PBUF (LAYERNORM, RADD).
            m.d.sync += [
                # SOFTMAX MAXC also reads column k (the row maximum)
                a_end4.eq(f.a_base + pa3 + f.k + (is_sm & fl[7])), check_a4.eq(1),
                b_end4.eq(f.b_base + pb3 + f.k), check_b4.eq(is_radd | res),
                # RES: the residual's m / sh in the ⌈k/L⌉ tiles after G, B
                p_end4.eq(f.p_base + Mux(res, kt1 << 1, kt1)), check_p4.eq(~is_sm & ~is_rcp),
                o_end4.eq(f.out_base + po3 + f.k), check_o4.eq(~is_rcp),
            ]
            m.d.sync += region(a_lim4, a_code4, D["cmem"], ErrorCode.CMEM_RANGE)
            m.d.sync += region(b_lim4, b_code4, D["amem"], ErrorCode.AMEM_RANGE)
            with m.If(f.dst == Dst.AMEM):
                m.d.sync += region(o_lim4, o_code4, D["amem"], ErrorCode.AMEM_RANGE)
            with m.Else():
                m.d.sync += region(o_lim4, o_code4, D["cmem"], ErrorCode.CMEM_RANGE)
        with m.Elif(op == Op.LOAD_A):
            m.d.sync += [a_end4.eq(f.a_base + pa3 + f.k), check_a4.eq(f.rows.any() & f.k.any())]
        with m.Elif(op == Op.LOAD_B):
            m.d.sync += [b_end4.eq(f.b_base + f.count), check_b4.eq(1)]
        with m.Elif(op == Op.LOAD_P):
            m.d.sync += [p_end4.eq(f.p_base + f.count), check_p4.eq(1)]
        with m.Elif((op == Op.STORE_C) | (op == Op.LOAD_C)):
            m.d.sync += [o_end4.eq(f.out_base + po3 + n_tl),
                         check_o4.eq(f.rows.any() & f.tiles.any())]
            m.d.sync += region(o_lim4, o_code4, D["cmem"], ErrorCode.CMEM_RANGE)
        m.d.sync += bad[4].eq(bad[3])
        # Stage 5.
        a_bad = check_a4 & (a_end4 > a_lim4)
        b_bad = check_b4 & (b_end4 > b_lim4)
        o_bad = check_o4 & (o_end4 > o_lim4)
        c_bad = check_c4 & (o_end4 > D["cmem"])
        p_bad = check_p4 & (p_end4 > D["pbuf"])

        def raised(code):
            return ((a_bad & (a_code4 == code)) | (b_bad & (b_code4 == code)) |
                    (o_bad & (o_code4 == code)))
        m.d.sync += [
            legal5.eq(is_zero(op) | (op == Op.HALT) | (op == Op.SYNC) | is_dmaop | is_mm |
                      is_row),
            amem5.eq(raised(ErrorCode.AMEM_RANGE)),
            cmem5.eq(raised(ErrorCode.CMEM_RANGE) | c_bad),
            bbuf5.eq(raised(ErrorCode.BBUF_RANGE)),
            pbuf5.eq(p_bad),
            bad[5].eq(bad[4]),
        ]
        # Stage 6: the first of ILLEGAL_OPCODE, BAD_FIELD, AMEM_RANGE, CMEM_RANGE, BBUF_RANGE,
        # PBUF_RANGE.
        m.d.sync += err6.eq(
            Mux(~legal5, ErrorCode.ILLEGAL_OPCODE,
            Mux(bad[5], ErrorCode.BAD_FIELD,
            Mux(amem5, ErrorCode.AMEM_RANGE,
            Mux(cmem5, ErrorCode.CMEM_RANGE,
            Mux(bbuf5, ErrorCode.BBUF_RANGE,
            Mux(pbuf5, ErrorCode.PBUF_RANGE, ErrorCode.NONE)))))))

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
        with m.Elif(op == Op.LOAD_C):
            m.d.comb += [dd.op.eq(DmaOp.LOAD_C), dd.base.eq(f.out_base),
                         dd.stride.eq(f.out_stride)]
        with m.Elif(op == Op.LOAD_T):
            m.d.comb += [dd.op.eq(DmaOp.LOAD_T), dd.base.eq(f.a_base)]
        with m.Else():
            m.d.comb += [dd.op.eq(DmaOp.LOAD_B), dd.base.eq(f.b_base)]
        ad = self.array.payload
        m.d.comb += [
            ad.rows.eq(f.rows), ad.passes.eq(passes1), ad.k.eq(f.k), ad.tiles.eq(f.tiles),
            ad.ncols.eq(n3), ad.a_base.eq(f.a_base), ad.a_stride.eq(f.a_stride),
            ad.b_base.eq(f.b_base), ad.p_base.eq(f.p_base), ad.out_base.eq(f.out_base),
            ad.out_stride.eq(f.out_stride), ad.dst.eq(f.dst), ad.sat.eq(f.sat),
            ad.flags.eq(fl), ad.act_sel.eq(f.imm[0]),
            ad.delta.eq(is_dm), ad.maxc.eq(maxc), ad.theta.eq(f.imm[8:16]), ad.gpasses.eq(gpass1),
        ]
        rd = self.row.payload
        m.d.comb += [
            rd.op.eq(op[:2]),     # SOFTMAX 0x30, LAYERNORM 0x31, RADD 0x32, RECIP 0x33 → RowOp
            rd.norm.eq(fl[3]), rd.res.eq(res), rd.maxc.eq(is_sm & fl[7]),
            rd.rows.eq(f.rows), rd.passes.eq(passes1), rd.k.eq(f.k),
            rd.a_base.eq(f.a_base), rd.a_stride.eq(f.a_stride), rd.b_base.eq(f.b_base),
            rd.b_stride.eq(x_stride), rd.out_base.eq(f.out_base),
            rd.out_stride.eq(f.out_stride), rd.dst.eq(f.dst), rd.sat.eq(f.sat),
            rd.p_base.eq(f.p_base), rd.imm.eq(f.imm), rd.eps.eq(Cat(f.count, f.tiles)),
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
        lag_ok = self.dma_loads <= f.ext_addr[:8]
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
                with m.Elif(is_dmaop):
                    m.d.comb += [self.dma.valid.eq(1), go.eq(self.dma.ready),
                                 stall_dma.eq(~self.dma.ready)]
                with m.Elif(is_mm):
                    # The request is a register (the array's accept enables hundreds of its
                    # registers); it may rise while the previous MATMUL still issues beats and
                    # is accepted when the sequencer is free (ready), so MATMULs follow each
                    # other with a one-cycle gap. Once raised its conditions stay true: the
                    # DMA gets no new load meanwhile, and a previous MATMUL writing AMEM/BBUF
                    # has finished. The loads before it but the last `lag` must have landed;
                    # STORE_Cs do not hold it (they wait for their own MATMULs in the DMA).
                    # A DMATMUL runs alone: it waits for the array to be idle, and everything
                    # after it waits for its results (prev_local).
                    ok = lag_ok & ~((prev_local | is_dm) & self.array_busy)
                    with m.If(ok):
                        m.d.sync += mm_req.eq(1)
                    m.d.comb += [self.array.valid.eq(mm_req), go.eq(mm_req & self.array.ready),
                                 stall_dma.eq(~lag_ok)]
                    with m.If(go):
                        m.d.sync += [prev_local.eq(f.dst.any() | req | is_dm), mm_req.eq(0),
                                     mm_issued.eq(mm_issued + 1)]
                with m.Else():   # a row operation (other opcodes stopped at decode)
                    with m.If(lag_ok & ~self.array_busy):
                        m.d.sync += row_req.eq(1)
                    m.d.comb += [self.row.valid.eq(row_req), go.eq(row_req & self.row.ready),
                                 stall_dma.eq(~lag_ok)]
                    with m.If(go):
                        m.d.sync += [prev_local.eq(1), row_req.eq(0),
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
