"""The PE array: P processing elements in lockstep, the shared operand buffer (BBUF) and column
parameters (PBUF), the matmul sequencer, the drain control and the BBUF write-back, and the row
sequencer of the row operations.

docs/isa.md (MATMUL) and docs/isa_transformer.md (epilogues, row operations, LOAD_C, LOAD_T)
define what it computes, docs/architecture.md how.
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import Dst, Flag
from .params import check_choice, check_int
from .pe import (LANE_CHOICES, PE, BankedRam, InitMode, RowOp, _log2, bank_select, is_zero,
                 pick, select)
from .rowunit import RowSequencer, row_desc_layout

__all__ = ["PEArray", "matmul_desc_layout", "bbuf_w_layout", "pbuf_w_layout", "amem_w_layout",
           "cmem_w_layout", "table_w_layout", "MAX_PES", "ADDR_BITS", "MM_TAG_BITS", "DELTA_WORDS", "DELTA_BLOCKS"]

MAX_PES = 64
#: Width of internal address arithmetic: every range is checked at decode against depths
#: ≤ 2^16, so sums of in-range addresses and one more stride never wrap in 18 bits.
ADDR_BITS = 18
#: Width of the sequence numbers of array operations (MATMULs and row operations: the
#: controller's issue count, the array's completion count, the tag a STORE_C carries). They
#: wrap; a STORE_C waits while ``done − tag`` (mod 2^17) has its top bit set. That is exact as
#: long as fewer than 2^16 operations complete between a STORE_C's dispatch and its start (a
#: program holds at most 65 536 instructions) and fewer than 2^16 are in flight (a handful).
MM_TAG_BITS = 17
#: Collector blocks of the delta writer (P×L results each): a token's last beat waits for a
#: free one, so more blocks hide more of the drain and write latency behind later tokens.
DELTA_BLOCKS = 4
#: Words of L elements in the delta sequencer's X̂ and Δ buffers: the default largest K of a
#: DMATMUL is ``DELTA_WORDS·L`` (256 at L = 16: KWT-1's MLP width).
DELTA_WORDS = 16


def matmul_desc_layout():
    """A decoded, range-checked MATMUL handed from the controller to the array."""
    return data.StructLayout({
        "rows": unsigned(16),      # M
        "passes": unsigned(16),    # ⌈M/P⌉
        "k": unsigned(16),
        "tiles": unsigned(8),
        "ncols": unsigned(16),     # N (count, or tiles·L)
        "a_base": unsigned(16), "a_stride": unsigned(16),
        "b_base": unsigned(16),
        "p_base": unsigned(16),
        "out_base": unsigned(16), "out_stride": unsigned(16),
        "dst": unsigned(3), "sat": unsigned(2),   # hw.isa.Dst (AMEM_T = 4)
        "flags": unsigned(6),      # hw.isa.Flag: BIAS, ACCUM, RELU, RSCALE, REQ, ACT
        "maxc": unsigned(1),       # Flag.MAXC: each row's maximum into CMEM column N
        "act_sel": unsigned(1),    # ACT: the table (imm[0])
        "delta": unsigned(1),      # DMATMUL: column-partitioned delta mode
        "theta": unsigned(8),      # DMATMUL: θ (imm[15:8])
        "gpasses": unsigned(8),    # DMATMUL: ⌈tiles/P⌉ column passes
    })


def bbuf_w_layout(lanes):
    return data.StructLayout({"addr": unsigned(16), "data": unsigned(8 * lanes),
                              "mask": unsigned(lanes)})


def pbuf_w_layout(lanes):
    """``sel``: 0 bias word (addr = tile·4 + word), 1 m word (tile·2 + word), 2 sh word (tile)."""
    return data.StructLayout({"sel": unsigned(2), "addr": unsigned(18),
                              "data": unsigned(8 * lanes)})


def amem_w_layout(pes, lanes):
    """One AMEM row write into PE ``pe``: elements with ``en`` set get ``data`` (int9 each)."""
    return data.StructLayout({"pe": unsigned(max(1, (pes - 1).bit_length())),
                              "addr": unsigned(16), "data": unsigned(9 * lanes),
                              "en": unsigned(lanes)})


def cmem_w_layout(pes, lanes):
    """One CMEM row write into PE ``pe`` (LOAD_C): the int32 slots with ``en`` set get
    ``data`` (L/4 int32, slot s in bits 32s…32s+31)."""
    return data.StructLayout({"pe": unsigned(max(1, (pes - 1).bit_length())),
                              "addr": unsigned(16), "data": unsigned(8 * lanes),
                              "en": unsigned(lanes // 4)})


def table_w_layout():
    """One activation-table entry (LOAD_T), written into every PE."""
    return data.StructLayout({"addr": unsigned(9), "data": signed(9)})


def _uses_wb(dst):
    """dst BBUF_ROWS, BBUF_T or AMEM_T: results go through the write-back blocks."""
    return dst[1] | dst[2]


def _mul_const(x, c):
    """``x·c`` for a small constant c as a sum of shifts (no multiplier is inferred)."""
    terms = [x << b for b in range(c.bit_length()) if c >> b & 1]
    return sum(terms[1:], terms[0]) if terms else Const(0)
def _eq(sig, value):
    """``sig == value``, written as a zero test for 0 (Verilator's lint)."""
    return is_zero(sig) if value == 0 else sig == value


def at_most_one(v):
    """No more than one bit of ``v`` set, from a tree of (any, several) pairs: no carry chain,
    unlike ``(v & (v − 1)) == 0``."""
    nodes = [(v[i], Const(0, 1)) for i in range(len(v))]
    while len(nodes) > 1:
        pairs = [(a | b, s | t | (a & b)) for (a, s), (b, t) in zip(nodes[::2], nodes[1::2])]
        nodes = pairs + nodes[len(pairs) * 2:]
    return ~nodes[0][1]


def _check_pow2(name, value, lo, hi):
    check_int(name, value, lo=lo, hi=hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value}")
    return value


class PEArray(wiring.Component):
    """P PEs, BBUF, PBUF, the MATMUL sequencer, drain control and BBUF write-back, and the row
    sequencer (:class:`hw.rowunit.RowSequencer`) driving the PEs' row units.

    Ports
    -----
    cmd : In(stream.Signature(matmul_desc_layout()))
        A MATMUL to run (range-checked by the controller). Accepted when the sequencer is
        free and no row operation runs (``ready = ~active & ~row_busy``); its first beat
        issues the next cycle.
    row_cmd : In(stream.Signature(row_desc_layout()))
        A row operation (SOFTMAX, LAYERNORM, RADD, RECIP), accepted when the array is idle.
    active : Out(1)
        The sequencer is issuing beats of a MATMUL.
    row_busy : Out(1)
        A row operation runs (from acceptance until its last result and RS entry are written).
    busy : Out(1)
        ``active``, any tile not yet written back (drains, requantization, BBUF/AMEM_T
        write-back), or ``row_busy``.
    mac : Out(1)
        A beat was issued this cycle (the MAC array computes): counts MAC_CYCLES.
    stall_wb : Out(1)
        The sequencer holds a tile's last beat because the drain or the BBUF write-back is not
        free: counts STALL_WB.
    mm_done : Out(MM_TAG_BITS)
        Array operations complete for CMEM, a wrapping count (never reset): it steps in the
        cycle of a MATMUL's last CMEM write (drain stage ``PE.D_WRITE`` of the last element of
        its last tile; ``PE.D_Y`` with REQ), so a CMEM read from the next cycle on sees every
        result, and when a row operation has finished. MATMULs with dst AMEM/BBUF_* count at
        ``D_WRITE`` too (they write no CMEM). Operations complete in order (the controller
        lets nothing overtake a REQ MATMUL or a row operation).
    bbuf_w : In(stream.Signature(bbuf_w_layout(L)))
        DMA writes into BBUF (LOAD_B); the write-back of BBUF_ROWS/BBUF_T results has priority.
    pbuf_w : In(stream.Signature(pbuf_w_layout(L)))
        DMA writes into PBUF (LOAD_P); always ready.
    amem_w : In(stream.Signature(amem_w_layout(P, L)))
        DMA row writes into one PE's AMEM (LOAD_A); drain and row-unit writes (dst AMEM) and
        the AMEM_T write-back have priority.
    cmem_w : In(stream.Signature(cmem_w_layout(P, L)))
        DMA row writes into one PE's CMEM (LOAD_C), accepted while the array is idle (no drain
        or row-unit write can share the cycle).
    table_w : In(stream.Signature(table_w_layout()))
        Activation-table entries (LOAD_T), written into every PE; always ready.
    cmem_r_pe, cmem_r_addr : In
        CMEM row read for STORE_C (PE index, row address), taken in cycles with
        ``cmem_r_free``; the drain of an ACCUM tile has the CMEM read port in the other cycles.
    cmem_r_free : Out(1)
        The CMEM read port is free for STORE_C this cycle (no ACCUM element in drain stage D0,
        no row operation).
    cmem_rdata : Out(8L)
        The row read two cycles earlier.

    A DMATMUL descriptor (``delta`` = 1) runs on the delta sequencer instead
    (:meth:`_delta`, docs/delta.md): the same beat registers, drain and ``mm_done``/``busy``
    accounting, its own encoder, per-PE column parameters, collector and writer.

    Timing: a MATMUL takes ``⌈M/P⌉·tiles·max(K, L)`` cycles of beats (``max(K, L + 4)`` for
    the first tile of an ACCUM), plus stalls on a full write-back; its results are complete
    ``PE.MAC_LATENCY + L + PE.D_Y`` cycles after the last beat (plus the write-back). Row
    operations: see :mod:`hw.rowunit`.
    """

    def __init__(self, *, pes, lanes, amem_depth, cmem_depth, bbuf_depth, pbuf_depth,
                 delta_k=None, delta=True):
        self._pes = check_int("pes", pes, lo=1, hi=MAX_PES)
        if not isinstance(delta, bool):
            raise TypeError(f"delta must be True or False, not {delta!r}")
        self._delta_on = delta    # False: no delta sequencer (the controller never sends one)
        if delta_k is None:
            delta_k = DELTA_WORDS * lanes
        self._delta_k = check_int("delta_k", delta_k, lo=1, hi=1024)
        self._lanes = check_choice("lanes", lanes, LANE_CHOICES)
        self._amem_depth = _check_pow2("amem_depth", amem_depth, 2 * lanes, 1 << 16)
        self._cmem_depth = _check_pow2("cmem_depth", cmem_depth, lanes, 1 << 16)
        self._bbuf_depth = _check_pow2("bbuf_depth", bbuf_depth, 16, 1 << 16)
        self._pbuf_depth = _check_pow2("pbuf_depth", pbuf_depth, 1, 1 << 14)
        super().__init__({
            "cmd": In(stream.Signature(matmul_desc_layout())),
            "row_cmd": In(stream.Signature(row_desc_layout())),
            "active": Out(1),
            "row_busy": Out(1),
            "busy": Out(1),
            "mac": Out(1),
            "stall_wb": Out(1),
            "mm_done": Out(MM_TAG_BITS),
            "bbuf_w": In(stream.Signature(bbuf_w_layout(lanes))),
            "pbuf_w": In(stream.Signature(pbuf_w_layout(lanes))),
            "amem_w": In(stream.Signature(amem_w_layout(pes, lanes))),
            "cmem_w": In(stream.Signature(cmem_w_layout(pes, lanes))),
            "table_w": In(stream.Signature(table_w_layout())),
            "cmem_r_pe": In(max(1, (pes - 1).bit_length())),
            "cmem_r_addr": In(16),
            "cmem_r_free": Out(1),
            "cmem_rdata": Out(8 * lanes),
        })

    pes = property(lambda self: self._pes)
    lanes = property(lambda self: self._lanes)
    amem_depth = property(lambda self: self._amem_depth)
    cmem_depth = property(lambda self: self._cmem_depth)
    bbuf_depth = property(lambda self: self._bbuf_depth)
    pbuf_depth = property(lambda self: self._pbuf_depth)
    delta_k = property(lambda self: self._delta_k)
    delta = property(lambda self: self._delta_on)

    def elaborate(self, platform):
        m = Module()
        P, L = self._pes, self._lanes
        lsh = _log2(L)
        cw = L // 4
        csh = _log2(cw)
        AB = ADDR_BITS
        D_W, D_Y = PE.D_WRITE, PE.D_Y

        pes = []
        for p in range(P):
            pe = PE(lanes=L, amem_depth=self._amem_depth, cmem_depth=self._cmem_depth)
            m.submodules[f"pe{p}"] = pe
            pes.append(pe)

        m.submodules.bbuf = bbuf = BankedRam(width=8 * L, depth=self._bbuf_depth, granularity=8)
        pdepth = self._pbuf_depth
        # PBUF: biases (4 words per tile), multipliers (2), shifts (1), written by the DMA.
        pmem = []
        for k, (name, words) in enumerate((("pbias", 4), ("pmul", 2), ("pshift", 1))):
            mem = BankedRam(width=8 * L, depth=words * pdepth)
            m.submodules[name] = mem
            pmem.append(mem)
            sel = self.pbuf_w.payload.sel
            m.d.comb += [
                mem.w_addr.eq(self.pbuf_w.payload.addr), mem.w_data.eq(self.pbuf_w.payload.data),
                mem.w_en.eq(self.pbuf_w.valid & (sel == k if k else is_zero(sel))),
            ]
        m.d.comb += self.pbuf_w.ready.eq(1)

        # ------------------------------------------------------------------ sequencer
        desc = Signal(matmul_desc_layout())
        active = Signal()
        # Down-counters: the last beat of a tile and the last tile of a pass are zero tests.
        jrem = Signal(16)            # beats left in the tile after this one
        jfirst = Signal()
        trem = Signal(8)             # tiles left in the pass after this one
        passes_left = Signal(16)
        a_row, a_addr, b_addr = Signal(AB), Signal(AB), Signal(AB)
        n0 = Signal(AB)
        rows_left = Signal(signed(AB))
        out_row, e_tile = Signal(AB), Signal(AB)
        pb_tile = Signal(AB)
        n_left = Signal(signed(AB))
        wb_rows = Signal(AB)
        row_t, wb_t = Signal(AB), Signal(AB)
        off_t = Signal(lsh)
        stride_big = Signal(AB)
        row_step = Signal(16)        # T: one more L-row group (BBUF_T: out_stride, AMEM_T: 1)
        # AMEM_T: the tile's first column c0 as (c0 div P)·out_stride/L (AMEM words, t_caddr)
        # and c0 mod P (t_cpe); a tile steps c0 by L = (L div P)·P + L mod P.
        t_caddr = Signal(AB)
        t_cpe = Signal(range(max(P, 2)))
        t_step = Signal(AB)          # (L div P)·out_stride/L
        is_amt = Signal()
        first_tile = Signal()
        rpass = Signal(8)            # the row pass (its row-scale entry, RSCALE)
        gap_max = L + 4
        since = Signal(range(gap_max + 1), init=gap_max)
        credits = Signal(range(3), init=2)
        outstanding = Signal(8)
        wb_alloc = Signal()

        is_bbuf = _uses_wb(desc.dst)  # BBUF_ROWS (2), BBUF_T (3) or AMEM_T (4): write-back
        # The issue decision uses registered flags only (it enables every sequencer register):
        # is_last (jrem = 0), ge_l / ge_l4 (since ≥ L / L + 4), no_credit (credits = 0).
        is_last, k_is_1 = Signal(), Signal()
        ge_l, ge_l4 = Signal(init=1), Signal(init=1)
        no_credit = Signal()
        mx_prev = Signal()            # the last beat before ended a MAXC row pass
        gap_ok = Mux((first_tile & desc.flags[1]) | mx_prev, ge_l4, ge_l)   # ACCUM, MAXC
        hold = is_last & (~gap_ok | (is_bbuf & no_credit))
        issue = Signal()
        row_busy = Signal()
        row_free = Signal(init=1)    # no row operation (a local register for the accept path)
        # Delta mode (DMATMUL): its own sequencer below drives the same beat registers.
        dactive = Signal()
        d_issue, d_hold, d_last, d_first = Signal(), Signal(), Signal(), Signal()
        d_addr = Signal(AB)
        d_val = Signal(signed(10))
        m.d.comb += [
            issue.eq(active & ~hold),
            self.cmd.ready.eq(~active & ~dactive & row_free),
            self.active.eq(active | dactive),
            self.mac.eq(issue | d_issue),
            self.stall_wb.eq((active & hold) | d_hold),
        ]

        # Per-tile values, registered: they follow rows_left / n_left / off_t one cycle later,
        # which change only at a last beat, and the next last beat comes ≥ L cycles later
        # (on accepting a MATMUL they are computed from the descriptor directly).
        rmask = Signal(P)
        ncols = Signal(range(L + 1))
        ngroups = Signal(range(P // L + 3))

        def tile_values(rows_left_v, n_left_v, off_v):
            return [
                rmask.eq(Cat(*(rows_left_v > p for p in range(P)))),
                ncols.eq(Mux(n_left_v >= L, L, Mux(n_left_v > 0, n_left_v[:lsh + 1], 0))),
                ngroups.eq(((off_v + (P - 1)) >> lsh) + 1),
            ]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += tile_values(self.cmd.payload.rows, self.cmd.payload.ncols, Const(0, lsh))
        with m.Else():
            m.d.sync += tile_values(rows_left, n_left, off_t)

        # Beat registers (stage I).
        i_valid, i_first, i_last = Signal(), Signal(), Signal()
        i_a = Signal(16)
        m.d.sync += [i_valid.eq(issue | d_issue), i_first.eq(Mux(dactive, d_first, jfirst)),
                     i_last.eq(Mux(dactive, d_last, is_last)),
                     i_a.eq(Mux(dactive, d_addr, a_addr))]
        # BBUF is read one cycle ahead of the beat (its banks add a register level).
        m.d.comb += bbuf.r_addr.eq(b_addr)

        # Tile descriptors from the last beat's issue to the drain-register load (at most two
        # in flight: loads are ≥ L ≥ 4 cycles apart, the beat pipeline is MAC_LATENCY + 1 = 6
        # deep).
        tile_layout = data.StructLayout({
            "dst": unsigned(3), "flags": unsigned(6), "sat": unsigned(2), "rmask": unsigned(P),
            "ncols": range(L + 1), "e_tile": unsigned(AB), "pb_tile": unsigned(AB),
            "blk": unsigned(1), "mm_last": unsigned(1), "rpass": unsigned(8),
            "act_sel": unsigned(1),
            # MAXC: the row pass's first / last tile
            "maxc": unsigned(1), "rp_first": unsigned(1), "rp_last": unsigned(1),
            # delta mode: the token's destination PE, the element address of its row's first
            # column of this pass, the columns left from there (N − j·P·L)
            "delta": unsigned(1), "dq": unsigned(max(1, (P - 1).bit_length())),
            "drow": unsigned(AB), "dn": signed(AB), "dblk": unsigned(2),
        })
        ring = [Signal(tile_layout, name=f"tile_ring{k}") for k in range(2)]
        ring_w, ring_r = Signal(), Signal()
        tile_now = Signal(tile_layout)

        # Write-back block descriptors, written at issue into the reserved block.
        # AMEM_T (``amt``): ``base`` is the AMEM word of the tile's first column's first group,
        # ``pe`` that column's PE (c mod P), ``stride`` the group step (1; BBUF_T: out_stride).
        blk_layout = data.StructLayout({
            "trans": unsigned(1), "rmask": unsigned(P), "ncols": range(L + 1),
            "base": unsigned(AB), "off": unsigned(lsh), "ngroups": range(P // L + 3),
            "stride": unsigned(16), "amt": unsigned(1), "pe": range(max(P, 2)),
        })
        blkmeta = [Signal(blk_layout, name=f"blkmeta{k}") for k in range(2)]
        blk_now = Signal(blk_layout)
        m.d.comb += [
            tile_now.dst.eq(desc.dst), tile_now.flags.eq(desc.flags), tile_now.sat.eq(desc.sat),
            tile_now.rmask.eq(rmask), tile_now.ncols.eq(ncols), tile_now.e_tile.eq(e_tile),
            tile_now.pb_tile.eq(pb_tile), tile_now.blk.eq(wb_alloc),
            tile_now.rpass.eq(rpass), tile_now.act_sel.eq(desc.act_sel),
            tile_now.maxc.eq(desc.maxc), tile_now.rp_first.eq(trem == desc.tiles - 1),
            tile_now.rp_last.eq(is_zero(trem)),
            # the MATMUL's last tile: last tile of the last pass
            tile_now.mm_last.eq(is_zero(trem) & is_zero(passes_left)),
            blk_now.trans.eq((desc.dst == Dst.BBUF_T) | is_amt), blk_now.rmask.eq(rmask),
            blk_now.ncols.eq(ncols),
            blk_now.base.eq(Mux(desc.dst == Dst.BBUF_T, wb_t,
                                Mux(is_amt, row_t + t_caddr, wb_rows))),
            blk_now.off.eq(off_t), blk_now.ngroups.eq(ngroups),
            blk_now.stride.eq(Mux(is_amt, 1, desc.out_stride)),
            blk_now.amt.eq(is_amt), blk_now.pe.eq(t_cpe),
        ]

        with m.If(self.cmd.valid & self.cmd.ready):
            d = self.cmd.payload
            d_amt = d.dst == Dst.AMEM_T
            m.d.sync += [
                desc.eq(d), active.eq(~d.delta), jrem.eq(d.k - 1), jfirst.eq(1), trem.eq(d.tiles - 1),
                is_last.eq(d.k == 1), k_is_1.eq(d.k == 1),
                passes_left.eq(d.passes - 1),
                a_row.eq(d.a_base), a_addr.eq(d.a_base), b_addr.eq(d.b_base),
                n0.eq(0), rows_left.eq(d.rows),
                out_row.eq(d.out_base), e_tile.eq(d.out_base), pb_tile.eq(d.p_base),
                n_left.eq(d.ncols), wb_rows.eq(d.out_base),
                row_t.eq(Mux(d_amt, d.out_base >> lsh, d.out_base)), wb_t.eq(d.out_base),
                off_t.eq(0),
                stride_big.eq(Mux(d_amt, P // L, d.out_stride * (P // L))),
                row_step.eq(Mux(d_amt, 1, d.out_stride)),
                t_caddr.eq(0), t_cpe.eq(0), is_amt.eq(d_amt),
                t_step.eq(_mul_const(d.out_stride >> lsh, L // P)),
                first_tile.eq(1), rpass.eq(0),
            ]

        last_issue = (issue & is_last) | (d_issue & d_last)
        with m.If(last_issue):
            m.d.sync += mx_prev.eq(issue & desc.maxc & is_zero(trem))
        with m.If(last_issue):
            m.d.sync += since.eq(1)
        with m.Elif(since != gap_max):
            m.d.sync += since.eq(since + 1)
        # since ≥ L next cycle ⇔ no last beat now and since ≥ L − 1 now (it saturates).
        m.d.sync += [ge_l.eq(~last_issue & (since >= L - 1)),
                     ge_l4.eq(~last_issue & (since >= L + 3))]

        with m.If(issue):
            m.d.sync += [jrem.eq(jrem - 1), jfirst.eq(0), a_addr.eq(a_addr + 1),
                         b_addr.eq(b_addr + 1), is_last.eq(jrem == 1)]
            with m.If(is_last):
                m.d.sync += [jrem.eq(desc.k - 1), jfirst.eq(1), first_tile.eq(0),
                             is_last.eq(k_is_1),
                             ring_w.eq(~ring_w)]
                for k in range(2):
                    with m.If(ring_w == k):
                        m.d.sync += ring[k].eq(tile_now)
                with m.If(is_bbuf):
                    m.d.sync += wb_alloc.eq(~wb_alloc)
                    for k in range(2):
                        with m.If(wb_alloc == k):
                            m.d.sync += blkmeta[k].eq(blk_now)
                with m.If(is_zero(trem)):
                    # End of a row pass.
                    off_next = off_t + (P % L)
                    carry = off_next >= L
                    m.d.sync += [
                        trem.eq(desc.tiles - 1), passes_left.eq(passes_left - 1),
                        rpass.eq(rpass + 1),
                        n0.eq(n0 + P), rows_left.eq(rows_left - P),
                        a_row.eq(a_row + desc.a_stride), a_addr.eq(a_row + desc.a_stride),
                        b_addr.eq(desc.b_base),
                        out_row.eq(out_row + desc.out_stride),
                        e_tile.eq(out_row + desc.out_stride),
                        pb_tile.eq(desc.p_base), n_left.eq(desc.ncols),
                        wb_rows.eq(desc.out_base + n0 + P),
                        off_t.eq(Mux(carry, off_next - L, off_next)),
                        row_t.eq(row_t + stride_big + Mux(carry, row_step, 0)),
                        wb_t.eq(row_t + stride_big + Mux(carry, row_step, 0)),
                        t_caddr.eq(0), t_cpe.eq(0),
                    ]
                    with m.If(is_zero(passes_left)):
                        m.d.sync += active.eq(0)
                with m.Else():
                    m.d.sync += [
                        trem.eq(trem - 1), a_addr.eq(a_row),
                        e_tile.eq(e_tile + L), pb_tile.eq(pb_tile + 1), n_left.eq(n_left - L),
                        wb_rows.eq(wb_rows + desc.out_stride), wb_t.eq(wb_t + L),
                    ]
                    cpe_next = t_cpe + (L % P)
                    cwrap = cpe_next >= P
                    m.d.sync += [
                        t_cpe.eq(Mux(cwrap, cpe_next - P, cpe_next)),
                        t_caddr.eq(t_caddr + t_step + Mux(cwrap, desc.out_stride >> lsh, 0)),
                    ]

        # B word: BBUF data in M1, registered for M2, registered again in each PE (M3).
        b2 = Signal(8 * L)
        m.d.sync += b2.eq(bank_select(bbuf))

        # The row sequencer (row operations; never at the same time as a MATMUL).
        m.submodules.rowseq = rseq = RowSequencer(pes=P, lanes=L)
        # No MATMUL in the array (registered: its accept enables every row-sequencer register;
        # a MATMUL accepted in this cycle counts as busy, and nothing else starts one).
        mm_idle = Signal()
        m.d.sync += mm_idle.eq(~active & ~dactive & ~outstanding.any() &
                               ~(self.cmd.valid & self.cmd.ready))
        m.d.comb += [self.row_cmd.ready.eq(rseq.cmd.ready & mm_idle),
                     rseq.cmd.valid.eq(self.row_cmd.valid & self.row_cmd.ready),
                     rseq.cmd.payload.eq(self.row_cmd.payload),
                     row_busy.eq(rseq.busy), self.row_busy.eq(row_busy)]
        # A row operation accepted now is busy from the next cycle on, as row_free drops.
        m.d.sync += row_free.eq(~rseq.busy & ~(self.row_cmd.valid & self.row_cmd.ready))

        # Delta beats: Δ and the mode reach the PEs in M2, like the B word.
        dv1, dv2, dv3 = (Signal(signed(10), name=f"dv{k}") for k in (1, 2, 3))
        dmd1, dmd2, dmd3 = (Signal(name=f"dmd{k}") for k in (1, 2, 3))
        m.d.sync += [dv1.eq(d_val), dv2.eq(dv1), dv3.eq(dv2),
                     dmd1.eq(dactive), dmd2.eq(dmd1), dmd3.eq(dmd2)]
        for pe in pes:
            m.d.comb += [pe.valid.eq(i_valid), pe.a_addr.eq(Mux(row_busy, rseq.a_raddr, i_a)),
                         pe.first.eq(i_first), pe.last.eq(i_last), pe.b.eq(b2),
                         pe.dmode.eq(dmd3), pe.dval.eq(dv3)]

        # Central copy of the beat pipeline: which cycle loads the drain registers (M5).
        c_last = [Signal(name=f"c_last{k}") for k in range(1, PE.MAC_LATENCY + 1)]
        m.d.sync += c_last[0].eq(i_valid & i_last)
        m.d.sync += [c_last[k + 1].eq(c_last[k]) for k in range(PE.MAC_LATENCY - 1)]
        load = c_last[-1]

        # ------------------------------------------------------------------ drain control
        d_active = Signal()
        d_i = Signal(lsh)
        d_e = Signal(AB)
        dm = Signal(tile_layout)
        with m.If(load):
            tile = data.View(tile_layout, Mux(ring_r, ring[1].as_value(), ring[0].as_value()))
            m.d.sync += [d_active.eq(1), d_i.eq(0), d_e.eq(tile.e_tile), dm.eq(tile),
                         ring_r.eq(~ring_r)]
        with m.Elif(d_active):
            m.d.sync += [d_i.eq(d_i + 1), d_e.eq(d_e + 1)]
            with m.If(d_i == L - 1):
                m.d.sync += d_active.eq(0)

        # Element metadata pipeline D0 … D_Y.
        meta_layout = data.StructLayout({
            "valid": unsigned(1), "col_valid": unsigned(1), "rmask": unsigned(P),
            "e": unsigned(AB), "i": unsigned(lsh), "dst": unsigned(3), "relu": unsigned(1),
            "sat": unsigned(2), "tile_end": unsigned(1), "blk": unsigned(1),
            "mm_end": unsigned(1), "rscale": unsigned(1), "req": unsigned(1),
            "act": unsigned(1), "act_sel": unsigned(1), "delta": unsigned(1),
            "dblk": unsigned(2), "mx_upd": unsigned(1), "mx_first": unsigned(1),
            "mx_last": unsigned(1), "mx_off": range(L + 1),
        })
        meta = [Signal(meta_layout, name=f"meta{k}") for k in range(D_Y + 1)]
        m.d.comb += [
            meta[0].valid.eq(d_active), meta[0].col_valid.eq(d_i < dm.ncols),
            meta[0].rmask.eq(dm.rmask), meta[0].e.eq(d_e), meta[0].i.eq(d_i),
            meta[0].dst.eq(dm.dst), meta[0].relu.eq((dm.flags & Flag.RELU).any()),
            meta[0].sat.eq(dm.sat), meta[0].tile_end.eq(d_active & (d_i == L - 1)),
            meta[0].blk.eq(dm.blk),
            meta[0].mm_end.eq(d_active & (d_i == L - 1) & dm.mm_last),
            meta[0].mx_upd.eq(d_active & dm.maxc & (d_i < dm.ncols)),
            meta[0].mx_first.eq(is_zero(d_i) & dm.rp_first),
            meta[0].mx_last.eq(d_active & dm.maxc & (d_i == L - 1) & dm.rp_last),
            meta[0].mx_off.eq(L - dm.ncols),
            meta[0].rscale.eq((dm.flags & Flag.RSCALE).any()),
            meta[0].req.eq((dm.flags & Flag.REQ).any()),
            meta[0].act.eq((dm.flags & Flag.ACT).any()), meta[0].act_sel.eq(dm.act_sel),
            meta[0].delta.eq(dm.delta), meta[0].dblk.eq(dm.dblk),
        ]
        m.d.sync += [meta[k + 1].eq(meta[k]) for k in range(D_Y)]

        # D0: PBUF reads of the column's bias, m, sh; CMEM read (ACCUM start value).
        d_init = Mux((dm.flags & Flag.BIAS).any(), InitMode.BIAS,
                     Mux((dm.flags & Flag.ACCUM).any(), InitMode.CMEM, InitMode.ZERO))
        # A row operation reads its column parameters at its own stages: m/sh (LAYERNORM's G
        # and shift, RADD's m and shift) and the bias (LAYERNORM's B), each with its lane.
        b_tile = Mux(row_busy, rseq.pb_tile, dm.pb_tile)
        b_lane = Mux(row_busy, rseq.pb_lane, d_i)
        m_tile = Mux(row_busy, rseq.pm_tile, dm.pb_tile)
        m_lane = Mux(row_busy, rseq.pm_lane, d_i)
        # Delta mode fetches each PE's column parameters at the start of a column pass.
        dfetch = Signal()
        dfc = Signal(16)
        dpb = Signal(AB)
        f_tile = dpb + (dfc >> 3)
        f_sub = dfc[:3]
        m.d.comb += [
            pmem[0].r_addr.eq(Mux(dfetch, Cat(f_sub[:2], f_tile), Cat(b_lane[lsh - 2:], b_tile))),
            pmem[1].r_addr.eq(Mux(dfetch, Cat(f_sub[0], f_tile), Cat(m_lane[lsh - 1:], m_tile))),
            pmem[2].r_addr.eq(Mux(dfetch, f_tile, m_tile)),
        ]
        # D1: PBUF data; D2: registered; D3: the column's values selected.
        prow2 = [bank_select(mem) for mem in pmem]     # registered per bank
        bias3 = Signal(signed(32))
        mul3, mul4 = Signal(16), Signal(16)
        sh3, sh4 = Signal(8), Signal(8)
        b_lane1, b_lane2, m_lane1, m_lane2 = (Signal(lsh, name=n) for n in
                                              ("b_lane1", "b_lane2", "m_lane1", "m_lane2"))
        m.d.sync += [b_lane1.eq(b_lane), b_lane2.eq(b_lane1), m_lane1.eq(m_lane),
                     m_lane2.eq(m_lane1)]
        m.d.sync += [
            bias3.eq(select(prow2[0], b_lane2[:lsh - 2], 32) if lsh > 2 else prow2[0][:32]),
            mul3.eq(select(prow2[1], m_lane2[:lsh - 1], 16)),
            sh3.eq(select(prow2[2], m_lane2, 8)),
            mul4.eq(mul3), sh4.eq(sh3),
        ]
        # The row-scale entry of the tile's row pass, read in D2.
        rpass1, rpass2 = Signal(8), Signal(8)
        m.d.sync += [rpass1.eq(dm.rpass), rpass2.eq(rpass1)]

        busy = Signal()
        m.d.comb += [busy.eq(active | dactive | outstanding.any() | row_busy),
                     self.busy.eq(busy)]
        # The CMEM read port: the drain reads the ACCUM start value in D0, a row operation its
        # elements; STORE_C gets the other cycles (a plain or BIAS drain ignores what D0 reads).
        drain_reads = d_active & (dm.flags & Flag.ACCUM).any()
        m.d.comb += self.cmem_r_free.eq(~drain_reads & ~row_busy)
        cmem_pe1, cmem_pe2 = Signal.like(self.cmem_r_pe), Signal.like(self.cmem_r_pe)
        m.d.sync += [cmem_pe1.eq(self.cmem_r_pe), cmem_pe2.eq(cmem_pe1)]
        m.d.comb += self.cmem_rdata.eq(pick((pe.c_rdata for pe in pes), cmem_pe2))

        # mul4 / sh4 hold the D4 element: the PEs take m, sh, sat, relu in D_RQ = D4.
        mw, mq, my, ma = meta[D_W], meta[PE.D_RQ], meta[D_Y], meta[PE.D_ACT]
        # Completion for CMEM: the edge that writes the last element also counts it (REQ
        # writes CMEM in D_Y); a row operation counts when it has finished.
        mm_done = Signal(MM_TAG_BITS)
        row_busy1 = Signal()
        m.d.sync += row_busy1.eq(row_busy)
        dw_done_last = Signal()    # the delta writer finished a DMATMUL's last token
        # MAXC: the row maximum is written the cycle after the row pass's last element (no
        # drain write then: a last beat after a MAXC row pass waits L + 4 cycles, gap_ok), to
        # CMEM column N of the row.
        mx_wr, mx_end = Signal(), Signal()
        mx_wa = Signal(AB)
        mx_rm = Signal(P)
        m.d.sync += [mx_wr.eq(mw.valid & mw.mx_last), mx_end.eq(mw.mm_end),
                     mx_wa.eq(mw.e + 1 - mw.mx_off), mx_rm.eq(mw.rmask)]
        done_now = ((mw.valid & mw.mm_end & ~mw.req & ~mw.delta & ~mw.mx_last) +
                    (mx_wr & mx_end) +
                    (my.valid & my.mm_end & my.req & ~my.delta) +
                    (row_busy1 & ~row_busy) + dw_done_last)
        m.d.sync += mm_done.eq(mm_done + done_now)
        m.d.comb += self.mm_done.eq(mm_done)

        # Output register of the write-back writer (below): a BBUF word, or (o_amt, AMEM_T) an
        # AMEM word of PE o_pe (int9 elements).
        o_valid, o_amt = Signal(), Signal()
        o_addr = Signal(16)
        o_data = Signal(9 * L)
        o_mask = Signal(L)
        o_pe = Signal(range(max(P, 2)))

        # Delta mode: each PE's column parameters of the element in the drain (D3 bias, D4 m/sh).
        dbias3 = [Signal(signed(32), name=f"dbias3_{p}") for p in range(P)]
        dmul4 = [Signal(16, name=f"dmul4_{p}") for p in range(P)]
        dsh4 = [Signal(8, name=f"dsh4_{p}") for p in range(P)]
        # Result writes: the drain (dst AMEM in D_Y; dst CMEM in D_WRITE, with REQ in D_Y) or
        # the row unit (R_Y), then the AMEM_T write-back (it holds while they write); the DMA's
        # LOAD_A writes wait in those cycles.
        rw_amem = rseq.w_valid & (rseq.w_dst == Dst.AMEM)
        rw_cmem = rseq.w_valid & is_zero(rseq.w_dst)
        drain_amem = my.valid & (my.dst == Dst.AMEM) & ~my.delta
        cw_s = mw.valid & is_zero(mw.dst) & ~mw.req & ~mw.delta     # s in D_WRITE
        cw_y = my.valid & is_zero(my.dst) & my.req & ~my.delta      # y in D_Y (REQ)
        # The delta writer: rows of a token's results into the PE that owns the token.
        dw_amem, dw_cmem = Signal(), Signal()
        dw_q = Signal(max(1, (P - 1).bit_length()))
        dw_addr = Signal(AB)             # element address of the row (AMEM) / int32 group (CMEM)
        dw_adata = Signal(9 * L)
        dw_cdata = Signal(8 * L)
        dw_en = Signal(L)
        # LOAD_C writes while nothing in the array writes CMEM: no MATMUL with dst CMEM, no
        # DMATMUL, no row operation (a MATMUL with another dst may run: the embedding's second
        # row part loads its C0 while the first computes, docs/compiler.md). Registered, so it
        # selects the PEs' CMEM write data directly (an operation accepted now writes CMEM ≥ 5
        # cycles later).
        mm_cw = Signal()             # a MATMUL with dst CMEM, or a DMATMUL, is in the array
        with m.If(self.cmd.valid & self.cmd.ready &
                  (is_zero(self.cmd.payload.dst) | self.cmd.payload.delta)):
            m.d.sync += mm_cw.eq(1)
        with m.Elif(~active & ~dactive & ~outstanding.any()):
            m.d.sync += mm_cw.eq(0)
        c_dma = Signal()
        m.d.sync += c_dma.eq(~busy | ~(mm_cw | dactive | row_busy))
        wb_amem = o_valid & o_amt
        wb_stall = wb_amem & (drain_amem | rw_amem | dw_amem)
        m.d.comb += [self.amem_w.ready.eq(~drain_amem & ~rw_amem & ~wb_amem & ~dw_amem),
                     self.cmem_w.ready.eq(c_dma), self.table_w.ready.eq(1)]
        aw, cwp, tw = self.amem_w.payload, self.cmem_w.payload, self.table_w.payload
        for p, pe in enumerate(pes):
            dma_pe = is_zero(aw.pe) if p == 0 else aw.pe == p
            dmac_pe = is_zero(cwp.pe) if p == 0 else cwp.pe == p
            m.d.comb += [
                pe.c_raddr.eq(Mux(row_busy, rseq.c_raddr[csh:],
                                  Mux(drain_reads, d_e[csh:], self.cmem_r_addr))),
                pe.c_slot.eq(Mux(row_busy, rseq.c_raddr[:csh], d_e[:csh]) if csh else 0),
                pe.d_init.eq(d_init),
                pe.rs_row.eq(rpass2),
                # (the drain metadata keeps the last tile's flags after it: gate with valid)
                pe.bias.eq(Mux(meta[3].valid & meta[3].delta, dbias3[p], bias3)),
                pe.rscale.eq(mw.rscale),
                pe.mx_upd.eq(mw.valid & mw.mx_upd), pe.mx_first.eq(mw.mx_first),
                # G of LAYERNORM (its output elements) is signed; every other m is uint16.
                pe.m.eq(Mux(mq.valid & mq.delta, dmul4[p],
                            Mux(row_busy & rseq.pm_sgn, mul4.as_signed(), mul4))),
                pe.sh.eq(Mux(mq.valid & mq.delta, dsh4[p], sh4)),
                pe.sat.eq(mq.sat), pe.relu.eq(mq.relu),
                pe.act.eq(ma.valid & ma.act), pe.act_sel.eq(ma.act_sel),
                pe.row.eq(row_busy), pe.rop.eq(rseq.rop),
                pe.rc_data.eq(rseq.rc_data), pe.rc_q1.eq(rseq.rc_q1),
                pe.rc_s2.eq(rseq.rc_s2), pe.rc_y2.eq(rseq.rc_y2),
                pe.rs_we.eq(rseq.rs_we[p]), pe.rs_waddr.eq(rseq.rs_waddr),
                pe.t_we.eq(self.table_w.valid), pe.t_waddr.eq(tw.addr), pe.t_wdata.eq(tw.data),
                pe.c_dma.eq(c_dma | dw_cmem), pe.cw_data.eq(Mux(dw_cmem, dw_cdata, cwp.data)),
                pe.cw_en.eq(Mux(dw_cmem, Mux(_eq(dw_q, p), dw_en[:cw], 0),
                                Mux(self.cmem_w.valid & dmac_pe, cwp.en, 0))),
            ]
            with m.If(rw_cmem):
                m.d.comb += [pe.c_we.eq(rseq.w_rmask[p]), pe.c_wy.eq(1),
                             pe.c_waddr.eq(rseq.w_addr[csh:]),
                             pe.c_wslot.eq(rseq.w_addr[:csh] if csh else 0)]
            with m.Elif(cw_y):
                m.d.comb += [pe.c_we.eq(my.col_valid & my.rmask[p]), pe.c_wy.eq(1),
                             pe.c_waddr.eq(my.e[csh:]), pe.c_wslot.eq(my.e[:csh] if csh else 0)]
            with m.Elif(cw_s):
                m.d.comb += [pe.c_we.eq(mw.col_valid & mw.rmask[p]),
                             pe.c_waddr.eq(mw.e[csh:]), pe.c_wslot.eq(mw.e[:csh] if csh else 0)]
            with m.Elif(mx_wr):
                m.d.comb += [pe.c_we.eq(mx_rm[p]), pe.c_wmx.eq(1),
                             pe.c_waddr.eq(mx_wa[csh:]), pe.c_wslot.eq(mx_wa[:csh] if csh else 0)]
            with m.Elif(dw_cmem):
                m.d.comb += pe.c_waddr.eq(dw_addr[csh:])
            with m.Else():
                m.d.comb += pe.c_waddr.eq(cwp.addr)
            with m.If(dw_amem):
                m.d.comb += [pe.aw_addr.eq(dw_addr[lsh:]), pe.aw_data.eq(dw_adata),
                             pe.aw_en.eq(Mux(_eq(dw_q, p), dw_en, 0))]
            with m.Elif(rw_amem):
                m.d.comb += [
                    pe.aw_addr.eq(rseq.w_addr[lsh:]), pe.aw_from_y.eq(1),
                    pe.aw_en.eq(Mux(rseq.w_rmask[p], 1 << rseq.w_addr[:lsh], 0)),
                ]
            with m.Elif(drain_amem):
                m.d.comb += [
                    pe.aw_addr.eq(my.e[lsh:]), pe.aw_from_y.eq(1),
                    pe.aw_en.eq(Mux(my.col_valid & my.rmask[p], 1 << my.e[:lsh], 0)),
                ]
            with m.Elif(wb_amem):
                m.d.comb += [
                    pe.aw_addr.eq(o_addr), pe.aw_data.eq(o_data),
                    pe.aw_en.eq(Mux(is_zero(o_pe) if p == 0 else o_pe == p, o_mask, 0)),
                ]
            with m.Else():
                m.d.comb += [
                    pe.aw_addr.eq(aw.addr), pe.aw_data.eq(aw.data),
                    pe.aw_en.eq(Mux(self.amem_w.valid & dma_pe, aw.en, 0)),
                ]

        # ------------------------------------------------------------------ write-back
        # Two blocks of P×L int9 (BBUF takes the low 8 bits, AMEM_T all 9): the drain fills one
        # (D_Y) while the writer empties the other.
        E = 9
        blk = [[Signal(E * L, name=f"blk{b}_{p}") for p in range(P)] for b in range(2)]
        full = Signal(2)
        byte_at = Signal(L)
        m.d.comb += byte_at.eq(Mux(my.valid & _uses_wb(my.dst) & ~my.delta, 1 << my.i, 0))
        for b in range(2):
            for i in range(L):
                with m.If(byte_at[i] & (my.blk == b)):
                    m.d.sync += [blk[b][p][E * i:E * i + E].eq(pe.y[:E])
                                 for p, pe in enumerate(pes)]

        w_busy = Signal()
        w_blk = Signal()
        wm = Signal(blk_layout)
        w_p = Signal(range(max(P, L) + 1))   # row (ROWS) or column (T)
        w_g = Signal(range(P // L + 3))
        w_addr = Signal(AB)                  # T: address of group w_g of column w_p
        w_col = Signal(AB)                   # AMEM_T: address of group 0 of column w_p
        w_pe = Signal(range(max(P, 2)))      # AMEM_T: the PE of column w_p
        w_done = Signal()

        col = Cat(*(select(Mux(w_blk, blk[1][p], blk[0][p]), w_p[:lsh], E) for p in range(P)))
        pbits = max(1, (P - 1).bit_length())
        rowdata = Mux(w_blk, pick(blk[1], w_p[:pbits]), pick(blk[0], w_p[:pbits]))
        colmask = wm.rmask
        # Window of group g: slot s holds row p = g·L + s − off.
        pad = L
        col_pad = Cat(Const(0, E * pad), col, Const(0, E * pad))
        msk_pad = Cat(Const(0, pad), colmask, Const(0, pad))
        start = Signal(range(2 * L + P + 1))
        m.d.comb += start.eq(pad + (w_g << lsh) - wm.off)
        # Shifted by whole elements, one mux stage per bit of start (a shift by start·9 would
        # infer a multiplier or a deeper barrel shifter).
        win = col_pad
        for b in range(len(start)):
            win = Mux(start[b], win >> (E << b), win)
        win_data = win[:E * L]
        win_mask = (msk_pad >> start)[:L]

        # The writer holds while the drain or the row unit writes AMEM (wb_stall; an AMEM_T
        # word waits in the output register).
        with m.If(~wb_stall):
            m.d.sync += o_valid.eq(0)
            with m.If(~w_busy):
                bm = data.View(blk_layout,
                               Mux(w_blk, blkmeta[1].as_value(), blkmeta[0].as_value()))
                with m.If(Mux(w_blk, full[1], full[0])):
                    m.d.sync += [w_busy.eq(1), wm.eq(bm), w_p.eq(0), w_g.eq(0),
                                 w_addr.eq(bm.base), w_col.eq(bm.base), w_pe.eq(bm.pe)]
            with m.Elif(~wm.trans):
                # BBUF_ROWS: word out_base + t·out_stride + n holds row n's L results.
                m.d.sync += [
                    o_valid.eq((wm.rmask >> w_p)[0] & wm.ncols.any()), o_amt.eq(0),
                    o_addr.eq(wm.base + w_p), o_data.eq(rowdata),
                    o_mask.eq((Const(1, L + 1) << wm.ncols) - 1),
                    w_p.eq(w_p + 1),
                ]
                m.d.comb += w_done.eq(w_p == P - 1 if P > 1 else is_zero(w_p))
            with m.Else():
                # BBUF_T: word out_base + (n div L)·out_stride + c holds rows of column c.
                # AMEM_T: word out_base/L + (c div P)·out_stride/L + n div L of PE c mod P.
                m.d.sync += [
                    o_valid.eq(win_mask.any() & (w_p < wm.ncols)), o_amt.eq(wm.amt),
                    o_addr.eq(w_addr + Mux(wm.amt, 0, w_p)), o_data.eq(win_data),
                    o_mask.eq(win_mask), o_pe.eq(w_pe),
                    w_g.eq(w_g + 1), w_addr.eq(w_addr + wm.stride),
                ]
                with m.If(w_g == wm.ngroups - 1):
                    # Next column: AMEM_T steps its PE, and its word by out_stride/L on a wrap.
                    pe_wrap = (w_pe == P - 1) if P > 1 else Const(1)
                    col_next = w_col + Mux(wm.amt & pe_wrap, desc.out_stride >> lsh, 0)
                    m.d.sync += [w_g.eq(0), w_addr.eq(col_next), w_col.eq(col_next),
                                 w_p.eq(w_p + 1), w_pe.eq(Mux(pe_wrap, 0, w_pe + 1))]
                m.d.comb += w_done.eq((w_g == wm.ngroups - 1) &
                                      ((w_p == L - 1) | (w_p + 1 >= wm.ncols)))
            with m.If(w_busy & w_done):
                m.d.sync += [w_busy.eq(0), w_blk.eq(~w_blk)]

        # Block bookkeeping: filled at the drain's tile end, emptied by the writer. A finished
        # block is released one cycle later (wdone_r: off the writer's compare chain), when its
        # last word is in the BBUF write port.
        fill_done = my.tile_end & _uses_wb(my.dst)
        wdone = w_busy & w_done
        wdone_r, wblk_r = Signal(), Signal()
        m.d.sync += [wdone_r.eq(wdone), wblk_r.eq(w_blk)]
        for b in range(2):
            with m.If(wdone_r & (wblk_r == b)):
                m.d.sync += full[b].eq(0)
            with m.If(fill_done & (my.blk == b)):
                m.d.sync += full[b].eq(1)
        take = issue & is_last & is_bbuf
        m.d.sync += [
            credits.eq(credits - take + wdone_r),
            # credits − take + wdone_r = 0 (take needs a credit: take & wdone_r leaves ≥ 1)
            no_credit.eq(Mux(take & ~wdone_r, credits == 1,
                             ~(wdone_r | take) & is_zero(credits))),
        ]
        drained = my.tile_end & ~_uses_wb(my.dst) & ~my.delta
        dw_done = Signal()
        m.d.sync += outstanding.eq(outstanding + last_issue - drained - wdone_r - dw_done)

        # BBUF write port: write-back first, then the DMA.
        o_bbuf = o_valid & ~o_amt
        o_bytes = Cat(*(o_data[E * i:E * i + 8] for i in range(L)))
        m.d.comb += [
            self.bbuf_w.ready.eq(~o_bbuf),
            bbuf.w_addr.eq(Mux(o_bbuf, o_addr, self.bbuf_w.payload.addr)),
            bbuf.w_data.eq(Mux(o_bbuf, o_bytes, self.bbuf_w.payload.data)),
            bbuf.w_en.eq(Mux(o_bbuf, o_mask,
                            Mux(self.bbuf_w.valid, self.bbuf_w.payload.mask, 0))),
        ]
        if not self._delta_on:     # its signals keep their reset values (0): pruned by synthesis
            return m
        self._delta(m, platform, pes=pes, desc=desc, dactive=dactive, d_issue=d_issue,
                    d_hold=d_hold, d_last=d_last, d_first=d_first, d_addr=d_addr, d_val=d_val,
                    ge_l=ge_l, ring=ring, ring_w=ring_w, tile_layout=tile_layout,
                    outstanding=outstanding, dfetch=dfetch, dfc=dfc, dpb=dpb, prow2=prow2,
                    meta=meta, my=my, load=load, ring_r=ring_r, dbias3=dbias3, dmul4=dmul4,
                    dsh4=dsh4, dw_amem=dw_amem, dw_cmem=dw_cmem, dw_q=dw_q, dw_addr=dw_addr,
                    dw_adata=dw_adata, dw_cdata=dw_cdata, dw_en=dw_en, dw_done=dw_done,
                    dw_done_last=dw_done_last)
        return m

    def _delta(self, m, platform, *, pes, desc, dactive, d_issue, d_hold, d_last, d_first,
               d_addr, d_val, ge_l, ring, ring_w, tile_layout, outstanding, dfetch, dfc, dpb,
               prow2, meta, my, load, ring_r, dbias3, dmul4, dsh4, dw_amem, dw_cmem, dw_q, dw_addr,
               dw_adata, dw_cdata, dw_en, dw_done, dw_done_last):
        """The column-partitioned delta mode (DMATMUL; docs/delta.md, docs/isa.md).

        For every column pass j < ⌈tiles/P⌉ (PE p computes tile j·P + p, whose W rows it holds
        in AMEM at ``b_base + (j·K + k)·L``) and every token t in order: *scan* — the ⌈K/L⌉
        words of X(t) are read from the AMEM of PE t mod P and Δ-encoded against X̂ (θ from the
        descriptor; token 0 sends X itself); *emit* — one beat per nonzero Δ_k (or one zero
        beat for a token without any), broadcasting Δ_k to every PE, whose lanes multiply it
        by their W row k and accumulate without clearing between tokens; the token's last beat
        hands the sums to the drain, which requantizes them with the PE's own column
        parameters (fetched from PBUF at the start of the pass) into a collector block of
        P×L results; the writer then writes the block, one PE row per cycle (four CMEM rows
        per PE row for dst CMEM), into the PE that owns row t.
        """
        P, L = self._pes, self._lanes
        lsh = _log2(L)
        cw = L // 4
        csh = _log2(cw)
        AB = ADDR_BITS
        KD = self._delta_k
        NW = -(-KD // L)
        wbits = max(1, (NW - 1).bit_length())
        qbits = max(1, (P - 1).bit_length())

        FWAIT, FETCH, SCAN, SWAIT, EMIT0, EMIT = range(6)
        dstate = Signal(3)
        dcnt = Signal(16)
        dj, dt = Signal(8), Signal(16)
        dtq = Signal(qbits)
        dxrow, dorow, dwbase, djoff = Signal(AB), Signal(AB), Signal(AB), Signal(AB)
        dnw = Signal(range(NW + 1))
        # X̂ and Δ words in LUT RAM (one write and one read port each), not NW·19·L flip-flops
        # behind NW:1 multiplexers.  No reset is needed: token 0 of a pass writes every word.
        # Depth ≥ 2 because the word counters (cwd, ew) are at least one bit wide.
        # The iCE40 has no LUT RAM (the hint would stop yosys): there they are flip-flops.
        ice40 = str(getattr(platform, "device", "")).startswith("iCE40")
        ram = {} if ice40 else {"ram_style": "distributed"}
        m.submodules.delta_xhat = xhat = Memory(shape=9 * L, depth=max(2, NW), init=[],
                                                attrs=ram)
        m.submodules.delta_dbuf = dbuf = Memory(shape=10 * L, depth=max(2, NW), init=[],
                                                attrs=ram)
        dmask = [Signal(L, name=f"dmask{w}") for w in range(NW)]
        nonempty = Signal(NW)
        ew = Signal(wbits)
        emask = Signal(L)
        tok_first = Signal()
        NB = DELTA_BLOCKS
        d_alloc = Signal(2)
        dcredits = Signal(range(NB + 1), init=NB)

        def ffs(v, n):
            """Index of the lowest set bit of ``v`` (n bits; 0 if none): the bit isolated by
            ``v & −v``, then encoded (flat OR trees, no priority chain)."""
            low = Signal(n, name="ffs_low")
            m.d.comb += low.eq(v & (~v + 1))
            nb = max(1, (n - 1).bit_length())
            return Cat(*(Cat(*(low[i] for i in range(n) if i >> b & 1)).any()
                         if any(i >> b & 1 for i in range(n)) else Const(0, 1)
                         for b in range(nb)))

        with m.If(self.cmd.valid & self.cmd.ready & self.cmd.payload.delta):
            d = self.cmd.payload
            m.d.sync += [
                dactive.eq(1), dstate.eq(FWAIT), dj.eq(0), dt.eq(0), dtq.eq(0),
                dxrow.eq(d.a_base), dorow.eq(d.out_base), dwbase.eq(d.b_base), djoff.eq(0),
                dpb.eq(d.p_base), dnw.eq((d.k + (L - 1)) >> lsh),
            ]

        # ---- scan: AMEM reads of X(t) (issued through the beat registers with valid = 0),
        # the row of PE t mod P picked in M2, Δ-encoded in the cycle after.
        scan_rd = Signal()
        cv = [Signal(name=f"dcv{k}") for k in range(5)]
        cwd = [Signal(wbits, name=f"dcw{k}") for k in range(5)]
        m.d.comb += [cv[0].eq(scan_rd), cwd[0].eq(dcnt[:wbits])]
        m.d.sync += [cv[k + 1].eq(cv[k]) for k in range(4)]
        m.d.sync += [cwd[k + 1].eq(cwd[k]) for k in range(4)]
        xrow4 = Signal(9 * L)
        m.d.sync += xrow4.eq(pick((pe.arow for pe in pes), dtq))
        # The Δ compare starts from registers (it was the ULX3S critical path, docs/board.md):
        # the X̂ word is read in M2 (its address is known then), and in M3 the bounds
        # x̂ ± θ and the lanes' k < K are registered, so that M4 holds two compares in
        # parallel (|x − x̂| > θ ⟺ x > x̂ + θ or x < x̂ − θ) instead of subtract, absolute
        # value and compare in series.  No hazard: the words of one token differ, and a
        # token's words are written (M4) before the next token's scan reads them.
        xhat_r = xhat.read_port(domain="sync")
        m.d.comb += xhat_r.addr.eq(cwd[2])
        xw = Signal(9 * L)
        lane_ok = Signal(L)
        m.d.sync += xw.eq(xhat_r.data)
        first_tok = is_zero(dt)
        theta = desc.theta
        new_x, new_d, new_m = [], [], []
        for l in range(L):
            xh3 = xhat_r.data[9 * l:9 * l + 9].as_signed()
            hi, lo = Signal(signed(10), name=f"dhi{l}"), Signal(signed(10), name=f"dlo{l}")
            m.d.sync += [hi.eq(xh3 + theta), lo.eq(xh3 - theta),
                         lane_ok[l].eq(((cwd[3] << lsh) + l) < desc.k)]
            x = xrow4[9 * l:9 * l + 9].as_signed()
            xh = xw[9 * l:9 * l + 9].as_signed()
            dd = Signal(signed(10), name=f"dd{l}")
            m.d.comb += dd.eq(x - xh)
            over = (x > hi) | (x < lo)       # |Δ| > θ ≥ 0, so Δ ≠ 0
            send = first_tok | over
            dl = Signal(signed(10), name=f"dl{l}")
            m.d.comb += dl.eq(Mux(lane_ok[l], Mux(first_tok, x, Mux(over, dd, 0)), 0))
            new_d.append(dl)
            new_m.append(lane_ok[l] & Mux(first_tok, x.any(), over))
            new_x.append(Mux(send, x, xh)[:9])
        for mem, val in ((xhat, Cat(*new_x)), (dbuf, Cat(*new_d))):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(cwd[4]), wp.data.eq(val), wp.en.eq(cv[4])]
        with m.If(cv[4]):
            for w in range(NW):
                with m.If(_eq(cwd[4], w)):
                    m.d.sync += [dmask[w].eq(Cat(*new_m)), nonempty[w].eq(Cat(*new_m).any())]

        # ---- parameter fetch: 8 PBUF reads per PE (4 bias, 2 m, 1 sh words), captured in D2.
        fv = [Signal(name=f"dfv{k}") for k in range(3)]
        fc = [Signal(16, name=f"dfc{k}") for k in range(3)]
        m.d.comb += [fv[0].eq(dfetch), fc[0].eq(dfc)]
        m.d.sync += [fv[k + 1].eq(fv[k]) for k in range(2)]
        m.d.sync += [fc[k + 1].eq(fc[k]) for k in range(2)]
        dbias = [Signal(32 * L, name=f"dbias{p}") for p in range(P)]
        dmul = [Signal(16 * L, name=f"dmul{p}") for p in range(P)]
        dsh = [Signal(8 * L, name=f"dsh{p}") for p in range(P)]
        fp2, fs2 = fc[2] >> 3, fc[2][:3]
        with m.If(fv[2]):
            for p in range(P):
                with m.If(_eq(fp2, p)):
                    for w in range(4):
                        with m.If(_eq(fs2, w)):
                            m.d.sync += dbias[p][8 * L * w:8 * L * (w + 1)].eq(prow2[0])
                    for w in range(2):
                        with m.If(fs2 == 4 + w):
                            m.d.sync += dmul[p][8 * L * w:8 * L * (w + 1)].eq(prow2[1])
                    with m.If(fs2 == 6):
                        m.d.sync += dsh[p].eq(prow2[2])
        for p in range(P):
            m.d.sync += [
                dbias3[p].eq(select(dbias[p], meta[2].i, 32).as_signed()),
                dmul4[p].eq(select(dmul[p], meta[3].i, 16)),
                dsh4[p].eq(select(dsh[p], meta[3].i, 8)),
            ]

        # ---- the sequencer
        # The nonempty words after ew, a register: set in EMIT0, its lowest bit dropped at each
        # word step (decoding it from ew, a shift and a subtract, was the ULX3S critical path
        # after the scan's: ew → d_last → d_issue → nonempty, docs/board.md).
        more = Signal(NW)
        # "No bit of emask set", "at most one set" and "at most one word in more": registers
        # beside emask and more, so that d_last is an AND-OR of flip-flops (decoding it from
        # emask through the `emask − 1` carry chain was the ULX3S critical path after 69a96a4:
        # emask → d_last → d_issue → the ring write, docs/board.md).
        e_zero, e_one, m_zero = Signal(), Signal(), Signal()
        dsingle = [at_most_one(dmask[w]) for w in range(NW)]
        dbuf_r = dbuf.read_port(domain="comb")
        cur_d = dbuf_r.data
        m.d.comb += dbuf_r.addr.eq(ew)
        i_sel = ffs(emask, L)
        rest = emask & (emask - 1)
        w_next = ffs(more, NW)
        k_now = Cat(i_sel, ew)
        dno_credit = is_zero(dcredits)
        in_emit = dactive & (dstate == EMIT)
        m.d.comb += [
            d_last.eq(e_zero | (e_one & m_zero)),
            d_hold.eq(in_emit & d_last & (~ge_l | dno_credit)),
            d_issue.eq(in_emit & ~d_hold),
            d_first.eq(tok_first & first_tok),
            d_val.eq(Mux(e_zero, 0, select(cur_d, i_sel, 10).as_signed())),
            d_addr.eq(Mux(dstate == SCAN, dxrow + (dcnt << lsh),
                          dwbase + Mux(e_zero, 0, k_now << lsh))),
            scan_rd.eq(dactive & (dstate == SCAN)),
            dfetch.eq(dactive & (dstate == FETCH)),
        ]
        last_tok = dt == desc.rows - 1
        last_pass = dj == desc.gpasses - 1
        dtile = Signal(tile_layout)
        m.d.comb += [
            dtile.dst.eq(desc.dst), dtile.flags.eq(desc.flags), dtile.sat.eq(desc.sat),
            dtile.rmask.eq((1 << P) - 1), dtile.ncols.eq(L), dtile.dblk.eq(d_alloc),
            dtile.mm_last.eq(last_tok & last_pass), dtile.act_sel.eq(desc.act_sel),
            dtile.delta.eq(1), dtile.dq.eq(dtq), dtile.drow.eq(dorow + djoff),
            dtile.dn.eq(desc.ncols - djoff),
        ]
        w0 = ffs(nonempty, NW)
        with m.If(is_zero(dstate)):
            # The previous pass's results are written before its parameters are replaced.
            with m.If(dactive & is_zero(outstanding)):
                m.d.sync += [dstate.eq(FETCH), dfc.eq(0)]
        with m.Elif(dstate == FETCH):
            m.d.sync += dfc.eq(dfc + 1)
            with m.If(dfc == 8 * P - 1):
                m.d.sync += [dstate.eq(SCAN), dcnt.eq(0), nonempty.eq(0), tok_first.eq(1)]
        with m.Elif(dstate == SCAN):
            m.d.sync += dcnt.eq(dcnt + 1)
            with m.If(dcnt == dnw - 1):
                m.d.sync += [dstate.eq(SWAIT), dcnt.eq(0)]
        with m.Elif(dstate == SWAIT):
            m.d.sync += dcnt.eq(dcnt + 1)
            with m.If(dcnt == 3):
                m.d.sync += dstate.eq(EMIT0)
        with m.Elif(dstate == EMIT0):
            m.d.sync += [dstate.eq(EMIT), ew.eq(w0), emask.eq(pick(dmask, w0)),
                         more.eq(nonempty & (nonempty - 1)),
                         e_zero.eq(is_zero(nonempty)), e_one.eq(pick(dsingle, w0)),
                         m_zero.eq(at_most_one(nonempty))]
        with m.Else():   # EMIT
            with m.If(d_issue):
                m.d.sync += tok_first.eq(0)
                with m.If(~d_last):
                    with m.If(~e_one):
                        m.d.sync += [emask.eq(rest), e_one.eq(at_most_one(rest))]
                    with m.Else():
                        m.d.sync += [ew.eq(w_next), emask.eq(pick(dmask, w_next)),
                                     more.eq(more & (more - 1)), e_one.eq(pick(dsingle, w_next)),
                                     m_zero.eq(at_most_one(more))]
                with m.Else():
                    m.d.sync += [ring_w.eq(~ring_w), d_alloc.eq(d_alloc + 1)]
                    for k in range(2):
                        with m.If(_eq(ring_w, k)):
                            m.d.sync += ring[k].eq(dtile)
                    # next token
                    m.d.sync += [dstate.eq(SCAN), dcnt.eq(0), nonempty.eq(0),
                                 tok_first.eq(1), dt.eq(dt + 1)]
                    with m.If(dtq == P - 1):
                        m.d.sync += [dtq.eq(0), dxrow.eq(dxrow + desc.a_stride),
                                     dorow.eq(dorow + desc.out_stride)]
                    with m.Else():
                        m.d.sync += dtq.eq(dtq + 1)
                    with m.If(last_tok):
                        m.d.sync += [dt.eq(0), dtq.eq(0), dxrow.eq(desc.a_base),
                                     dorow.eq(desc.out_base), dj.eq(dj + 1),
                                     dwbase.eq(dwbase + (desc.k << lsh)),
                                     djoff.eq(djoff + P * L), dpb.eq(dpb + P),
                                     dstate.eq(FWAIT)]
                        with m.If(last_pass):
                            m.d.sync += dactive.eq(0)

        # ---- collector: two blocks of P×L results (y, 16 bits), filled in D_Y.
        cblk = [[Signal(16 * L, name=f"dcblk{b}_{p}") for p in range(P)] for b in range(NB)]
        dmeta_layout = data.StructLayout({"dq": unsigned(qbits), "drow": unsigned(AB),
                                          "dn": signed(AB), "mm_last": unsigned(1),
                                          "cmem": unsigned(1)})
        dmeta = [Signal(dmeta_layout, name=f"dmeta{b}") for b in range(NB)]
        dfull = Signal(NB)
        with m.If(load):
            tile = data.View(tile_layout, Mux(ring_r, ring[1].as_value(), ring[0].as_value()))
            with m.If(tile.delta):
                for b in range(NB):
                    with m.If(_eq(tile.dblk, b)):
                        m.d.sync += [dmeta[b].dq.eq(tile.dq), dmeta[b].drow.eq(tile.drow),
                                     dmeta[b].dn.eq(tile.dn), dmeta[b].mm_last.eq(tile.mm_last),
                                     dmeta[b].cmem.eq(is_zero(tile.dst))]
        with m.If(my.valid & my.delta):
            for b in range(NB):
                with m.If(_eq(my.dblk, b)):
                    for i in range(L):
                        with m.If(_eq(my.i, i)):
                            m.d.sync += [cblk[b][p][16 * i:16 * i + 16].eq(pe.y)
                                         for p, pe in enumerate(pes)]

        # ---- writer
        w_busy, w_blk = Signal(), Signal(2)
        wm = Signal(dmeta_layout)
        w_p = Signal(range(P + 1))
        w_s = Signal(2)
        w_n = Signal(signed(AB))     # columns left from PE row w_p on
        # The PE row's lane enables and "last PE row with columns in this pass" (later PEs have
        # none: N ran out) are registers, computed from the next w_n: decoding them from w_n
        # fed the CMEM write enables and addresses in series (the P = 2 ULX3S critical path,
        # docs/board.md).
        lane_en = Signal(L)
        last_row = Signal()

        def lanes_of(n):
            return Mux(n >= L, (1 << L) - 1,
                       Mux(n > 0, ((Const(1, L + 1) << n[:lsh + 1]) - 1)[:L], 0))

        with m.If(~w_busy):
            with m.If((dfull >> w_blk)[0]):
                bm = data.View(dmeta_layout, pick((d.as_value() for d in dmeta), w_blk))
                m.d.sync += [w_busy.eq(1), wm.eq(bm), w_p.eq(0), w_s.eq(0), w_n.eq(bm.dn),
                             dw_addr.eq(bm.drow), lane_en.eq(lanes_of(bm.dn)),
                             last_row.eq(Const(P == 1, 1) | (bm.dn <= L))]
        # The writer always writes row 0, group 0 of its block: each step shifts the block
        # (a group within row 0 for CMEM, whole rows at a row's end), so the write data is a
        # register behind one block multiplexer. Selecting row w_p and group w_s instead fed
        # the PE row and group multiplexers into the CMEM write data: the P = 2 ULX3S critical
        # path (docs/board.md). The collector never writes a block the writer holds.
        row = pick((cblk[b][0] for b in range(NB)), w_blk)
        step_end = Signal()
        m.d.comb += [
            dw_q.eq(wm.dq),
            dw_amem.eq(w_busy & ~wm.cmem),
            dw_cmem.eq(w_busy & wm.cmem),
            dw_adata.eq(Cat(*(row[16 * l:16 * l + 9] for l in range(L)))),
            step_end.eq(~wm.cmem | (w_s == 3)),
        ]
        # CMEM: the low group of L/4 results, sign-extended to int32.
        grp = row[:4 * L]
        m.d.comb += dw_cdata.eq(Cat(*(Cat(grp[16 * s:16 * s + 16],
                                          Mux(grp[16 * s + 15], 0xFFFF, 0)[:16])
                                      for s in range(cw))))
        m.d.comb += dw_en.eq(Mux(wm.cmem, lane_en[:cw], lane_en))
        with m.If(w_busy):
            with m.If(wm.cmem & ~step_end):
                m.d.sync += [w_s.eq(w_s + 1), dw_addr.eq(dw_addr + cw), lane_en.eq(lane_en >> cw)]
                for b in range(NB):
                    with m.If(_eq(w_blk, b)):
                        m.d.sync += cblk[b][0].eq(cblk[b][0] >> (4 * L))
            with m.Else():
                n_next = w_n - L
                for b in range(NB):
                    with m.If(_eq(w_blk, b)):
                        m.d.sync += [cblk[b][p].eq(cblk[b][p + 1]) for p in range(P - 1)]
                m.d.sync += [w_s.eq(0), w_p.eq(w_p + 1), w_n.eq(n_next),
                             lane_en.eq(lanes_of(n_next)),
                             last_row.eq(_eq(w_p + 1, P - 1) | (n_next <= L)),
                             dw_addr.eq(Mux(wm.cmem, dw_addr + cw, dw_addr + L))]
                with m.If(last_row):
                    m.d.sync += [w_busy.eq(0), w_blk.eq(w_blk + 1)]
        fin = w_busy & step_end & last_row
        m.d.comb += [dw_done.eq(fin), dw_done_last.eq(fin & wm.mm_last)]
        for b in range(NB):
            with m.If(fin & (_eq(w_blk, b))):
                m.d.sync += dfull[b].eq(0)
            with m.If(my.tile_end & my.delta & (_eq(my.dblk, b))):
                m.d.sync += dfull[b].eq(1)
        take = d_issue & d_last
        m.d.sync += dcredits.eq(dcredits - take + fin)
