"""DMA engine: LOAD_B, LOAD_A, LOAD_P, LOAD_C, LOAD_T, STORE_C and the program load, queued
behind compute.

Layouts of ext memory and of the on-chip memories: docs/isa.md; dataflow:
docs/architecture.md.
"""
import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .array import (ADDR_BITS, MM_TAG_BITS, amem_w_layout, bbuf_w_layout, cmem_w_layout,
                    pbuf_w_layout, table_w_layout)
from .isa import INSTR_BITS, mem_cmd_layout, mem_rsp_layout
from .params import check_choice, check_int
from .pe import LANE_CHOICES, _log2, is_zero, pick

__all__ = ["DmaOp", "dma_desc_layout", "mem_signature", "Dma"]


class DmaOp(enum.IntEnum):
    LOAD_B = 0
    LOAD_A = 1
    LOAD_P = 2
    STORE_C = 3
    LOAD_I = 4    # the program: ``count`` words into IMEM
    LOAD_C = 5    # rows × tiles × 4 words into CMEM (the inverse of STORE_C)
    LOAD_T = 6    # ``count`` activation-table entries, L/2 per word


def dma_desc_layout():
    return data.StructLayout({
        "op": unsigned(3),
        "ext_addr": unsigned(32),
        "count": unsigned(32),
        "rows": unsigned(16),
        "k": unsigned(16),
        "tiles": unsigned(8),
        "base": unsigned(16),
        "stride": unsigned(16),
        "tag": unsigned(MM_TAG_BITS),   # STORE_C: MATMULs issued before it
    })


def mem_signature(lanes):
    """The ext-memory port seen from the accelerator (requests out, responses in)."""
    return wiring.Signature({
        "cmd": Out(stream.Signature(mem_cmd_layout(lanes))),
        "rsp": In(stream.Signature(mem_rsp_layout(lanes))),
    })


class Dma(wiring.Component):
    """The DMA engine: one transfer at a time from a queue of :attr:`QUEUE_DEPTH`.

    Ports
    -----
    cmd : In(stream.Signature(dma_desc_layout()))
        A transfer to queue (``op`` is :class:`DmaOp`; ``base``/``stride`` are the on-chip
        address fields of the instruction).
    idle : Out(1)
        The queue is empty and no transfer runs.
    loads_idle : Out(1)
        No load (LOAD_A/B/P/C/T, the program) is queued or running.
    loads : Out(range(QUEUE_DEPTH + 2))
        Loads queued or running: a count of load descriptors, up on acceptance, down when
        the load's last word is written. Loads complete in order, so a MATMUL or row
        operation with load lag ``lag`` may start once ``loads ≤ lag`` (STORE_Cs in the queue
        do not count).
    mm_done : In(MM_TAG_BITS)
        MATMULs complete for CMEM (the array's wrapping count). A STORE_C starts when
        ``mm_done`` has reached its ``tag`` (the MATMULs issued before it; wrap-safe
        compare), so it reads their results but never waits for later MATMULs.
    mem : Out(mem_signature(L))
        Ext memory. Reads are requested as fast as ``mem.cmd`` accepts them; responses are
        consumed in order as fast as the destination memory accepts them.
    bbuf_w, pbuf_w, amem_w, cmem_w, table_w : Out(stream.Signature(…))
        Writes into BBUF, PBUF, the AMEMs, the CMEMs (LOAD_C) and the activation tables
        (LOAD_T) (see :mod:`hw.array`).
    cmem_r_pe, cmem_r_addr : Out, cmem_rdata : In
        CMEM row reads for STORE_C (data two cycles after the address).
    cmem_r_free : In(1)
        The array's CMEM read port is free this cycle (an ACCUM drain has priority).
    imem_w_en, imem_w_addr, imem_w_data : Out
        The program, one 256-bit instruction per write.

    Throughput: LOAD_B, LOAD_P and the program one word per cycle; LOAD_A one word per cycle
    when the row start ``a_base + r·a_stride`` is a multiple of L, else two AMEM writes per
    word; STORE_C four words per (row, tile) in four cycles (five CMEM reads when the row
    start is not a multiple of L/4); LOAD_C one word per cycle when every row start is a
    multiple of L/4, else two CMEM writes per word; LOAD_T L/2 cycles per word (one entry per
    cycle).
    """
    QUEUE_DEPTH = 4

    def __init__(self, *, pes, lanes, imem_depth):
        self._pes = check_int("pes", pes, lo=1, hi=64)
        self._lanes = check_choice("lanes", lanes, LANE_CHOICES)
        self._imem_depth = check_int("imem_depth", imem_depth, lo=2, hi=1 << 16)
        super().__init__({
            "cmd": In(stream.Signature(dma_desc_layout())),
            "idle": Out(1),
            "loads_idle": Out(1),
            "loads": Out(range(self.QUEUE_DEPTH + 2)),
            "mm_done": In(MM_TAG_BITS),
            "mem": Out(mem_signature(lanes)),
            "bbuf_w": Out(stream.Signature(bbuf_w_layout(lanes))),
            "pbuf_w": Out(stream.Signature(pbuf_w_layout(lanes))),
            "amem_w": Out(stream.Signature(amem_w_layout(pes, lanes))),
            "cmem_w": Out(stream.Signature(cmem_w_layout(pes, lanes))),
            "table_w": Out(stream.Signature(table_w_layout())),
            "cmem_r_pe": Out(max(1, (pes - 1).bit_length())),
            "cmem_r_addr": Out(16),
            "cmem_rdata": In(8 * lanes),
            "cmem_r_free": In(1),
            "imem_w_en": Out(1),
            "imem_w_addr": Out(16),
            "imem_w_data": Out(INSTR_BITS),
        })

    pes = property(lambda self: self._pes)
    lanes = property(lambda self: self._lanes)
    imem_depth = property(lambda self: self._imem_depth)

    def elaborate(self, platform):
        m = Module()
        P, L = self._pes, self._lanes
        lsh = _log2(L)
        cw = L // 4
        csh = _log2(cw)
        AB = ADDR_BITS
        W = INSTR_BITS // (8 * L)

        m.submodules.queue = queue = fifo.SyncFIFOBuffered(
            width=len(self.cmd.payload.as_value()), depth=self.QUEUE_DEPTH)
        m.d.comb += [queue.w_data.eq(self.cmd.payload), queue.w_en.eq(self.cmd.valid),
                     self.cmd.ready.eq(queue.w_rdy)]

        d = Signal(dma_desc_layout())
        running = Signal()
        m.d.comb += self.idle.eq(~running & is_zero(queue.level))
        done = Signal()
        # Loads queued or running (at most QUEUE_DEPTH + 1).
        nloads = Signal(range(self.QUEUE_DEPTH + 2))
        load_in = self.cmd.valid & self.cmd.ready & (self.cmd.payload.op != DmaOp.STORE_C)
        load_out = running & done & (d.op != DmaOp.STORE_C)
        m.d.sync += nloads.eq(nloads + load_in - load_out)
        m.d.comb += [self.loads_idle.eq(is_zero(nloads)), self.loads.eq(nloads)]

        # ------------------------------------------------ loads: request generator
        gen_addr = Signal(32)
        gen_left = Signal(33)
        expect = Signal(33)          # responses still to consume
        is_store = d.op == DmaOp.STORE_C
        words_per_row = Signal(16)   # LOAD_A: ⌈k/L⌉
        # Three cycles between taking a descriptor and running it: counters and ⌈k/L⌉, the
        # products for the word count, the word count.
        setup, setup2, setup3 = Signal(), Signal(), Signal()

        head = data.View(dma_desc_layout(), queue.r_data)
        with m.If(~running & queue.r_rdy):
            m.d.comb += queue.r_en.eq(1)
            m.d.sync += [d.eq(head), running.eq(1), setup.eq(1)]
        m.d.sync += [setup2.eq(setup), setup3.eq(setup2)]
        with m.If(setup):
            m.d.sync += setup.eq(0)

        # Words per row: LOAD_A ⌈k/L⌉, LOAD_C 4 per tile.
        wpr = Mux(d.op == DmaOp.LOAD_C, d.tiles << 2, (d.k + (L - 1)) >> lsh)
        rows_x_wpr, count_x7 = Signal(33), Signal(35)
        m.d.sync += [rows_x_wpr.eq(d.rows * words_per_row),
                     count_x7.eq((d.count << 3) - d.count)]   # no DSP for ×7
        total = Signal(33)
        with m.If((d.op == DmaOp.LOAD_A) | (d.op == DmaOp.LOAD_C)):
            m.d.comb += total.eq(rows_x_wpr)   # ⌈0/L⌉ = 0 when k = 0
        with m.Elif(d.op == DmaOp.LOAD_T):
            m.d.comb += total.eq((d.count + (L // 2 - 1)) >> (lsh - 1))
        with m.Elif(d.op == DmaOp.LOAD_P):
            m.d.comb += total.eq(count_x7)
        with m.Elif(d.op == DmaOp.STORE_C):
            m.d.comb += total.eq(0)
        with m.Else():
            m.d.comb += total.eq(d.count)
        with m.If(setup):
            m.d.sync += [gen_addr.eq(d.ext_addr), words_per_row.eq(wpr)]
        # gen_left ≠ 0 as a register beside it: the 33-bit zero test sat in front of the
        # request's valid, the arbiter and the ext-memory block RAM (the ULX3S P = 1 critical
        # path at c7ea235, docs/board.md).
        gen_any = Signal()
        with m.If(setup3):
            m.d.sync += [gen_left.eq(total), gen_any.eq(total.any()), expect.eq(total)]
        in_setup = setup | setup2 | setup3

        cmdp = self.mem.cmd.payload
        gen_go = running & ~in_setup & ~is_store & gen_any
        with m.If(gen_go):
            m.d.comb += [self.mem.cmd.valid.eq(1), cmdp.addr.eq(gen_addr), cmdp.we.eq(0)]
            with m.If(self.mem.cmd.ready):
                m.d.sync += [gen_addr.eq(gen_addr + 1), gen_left.eq(gen_left - 1),
                             gen_any.eq(gen_left != 1)]

        # ------------------------------------------------ loads: response consumer
        r_valid = Signal()
        r_data = Signal(8 * L)
        r_done = Signal()            # the word in R is written this cycle
        rsp = self.mem.rsp
        m.d.comb += rsp.ready.eq(~r_valid | r_done)
        with m.If(rsp.valid & rsp.ready):
            m.d.sync += [r_valid.eq(1), r_data.eq(rsp.payload.data)]
        with m.Elif(r_done):
            m.d.sync += r_valid.eq(0)
        with m.If(r_done):
            m.d.sync += expect.eq(expect - 1)

        # Destination counters, reset with each descriptor.
        c_addr = Signal(AB)          # LOAD_B word / LOAD_I instruction / LOAD_P tile
        c_word = Signal(range(8))    # LOAD_P word within the tile / LOAD_I word within instr.
        shift = Signal(INSTR_BITS)
        # LOAD_A row tracking.
        la_pe = Signal(range(max(P, 2)))
        la_s = Signal(AB)            # start of the PE's local row
        la_e = Signal(AB)            # element address of the current word
        la_wrem = Signal(16)         # words of the row after this one
        la_last_mask = Signal(L)     # valid elements of a row's last word (k mod L of them)
        # LOAD_T: entry within the word, entries left.
        t_j = Signal(range(L // 2))
        t_left = Signal(10)
        with m.If(setup):
            m.d.sync += [t_j.eq(0), t_left.eq(d.count)]
        with m.If(setup):
            m.d.sync += [c_addr.eq(d.base), c_word.eq(0), la_pe.eq(0), la_s.eq(d.base),
                         la_e.eq(d.base),
                         la_last_mask.eq(Mux(is_zero(d.k[:lsh]), (1 << L) - 1,
                                             (Const(1, L + 1) << d.k[:lsh]) - 1))]
        with m.If(setup2):
            m.d.sync += la_wrem.eq(words_per_row - 1)
        # LOAD_A write stage W: the upper slots of row w_row first, then (if any) the wrapped
        # ones of row w_row + 1.
        w_valid, w_phase = Signal(), Signal()
        w_pe = Signal.like(la_pe)
        w_row = Signal(16)
        w_data = Signal(9 * L)
        w_en1, w_en2 = Signal(L), Signal(L)
        aw = self.amem_w.payload
        m.d.comb += [
            self.amem_w.valid.eq(w_valid), aw.pe.eq(w_pe), aw.data.eq(w_data),
            aw.addr.eq(w_row + w_phase), aw.en.eq(Mux(w_phase, w_en2, w_en1)),
        ]
        w_fire = w_valid & self.amem_w.ready
        w_finish = w_fire & (w_phase | ~w_en2.any())
        w_free = ~w_valid | w_finish
        with m.If(w_finish):
            m.d.sync += w_valid.eq(0)
        with m.Elif(w_fire):
            m.d.sync += w_phase.eq(1)
        # LOAD_C write stage: the same two phases, with int32 slots of a CMEM row.
        c_valid, c_phase = Signal(), Signal()
        c_pe = Signal.like(la_pe)
        c_row = Signal(16)
        c_data = Signal(8 * L)
        c_en1, c_en2 = Signal(cw), Signal(cw)
        cmw = self.cmem_w.payload
        m.d.comb += [
            self.cmem_w.valid.eq(c_valid), cmw.pe.eq(c_pe), cmw.data.eq(c_data),
            cmw.addr.eq(c_row + c_phase), cmw.en.eq(Mux(c_phase, c_en2, c_en1)),
        ]
        c_fire = c_valid & self.cmem_w.ready
        c_finish = c_fire & (c_phase | ~c_en2.any())
        c_free = ~c_valid | c_finish
        with m.If(c_finish):
            m.d.sync += c_valid.eq(0)
        with m.Elif(c_fire):
            m.d.sync += c_phase.eq(1)

        def next_word(step):
            """LOAD_A / LOAD_C: advance to the next word of the row, or to the next row (the
            next PE, same local row, or PE 0 of the next local row)."""
            m.d.sync += [la_wrem.eq(la_wrem - 1), la_e.eq(la_e + step)]
            with m.If(is_zero(la_wrem)):
                last_pe = la_pe == P - 1 if P > 1 else 1
                s_next = Mux(last_pe, la_s + d.stride, la_s)
                m.d.sync += [la_wrem.eq(words_per_row - 1), la_s.eq(s_next), la_e.eq(s_next),
                             la_pe.eq(Mux(last_pe, 0, la_pe + 1))]

        with m.If(is_zero(d.op)):
            m.d.comb += [
                self.bbuf_w.valid.eq(r_valid), self.bbuf_w.payload.addr.eq(c_addr),
                self.bbuf_w.payload.data.eq(r_data),
                self.bbuf_w.payload.mask.eq((1 << L) - 1),
                r_done.eq(r_valid & self.bbuf_w.ready),
            ]
            with m.If(r_done):
                m.d.sync += c_addr.eq(c_addr + 1)
        with m.Elif(d.op == DmaOp.LOAD_P):
            pw = self.pbuf_w.payload
            m.d.comb += [self.pbuf_w.valid.eq(r_valid), pw.data.eq(r_data),
                         r_done.eq(r_valid & self.pbuf_w.ready)]
            with m.If(c_word < 4):
                m.d.comb += [pw.sel.eq(0), pw.addr.eq(Cat(c_word[:2], c_addr))]
            with m.Elif(c_word < 6):
                m.d.comb += [pw.sel.eq(1), pw.addr.eq(Cat(c_word[0], c_addr))]
            with m.Else():
                m.d.comb += [pw.sel.eq(2), pw.addr.eq(c_addr)]
            with m.If(r_done):
                m.d.sync += c_word.eq(c_word + 1)
                with m.If(c_word == 6):
                    m.d.sync += [c_word.eq(0), c_addr.eq(c_addr + 1)]
        with m.Elif(d.op == DmaOp.LOAD_I):
            instr = Cat(shift[8 * L:], r_data) if W > 1 else r_data
            word_last = c_word == W - 1 if W > 1 else 1
            m.d.comb += [
                r_done.eq(r_valid),
                self.imem_w_addr.eq(c_addr), self.imem_w_data.eq(instr),
                self.imem_w_en.eq(r_valid & word_last),
            ]
            with m.If(r_valid):
                m.d.sync += [shift.eq(instr), c_word.eq(c_word + 1)]
                with m.If(word_last):
                    m.d.sync += [c_word.eq(0), c_addr.eq(c_addr + 1)]
        with m.Elif(d.op == DmaOp.LOAD_C):
            # A word is L/4 int32 of one row (CMEM element la_e on): rotate them by
            # la_e mod L/4 and write rows la_e div (L/4) and, wrapped, the next one.
            upper = Signal(cw)
            if csh:
                off = la_e[:csh]
                slots = [r_data[32 * j:32 * j + 32] for j in range(cw)]
                csrc = [Signal(csh, name=f"lc_src{s}") for s in range(cw)]
                m.d.comb += [csrc[s].eq(s - off) for s in range(cw)]
                rot = Cat(*(pick(slots, csrc[s]) for s in range(cw)))
                m.d.comb += upper.eq(Const((1 << cw) - 1, cw) << off)
            else:
                rot = r_data
                m.d.comb += upper.eq(1)
            m.d.comb += r_done.eq(r_valid & c_free)
            with m.If(r_done):
                m.d.sync += [c_valid.eq(1), c_pe.eq(la_pe), c_row.eq(la_e >> csh),
                             c_data.eq(rot), c_en1.eq(upper), c_en2.eq(~upper), c_phase.eq(0)]
                next_word(cw)
        with m.Elif(d.op == DmaOp.LOAD_T):
            # L/2 int16 entries per word, one written per cycle (the low 9 bits: int9).
            tw = self.table_w.payload
            entry = pick([r_data[16 * j:16 * j + 9] for j in range(L // 2)], t_j)
            last_entry = (t_j == L // 2 - 1) | (t_left == 1)
            fire = r_valid & self.table_w.ready
            m.d.comb += [self.table_w.valid.eq(r_valid), tw.addr.eq(c_addr), tw.data.eq(entry),
                         r_done.eq(fire & last_entry)]
            with m.If(fire):
                m.d.sync += [c_addr.eq(c_addr + 1), t_left.eq(t_left - 1),
                             t_j.eq(Mux(last_entry, 0, t_j + 1))]
        with m.Else():   # LOAD_A (STORE_C has no responses)
            # Elements go to slots (e + j) mod L of rows e div L and (e div L) + 1: rotate
            # the word by e mod L, write the upper slots first, then the wrapped ones.
            off = la_e[:lsh]
            # int8 → int9 by sign extension.
            elems = Cat(*(Cat(r_data[8 * j:8 * j + 8], r_data[8 * j + 7]) for j in range(L)))
            # Slot s takes element (s − off) mod L: one L:1 multiplexer per slot.
            src = [Signal(lsh, name=f"la_src{s}") for s in range(L)]
            m.d.comb += [src[s].eq(s - off) for s in range(L)]
            rot = Cat(*(pick([elems[9 * j:9 * j + 9] for j in range(L)], src[s])
                        for s in range(L)))
            vmask = Signal(L)
            m.d.comb += vmask.eq(Mux(is_zero(la_wrem), la_last_mask, (1 << L) - 1))
            rmask = Cat(*(pick(list(vmask), src[s]) for s in range(L)))
            upper = Signal(L)
            m.d.comb += upper.eq(Const((1 << L) - 1, L) << off)
            en1, en2 = rmask & upper, rmask & ~upper
            # The rotated word and its two write masks go into the write stage W (registered,
            # so the AMEM write port is driven from registers).
            m.d.comb += r_done.eq(r_valid & w_free)
            with m.If(r_done):
                m.d.sync += [w_valid.eq(1), w_pe.eq(la_pe), w_row.eq(la_e >> lsh),
                             w_data.eq(rot), w_en1.eq(en1), w_en2.eq(en2), w_phase.eq(0)]
                next_word(L)

        # ------------------------------------------------ STORE_C
        # Reader: CMEM rows into a small FIFO (a read is issued only with room for it); sender:
        # funnels two rows into a word when the (row, tile) start is not a multiple of L/4.
        m.submodules.sfifo = sfifo = fifo.SyncFIFO(width=8 * L + 1 + max(csh, 1) + 1, depth=8)
        st_wait = Signal()           # waiting for the MATMULs before it to complete
        st_rows = Signal(16)         # rows left after this one
        st_trem = Signal(8)          # tiles left in the row after this one
        st_x = Signal(3)             # read within the (row, tile)
        st_pe = Signal(range(max(P, 2)))
        st_s = Signal(AB)            # local row start
        st_base = Signal(AB)         # element address of the (row, tile)
        st_reading = Signal()
        inflight = Signal(2)         # reads issued 1 and 2 cycles ago (CMEM data after 2)
        st_off = st_base[:csh] if csh else Const(0, 1)
        nreads = Mux(st_off.any(), 5, 4)
        with m.If(setup & is_store):
            m.d.sync += [st_wait.eq(1), st_rows.eq(d.rows - 1), st_trem.eq(d.tiles - 1),
                         st_x.eq(0), st_pe.eq(0),
                         st_s.eq(d.base), st_base.eq(d.base), gen_addr.eq(d.ext_addr)]
        # Wrap-safe ``mm_done ≥ tag``: the difference mod 2^MM_TAG_BITS is below half the range.
        tag_reached = ~(self.mm_done - d.tag)[MM_TAG_BITS - 1]
        with m.If(st_wait & tag_reached):
            m.d.sync += [st_wait.eq(0), st_reading.eq(d.rows.any() & d.tiles.any())]
        # Room for a read: registered, so with a margin for the reads of the last cycle and
        # the two in flight (≤ 4 queued + 1 + 2 + 1 ≤ depth).
        room = Signal()
        m.d.sync += room.eq(sfifo.level <= sfifo.depth - 4)
        rd_go = st_reading & room & self.cmem_r_free
        m.d.comb += [self.cmem_r_pe.eq(st_pe),
                     self.cmem_r_addr.eq((st_base >> csh) + st_x)]
        m.d.sync += inflight.eq(Cat(rd_go, inflight[0]))
        emit = is_zero(st_off) | st_x.any()
        # FIFO entry: row, emit, off (carried to the sender with the row).
        ent_emit1, ent_emit = Signal(), Signal()
        ent_off1, ent_off = Signal(max(csh, 1)), Signal(max(csh, 1))
        m.d.sync += [ent_emit1.eq(emit), ent_off1.eq(st_off), ent_emit.eq(ent_emit1),
                     ent_off.eq(ent_off1)]
        m.d.comb += [sfifo.w_en.eq(inflight[1]),
                     sfifo.w_data.eq(Cat(self.cmem_rdata, ent_emit, ent_off, Const(0, 1)))]
        with m.If(rd_go):
            m.d.sync += st_x.eq(st_x + 1)
            with m.If(st_x == nreads - 1):
                m.d.sync += [st_x.eq(0), st_trem.eq(st_trem - 1), st_base.eq(st_base + L)]
                with m.If(is_zero(st_trem)):
                    last_pe = st_pe == P - 1 if P > 1 else 1
                    s_next = Mux(last_pe, st_s + d.stride, st_s)
                    m.d.sync += [st_trem.eq(d.tiles - 1), st_rows.eq(st_rows - 1),
                                 st_s.eq(s_next), st_base.eq(s_next),
                                 st_pe.eq(Mux(last_pe, 0, st_pe + 1))]
                    with m.If(is_zero(st_rows)):
                        m.d.sync += st_reading.eq(0)
        prev = Signal(8 * L)
        h_row = sfifo.r_data[:8 * L]
        h_emit = sfifo.r_data[8 * L]
        h_off = sfifo.r_data[8 * L + 1:8 * L + 1 + max(csh, 1)]
        word = (Mux(is_zero(h_off), h_row, (Cat(prev, h_row) >> (h_off * 32))[:8 * L])
                if csh else h_row)
        send = sfifo.r_rdy & h_emit
        with m.If(running & is_store):
            m.d.comb += [self.mem.cmd.valid.eq(send), cmdp.addr.eq(gen_addr), cmdp.we.eq(1),
                         cmdp.data.eq(word), cmdp.mask.eq((1 << L) - 1)]
        pop = sfifo.r_rdy & (~h_emit | self.mem.cmd.ready)
        m.d.comb += sfifo.r_en.eq(pop)
        with m.If(pop):
            m.d.sync += prev.eq(h_row)
        with m.If(send & self.mem.cmd.ready):
            m.d.sync += gen_addr.eq(gen_addr + 1)

        # ------------------------------------------------ completion
        with m.If(is_store):
            m.d.comb += done.eq(~in_setup & ~st_wait & ~st_reading & ~inflight.any() &
                                ~sfifo.r_rdy)
        with m.Else():
            m.d.comb += done.eq(~in_setup & ~gen_any & is_zero(expect) &
                                ~r_valid & ~w_valid & ~c_valid)
        with m.If(running & done):
            m.d.sync += running.eq(0)
        return m
