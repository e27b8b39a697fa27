"""Row unit: SOFTMAX, LAYERNORM, RADD and RECIP (docs/isa_transformer.md), one element per cycle
per PE, all PEs in lockstep.

Golden models: :func:`sim.golden.exp_weights` with ``mantissa15(divide(2³², Σw), 24)``
(SOFTMAX, attention mode), :func:`sim.golden.softmax` (NORM), :func:`sim.golden.layernorm`,
:func:`sim.golden.add` (docs/numerics.md §5, §9, §10).

Split as the MATMUL is: one :class:`RowSequencer` per array issues the elements (counters,
addresses, the per-stage element controls, write addresses) and one :class:`RowDatapath` per
PE, inside :class:`hw.pe.PE`, holds the statistics, the exp unit, a serial divider, a serial
multiplier and the rsqrt unit for the once-per-row work, and borrows the PE's two
multipliers (the row scale S1 and the requantizer S2) and its CMEM/AMEM read ports: a MATMUL
and a row operation never run at the same time.

**Passes.** Each local row ``r`` (row ``n = r·P + p`` in PE p) is streamed in up to three
passes of k elements: statistics passes ``A`` (SOFTMAX: the maximum; LAYERNORM: Σh and Σh²),
``B`` (SOFTMAX with NORM: Σe) and the output pass ``OUT``. Per-row work (the divide, or
LAYERNORM's μ, variance and rsqrt: the *job* of the row) starts when its pass has streamed
and runs while later passes stream; its results go to one of two register sets selected by
the row's parity. The sequencer runs the statistics of row r + 1 before the output of row r::

    A(0) [B(0)]  A(1) [B(1)]  OUT(0)  A(2) [B(2)]  OUT(1)  …  OUT(n−1)

so a row's job overlaps the next row's statistics pass. SOFTMAX MAXC (the maximum already
in column k, written by a MATMUL MAXC) reads that one element as its pass ``A``.

LAYERNORM RES (the residual add fused in) streams every statistics pass first, then every
output pass: a statistics element is a RADD (x read in R12, h in R18, ``h + x·m`` in S2, m / sh
from the PBUF tiles after G and B), its int16 result h written back in place in R_Y and, a
cycle after leaving S2 (R24), squared in S1: Σh in R24, Σh² and the job ``RES_DELAY`` = 21
stages after a plain LAYERNORM's. The job results (μ, R, 7 + p) go to a 16-entry table by local
row; the first output element waits ``RES_DELAY`` + 1 cycles after the last statistics
element (S1 and the CMEM read port are then free of them), each output pass for its row's job.
The job of SOFTMAX in attention mode
is the divide of the output pass's Σw and the RS write (nothing waits for it). RECIP has one
output pass of one element per row (its denominator, k = 1) and no statistics pass; the
element starts the same job in R_DATA with the clipped denominator as divisor (``mantissa15``
with shift 16; RS (0, 0) for den ≤ 0) and nothing is written but RS. Each job takes
a fixed number of cycles; the sequencer holds the last element of a pass that starts a job
until the previous job has finished, and the first element of an output pass until its row's
job has finished (LAYERNORM, NORM).

**Stage map** (R0: the sequencer's element registers; the constants ``RowDatapath.R_*``):

======  ===================================================================================
R0      CMEM read of the element (SOFTMAX, LAYERNORM)
R3      ``rc_data``; the element (``cin``); max, Σh; z = M − S or c = h − μ
R4      S1 operands: (z, c_e, sh_e), (h, h, 0) or (c, R, 7 + p)
R9      S1 result
R10     ``rc_q1``; S1 result registered here: Σh² (LAYERNORM A); PBUF m / sh at the PE (it
        delays them to R15)
R11     clipped to uint16 (u, the exp input) or int16 (n)
R12     AMEM read of RADD's x
R15     ``rc_s2``; e; Σe (NORM B); S2 operands (x, m, sh, sat)
R17     S2 addend c: LAYERNORM's B (``bias``)
R18     CMEM read of RADD's h
R21     S2 post-rounding addend: RADD's h
R24     ``rc_y2``; S2 result; Σw (SOFTMAX attention OUT)
R27     ``y`` (after the PE's activation stage, unused here): written to the destination
======  ===================================================================================

**Jobs** (counted from the R0 of the last element of the pass that starts them; results in
registers from then on): LAYERNORM ``LN_DONE`` = 58 (13 + 6 + 14 radix-4 Booth digits for
Σh·r_D, k·μ and (k·μ − 2Σh)·μ, one step more each, then the rsqrt), SOFTMAX NORM ``NORM_DONE``
= 51 and attention ``ATTN_DONE`` = 63 (a 34-cycle serial divide, plus ``mantissa15`` for the
RS entry), RECIP ``RECIP_DONE`` = 42 (the same job from R_DATA).

**Cycle cost** of a row operation (``busy`` from the cycle after acceptance to the cycle after
the last write): ``⌈rows/P⌉`` rows of ``n_p·k`` element cycles (n_p = 2 for SOFTMAX and
LAYERNORM, 3 for NORM, 1 for RADD), rows at least ``DONE + 1`` apart (one job at a time),
plus the pipeline (``R_Y + 2`` = 29) and, for the last row, at most one job latency:
``⌈rows/P⌉·max(n_p·k, DONE + 1) + DONE + 30`` at most. When ``n_p·k ≥ DONE + 1`` the rows
stream without a gap: LAYERNORM takes exactly ``⌈rows/P⌉·2k + 29``, SOFTMAX (attention)
``⌈rows/P⌉·2k + 65`` (the last RS write), RADD always ``⌈rows/P⌉·k + 29``
(tests/test_rowunit.py checks these); RECIP ``⌈rows/P⌉·(RECIP_DONE + 1) + 2``
(tests/test_linear_attention_rtl.py). SOFTMAX MAXC: n_p·k becomes (n_p − 1)·k + 1. LAYERNORM
RES (``sim.program.res_row_span``): statistics passes with their last elements at least
``LN_DONE + 1`` apart, the first output element ``RES_DELAY + 1`` after the last statistics
element, output pass r not before ``RES_DONE + 1`` after the last element of its statistics
pass, then ``R_Y + 2``: ``⌈rows/P⌉·2k + 50`` when k ≥ ``LN_DONE + 1``. KWT-1 at P = 8: a
softmax of 13 local rows of 99 scores takes 2 639 cycles (MAXC: 1 365), a LayerNorm of 13 rows
of 64 takes 1 693, a residual add 861, both as one LAYERNORM RES 1 714.
"""
import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sim.golden.exp import EXP_LUT
from .isa import Dst, Sat
from .params import check_choice, check_int
from .pe import (LANE_CHOICES, PE, MulRound, Pass, Requant, RowOp, _log2, is_zero,
                 row_ctl_layout, row_op_layout)
from .rsqrt import Rsqrt

__all__ = ["RowDatapath", "RowSequencer", "SerialDivider", "row_desc_layout", "ROW_ADDR_BITS",
           "MAX_ROW_K"]

#: Longest row of a row operation (docs/isa_transformer.md).
MAX_ROW_K = 1024


def _is(v, code):
    """``v == code``; for code 0 written so that Verilator's lint does not see ``!v``."""
    return is_zero(v) if int(code) == 0 else v == code

#: Width of the sequencer's address arithmetic (as the array's: every range is checked at
#: decode against depths ≤ 2^16).
ROW_ADDR_BITS = 18


class SerialDivider(wiring.Component):
    """``q = floor(n / d)`` by restoring division, one quotient bit per cycle.

    Golden model: :func:`sim.golden.divide` (``d = 0`` gives ``2³³ − 1``).

    Ports
    -----
    start : In(1)
        Takes ``n`` (uint33) and ``d`` (uint32) in this cycle.
    n : In(33)
    d : In(32)
    q : Out(33)
        The quotient, valid :attr:`LATENCY` cycles after ``start`` and held until the next.
    busy : Out(1)
    """
    LATENCY = 34

    def __init__(self):
        super().__init__({"start": In(1), "n": In(33), "d": In(32), "q": Out(33),
                          "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        cnt = Signal(range(34))
        rem = Signal(32)           # < d
        nq = Signal(33)            # unconsumed n bits on top, quotient bits below
        d = Signal(32)
        t = Cat(nq[32], rem)       # 2·rem + next bit of n, < 2^33
        diff = Signal(34)
        m.d.comb += [diff.eq(t - d), self.q.eq(nq), self.busy.eq(cnt.any())]
        with m.If(self.start):
            m.d.sync += [cnt.eq(33), rem.eq(0), nq.eq(self.n), d.eq(self.d)]
        with m.Elif(cnt.any()):
            ge = ~diff[33]
            m.d.sync += [cnt.eq(cnt - 1), rem.eq(Mux(ge, diff[:32], t[:32])),
                         nq.eq(Cat(ge, nq[:32]))]
        return m


class _Job(enum.IntEnum):
    IDLE = 0
    LN = 1       # LAYERNORM: μ, v, rsqrt
    DIV = 2      # SOFTMAX: divide (NORM: r; attention: RS entry)


class RowDatapath(wiring.Component):
    """The row unit of one PE (instantiated by :class:`hw.pe.PE`, which routes its ports).

    Ports
    -----
    op : In(row_op_layout())
        The running operation (constant while it runs).
    rc_data, rc_q1, rc_s2, rc_y2 : In(row_ctl_layout())
        The element in stages :attr:`R_DATA`, :attr:`R_Q1`, :attr:`R_S2`, :attr:`R_Y2`
        (``first``/``last`` of its pass, pass ``kind``, row parity ``par``, and ``acc``: it
        updates the max / Σh (R_DATA: pass A), Σh² (R_Q1: LAYERNORM A), Σe (R_S2: NORM B), Σw
        (R_Y2: attention OUT)).
    cin : In(signed(32))
        The CMEM element (R_DATA; RADD: R_A).
    ain : In(signed(9))
        The AMEM element (RADD: R_S2).
    q1 : In(signed(50))
        S1's result (R_Q1 − 1; registered here).
    y2 : In(signed(16))
        S2's result (R_Y2).
    bias, m_d, sh_d : In
        The column parameters B (R_C), m / G and sh (R_S2).
    s1_x, s1_m, s1_sh : Out
        S1's operands (R_S1).
    s2_x, s2_m, s2_sh, s2_sat : Out
        S2's operands (R_S2); ``s2_c`` (R_C), ``s2_a`` (R_A): its addends.
    rs_m, rs_sh : Out
        The RS entry of the last SOFTMAX (attention) row, valid from ``ATTN_DONE`` on.

    The job constants ``LN_DONE``, ``NORM_DONE``, ``ATTN_DONE`` are the stages (counted from
    the R0 of the last element of the pass that starts the job) from which the job's results
    are in their registers.
    """
    #: Stages of the element, from R0 (the sequencer's element registers).
    R_DATA = PE.R_DATA                       # CMEM / AMEM element (read in R0)
    R_S1 = R_DATA + 1                        # S1 operands
    R_Q1 = R_S1 + MulRound.latency_of(False) + 1   # S1 result, registered here
    R_T = R_Q1 + 1                           # clipped: the exp input (u) or n
    EXP_LATENCY = 4                          # table read, register, shift, round
    R_S2 = R_T + EXP_LATENCY                 # e; S2 operands
    R_PARAM = R_S2 - (PE.D_S2 - PE.D_RQ)     # m / sh at the PE (it delays them to R_S2)
    R_C = R_S2 + Requant.C_STAGE             # S2 addend (LAYERNORM's B, ``bias``)
    R_A = R_S2 + Requant.A_STAGE             # S2 post-rounding addend (RADD's h)
    R_Y2 = R_S2 + Requant.LATENCY            # S2 result
    R_Y = R_Y2 + (PE.D_Y - PE.D_ACT)         # the PE's y: written

    #: LAYERNORM job steps: 13 + 6 + 14 Booth digits (one step more each), then the rsqrt
    #: (see ``elaborate``).
    LN_STEPS = 47
    LN_DONE = R_Q1 + LN_STEPS + 1
    NORM_DONE = R_S2 + SerialDivider.LATENCY + 2
    ATTN_DONE = R_Y2 + SerialDivider.LATENCY + 5
    #: RECIP: the attention job, started by the element itself (R_DATA).
    RECIP_DONE = R_DATA + SerialDivider.LATENCY + 5
    #: LAYERNORM RES: the residual sum h leaves S2 in R_Y2 and enters S1 (for h²) a cycle
    #: later, so its statistics (and its job) run ``RES_DELAY`` stages after a plain
    #: LAYERNORM's; its row constants live in a table of ``RES_ROWS`` local rows.
    RES_DELAY = R_Y2 + 1 - R_S1
    RES_DONE = LN_DONE + RES_DELAY
    RES_ROWS = 16

    def __init__(self):
        ctl = row_ctl_layout()
        super().__init__({
            "op": In(row_op_layout()),
            "rc_data": In(ctl), "rc_q1": In(ctl), "rc_s2": In(ctl), "rc_y2": In(ctl),
            "cin": In(signed(32)), "ain": In(signed(9)),
            "q1": In(signed(50)), "y2": In(signed(16)),
            "bias": In(signed(32)), "m_d": In(signed(17)), "sh_d": In(unsigned(8)),
            "s1_x": Out(signed(33)), "s1_m": Out(signed(17)), "s1_sh": Out(unsigned(8)),
            "s2_x": Out(signed(33)), "s2_m": Out(signed(17)), "s2_sh": Out(unsigned(8)),
            "s2_sat": Out(unsigned(2)), "s2_c": Out(signed(32)), "s2_a": Out(signed(32)),
            "rs_m": Out(unsigned(15)), "rs_sh": Out(unsigned(6)),
        })

    def elaborate(self, platform):
        m = Module()
        op = self.op
        # The operation decoded here, registered: it is constant while the operation runs and
        # its first element reaches R_DATA three cycles after the sequencer took it.
        sm, ln, radd, norm = Signal(), Signal(), Signal(), Signal()
        rcp, res = Signal(), Signal()
        m.d.sync += [sm.eq(_is(op.op, RowOp.SOFTMAX)), ln.eq(op.op == RowOp.LAYERNORM),
                     radd.eq(op.op == RowOp.RADD), norm.eq(op.norm),
                     rcp.eq(op.op == RowOp.RECIP),
                     res.eq((op.op == RowOp.LAYERNORM) & op.res)]
        c_e, sh_e = op.imm[:16], op.imm[16:22]
        r_d = op.imm[:25]

        # Row constants, double-buffered by row parity: SOFTMAX max M and NORM reciprocal r;
        # LAYERNORM μ, R and 7 + p.
        M = [Signal(signed(32), name=f"M{k}") for k in range(2)]
        rr = [Signal(18, name=f"r{k}") for k in range(2)]
        mu = [Signal(signed(28), name=f"mu{k}") for k in range(2)]
        R = [Signal(15, name=f"R{k}") for k in range(2)]
        shR = [Signal(5, name=f"shR{k}") for k in range(2)]
        # Statistics accumulators and their final values (taken with the pass's last element,
        # so that the next row's pass may start accumulating at once).
        # LAYERNORM RES: μ, R and 7 + p per local row (its output passes follow all its
        # statistics passes), read asynchronously by the element's row.
        m.submodules.res_tab = res_tab = Memory(shape=unsigned(48), depth=self.RES_ROWS,
                                                init=[])
        tab_w = res_tab.write_port()
        tab_r = res_tab.read_port(domain="comb")
        hsum, hsum_fin = Signal(signed(27)), Signal(signed(27))
        sq, sq_fin = Signal(42), Signal(42)
        sig, sig_fin = Signal(32), Signal(32)

        # ---- R_DATA: element in; max, Σh; S1 operands registered for R_S1.
        cd = self.rc_data
        S = self.cin
        h = self.cin[:16].as_signed()
        Mp = Mux(cd.par, M[1], M[0])
        out_d = cd.kind == Pass.OUT
        m.d.comb += tab_r.addr.eq(cd.row)
        mu_t = tab_r.data[:28].as_signed()
        R_t, shR_t = tab_r.data[28:43], tab_r.data[43:48]
        with m.If(cd.acc):          # (LAYERNORM: garbage, unused)
            new_max = Mux(cd.first | (S > Mp), S, Mp)
            with m.If(cd.par):
                m.d.sync += M[1].eq(new_max)
            with m.Else():
                m.d.sync += M[0].eq(new_max)
        with m.If(cd.acc):          # (SOFTMAX: garbage, unused)
            tot = Mux(cd.first, h, hsum + h)
            m.d.sync += hsum.eq(tot)
            with m.If(cd.last):
                m.d.sync += hsum_fin.eq(tot)
        # RECIP: the row's one element is the denominator (the sequencer sets ``acc`` for it):
        # clip(den, 2^8, 2^31 − 1) becomes the divisor, den > 0 decides the RS entry.
        den_pos = Signal()
        with m.If(cd.acc & rcp):
            m.d.sync += [sig_fin.eq(Mux(S < (1 << 8), 1 << 8, S[:31])), den_pos.eq(S > 0)]
        z = Signal(signed(34))
        cdev = Signal(signed(29))
        m.d.comb += [z.eq(Mp - S),
                     cdev.eq(h - Mux(res, mu_t, Mux(cd.par, mu[1], mu[0])))]
        # RES statistics pass: h (S2's result in R_Y2) squared in S1; never in the same cycle
        # as an output element's S1 operands (the sequencer leaves RES_DELAY + 1 cycles
        # between the last statistics element and the first output element).
        cy = self.rc_y2
        res_y = res & cy.valid & _is(cy.kind, Pass.A)
        with m.If(res_y):
            m.d.sync += [self.s1_x.eq(self.y2), self.s1_m.eq(self.y2), self.s1_sh.eq(0)]
        with m.Else():
            m.d.sync += [
                self.s1_x.eq(Mux(sm, z, Mux(out_d, cdev, h))),
                self.s1_m.eq(Mux(sm, c_e, Mux(out_d, Mux(res, R_t,
                                                         Mux(cd.par, R[1], R[0])), h))),
                self.s1_sh.eq(Mux(sm, sh_e, Mux(out_d, Mux(res, shR_t,
                                                           Mux(cd.par, shR[1], shR[0])), 0))),
            ]
        # RES: Σh of the residual sums as they leave S2 (the sequencer sets R_Y2's `acc`).
        with m.If(cy.acc & res):
            tot = Mux(cy.first, self.y2, hsum + self.y2)
            m.d.sync += hsum.eq(tot)
            with m.If(cy.last):
                m.d.sync += hsum_fin.eq(tot)

        # ---- R_Q1: S1's result. SOFTMAX: u = min(65535, q) (q ≥ 0); LAYERNORM OUT:
        # n = clip(q, int16); LAYERNORM A: Σh².
        q1 = Signal(signed(50))     # S1's result, registered next to its users
        m.d.sync += q1.eq(self.q1)
        t = Signal(16)          # R_T
        over16 = ~q1[-1] & q1[15:].any()
        under16 = q1[-1] & ~q1[15:].all()
        m.d.sync += t.eq(Mux(sm, Mux(q1[16:].any(), 0xFFFF, q1[:16]),
                             Mux(over16, 0x7FFF, Mux(under16, 0x8000, q1[:16]))))
        cq = self.rc_q1
        with m.If(cq.acc):
            tot = Mux(cq.first, q1[:31], sq + q1[:31])
            m.d.sync += sq.eq(tot)
            with m.If(cq.last):
                m.d.sync += sq_fin.eq(tot)

        # ---- R_T → R_S2: e = exp(u) (docs/numerics.md §7): EXP_LUT[u mod 256] (a block RAM,
        # registered once more), then rshift_round by n = u div 256 in two stages (shift by
        # n − 1 keeping the rounding bit, round), 0 for n ≥ 16. n travels alongside.
        m.submodules.exp_lut = lut = Memory(shape=unsigned(16), depth=256,
                                            init=[int(v) for v in EXP_LUT])
        rd = lut.read_port(domain="sync")
        m.d.comb += rd.addr.eq(t[:8])
        n_e = [Signal(4, name=f"n_e{k}") for k in range(2)]
        big = [Signal(name=f"big{k}") for k in range(3)]
        lut2 = Signal(16)
        sh3 = Signal(17)
        e = Signal(16)          # R_S2
        m.d.sync += [n_e[0].eq(t[8:12]), big[0].eq(t[12:].any()),          # R_T + 1
                     n_e[1].eq(n_e[0]), big[1].eq(big[0]), lut2.eq(rd.data),  # R_T + 2
                     sh3.eq((lut2 << 1) >> n_e[1]), big[2].eq(big[1]),        # R_T + 3
                     e.eq(Mux(big[2], 0, (sh3 >> 1) + sh3[0]))]               # R_T + 4
        n_s2 = Signal(signed(16))
        n_d = [Signal(signed(16), name=f"n_d{k}") for k in range(self.EXP_LATENCY - 1)]
        m.d.sync += [n_d[0].eq(t)] + [n_d[k + 1].eq(n_d[k]) for k in range(len(n_d) - 1)]
        m.d.sync += n_s2.eq(n_d[-1])

        # ---- R_S2: Σe (NORM B); S2 operands. SOFTMAX attention: w = clip(rshift_round(e·1, 7),
        # uint8); NORM: p = clip(rshift_round(r·e, 24), uint8); LAYERNORM: n·G + B, sh;
        # RADD: x·m, sh (+ h in R_A).
        cs = self.rc_s2
        # RES statistics elements are residual adds (RADD's S2 operands, int16): flagged in
        # R_S2 and delayed to S2's addend stages R_C and R_A.
        res_s = res & cs.valid & _is(cs.kind, Pass.A)
        res_d = [Signal(name=f"res_d{k}") for k in range(Requant.A_STAGE)]
        m.d.sync += [res_d[0].eq(res_s)] + [res_d[k + 1].eq(res_d[k])
                                             for k in range(len(res_d) - 1)]
        res_c, res_a = res_d[Requant.C_STAGE - 1], res_d[Requant.A_STAGE - 1]
        with m.If(cs.acc):
            tot = Mux(cs.first, e, sig + e)
            m.d.sync += sig.eq(tot)
            with m.If(cs.last):
                m.d.sync += sig_fin.eq(tot)
        r_s2 = Mux(cs.par, rr[1], rr[0])
        m.d.comb += [
            self.s2_x.eq(Mux(sm, Mux(norm, r_s2, e), Mux(ln & ~res_s, n_s2, self.ain))),
            self.s2_m.eq(Mux(sm, Mux(norm, e, 1), self.m_d)),
            self.s2_sh.eq(Mux(sm, Mux(norm, 24, 7), self.sh_d)),
            self.s2_sat.eq(Mux(sm, Sat.UINT8, Mux(res_s, Sat.INT16, op.sat))),
            self.s2_c.eq(Mux(ln & ~res_c, self.bias, 0)),
            self.s2_a.eq(Mux(radd | res_a, self.cin, 0)),
        ]

        # ---- R_Y2: S2's result; Σw (SOFTMAX attention OUT).
        with m.If(cy.acc & ~res):
            tot = Mux(cy.first, self.y2[:8], sig + self.y2[:8])
            m.d.sync += sig.eq(tot)
            with m.If(cy.last):
                m.d.sync += sig_fin.eq(tot)

        # ---- jobs: a step counter (1 … last) driving a serial divider or a serial Booth
        # multiplier; the sequencer never starts a job before the previous one finished. Every
        # action is enabled by a registered step flag (step 1: the trigger; step s > 1: the
        # counter at s − 1), so that no comparison sits in front of the wide registers it
        # enables.
        js = Signal(6)
        job = Signal(2)
        jpar = Signal()
        jrow = Signal(4)
        q_step = 1 + SerialDivider.LATENCY          # step in which the quotient is valid
        a_last = q_step + 3                         # attention: the RS entry is ready
        trig_ln = cq.acc & cq.last
        trig_div = (cs.acc & cs.last) | (cy.acc & cy.last) | (cd.acc & cd.last & rcp)
        # The job's last step, registered (a cycle ahead, as the step flags below).
        js_last = Signal()
        m.d.sync += js_last.eq(js.any() & Mux(job == _Job.LN, js == self.LN_STEPS - 1,
                                              Mux(norm, js == q_step - 1, js == a_last - 1)))
        with m.If(trig_ln):
            m.d.sync += [js.eq(1), job.eq(_Job.LN), jpar.eq(cq.par), jrow.eq(cq.row)]
        with m.Elif(trig_div):
            m.d.sync += [js.eq(1), job.eq(_Job.DIV), jpar.eq(Mux(norm, cs.par, cy.par))]
        with m.Elif(js_last):
            m.d.sync += js.eq(0)
        with m.Elif(js.any()):
            m.d.sync += js.eq(js + 1)

        def step(kind, lo, hi=None):
            """A flag, registered: 1 in the cycles of job ``kind`` with lo ≤ js ≤ hi."""
            flag = Signal(name=f"step_{kind.name.lower()}_{lo}")
            hi = lo if hi is None else hi
            if lo == 1:
                assert hi == 1
                m.d.sync += flag.eq(trig_ln if kind == _Job.LN else trig_div)
            else:
                in_range = (js == lo - 1) if hi == lo else ((js >= lo - 1) & (js <= hi - 1))
                m.d.sync += flag.eq((job == kind) & in_range)
            return flag

        # SOFTMAX: r = divide(2³², σ) (σ ≥ 255: the row maximum alone gives w = 255); RECIP:
        # r = divide(2³², clip(den, 2^8, 2^31 − 1)).
        m.submodules.div = div = SerialDivider()
        m.d.comb += [div.start.eq(step(_Job.DIV, 1)), div.n.eq(1 << 32), div.d.eq(sig_fin)]
        qq = Signal(33)
        kk = Signal(5)
        tt = Signal(34)
        mm = Signal(16)
        with m.If(step(_Job.DIV, q_step)):
            with m.If(norm):
                # NORM: r ≤ 2^17 goes to the output pass.
                with m.If(jpar):
                    m.d.sync += rr[1].eq(div.q[:18])
                with m.Else():
                    m.d.sync += rr[0].eq(div.q[:18])
            with m.Else():
                # mantissa15(r, 24): k = max(0, bit_length(r) − 15).
                k_val = Const(0, 5)
                for b in range(15, 33):
                    k_val = Mux(div.q[b], b - 14, k_val)
                m.d.sync += [qq.eq(div.q), kk.eq(k_val)]
        with m.If(step(_Job.DIV, q_step + 1)):
            m.d.sync += tt.eq((qq << 1) >> kk)              # bit 0: the rounding bit
        with m.If(step(_Job.DIV, q_step + 2)):
            m.d.sync += mm.eq((tt >> 1) + tt[0])            # rshift_round(r, k) ≤ 2^15
        with m.If(step(_Job.DIV, a_last)):
            top = mm == (1 << 15)
            # RECIP: mantissa15(r, 16), or (0, 0) for den ≤ 0 (the row's output is 0).
            zero = rcp & ~den_pos
            m.d.sync += [self.rs_m.eq(Mux(zero, 0, Mux(top, 1 << 14, mm))),
                         self.rs_sh.eq(Mux(zero, 0, Mux(rcp, 16, 24) - kk - top))]

        # LAYERNORM: μ = rshift_round(Σh·r_D, 24); v = Σh² + μ·(k·μ − 2Σh) + E
        # (= Σ(h − μ)² + E exactly); (R, p) = rsqrt(v). Three products on a radix-4 Booth
        # multiplier, most significant digit first: acc ← 4·acc ± |d|·A, d ∈ {−2, …, 2} read
        # from the top three bits of bx (the multiplier, left-aligned, a 0 appended below).
        # |d|·A and the sign are registered a step ahead (one carry chain per cycle), so a
        # product of n digits takes n + 1 steps (the first adds 0).
        A = Signal(signed(40))
        bx = Signal(29)
        bacc = Signal(signed(54))
        mag, neg_r = Signal(signed(41)), Signal()
        mu_j = Signal(signed(28))
        sqe = Signal(43)           # Σh² + E
        v = Signal(48)
        b2, b1, b0 = bx[28], bx[27], bx[26]
        one = b1 ^ b0
        two = (b2 ^ b1) & ~one
        booth = [bacc.eq(Mux(neg_r, (bacc << 2) - mag, (bacc << 2) + mag)), bx.eq(bx << 2),
                 mag.eq(Mux(two, A << 1, Mux(one, A, 0))), neg_r.eq(b2 & ~(b1 & b0))]
        start = [bacc.eq(0), mag.eq(0), neg_r.eq(0)]
        m.submodules.rsqrt = rs = Rsqrt()
        m.d.comb += [rs.i.valid.eq(1), rs.i.payload.eq(v), rs.o.ready.eq(1)]
        s_mul1, s_mu, s_mul2, s_t, s_mul3, s_v = 1, 16, 17, 25, 26, 41
        assert self.LN_STEPS == s_v + 1 + Rsqrt.LATENCY
        LN = _Job.LN
        with m.If(step(LN, s_mul1)):                # Σh · r_D (r_D: 26 bits, 13 digits)
            m.d.sync += [A.eq(hsum_fin), bx.eq(Cat(Const(0, 3), r_d, Const(0, 1)))] + start
        with m.If(step(LN, s_mul1 + 1, s_mu - 1) | step(LN, s_mul2 + 1, s_t - 1) |
                  step(LN, s_mul3, s_v - 1)):
            m.d.sync += booth
        with m.If(step(LN, s_mu)):
            m.d.sync += [mu_j.eq((bacc + (1 << 23)) >> 24), sqe.eq(sq_fin + op.eps)]
        with m.If(step(LN, s_mul2)):                # μ · k (k: 12 bits, 6 digits)
            m.d.sync += [A.eq(mu_j), bx.eq(Cat(Const(0, 17), op.k, Const(0, 1)))] + start
        with m.If(step(LN, s_t)):                   # (k·μ − 2Σh) · μ (μ: 28 bits, 14 digits)
            m.d.sync += [A.eq(bacc - (hsum_fin << 1)), bx.eq(Cat(Const(0, 1), mu_j))] + start
        with m.If(step(LN, s_v)):
            m.d.sync += v.eq(sqe + bacc)
        ln_end = step(LN, self.LN_STEPS)            # the rsqrt of v is out
        with m.If(ln_end):
            for k in range(2):
                with m.If(jpar == k):
                    m.d.sync += [mu[k].eq(mu_j), R[k].eq(rs.o.payload.r),
                                 shR[k].eq(rs.o.payload.p + 7)]
        m.d.comb += [tab_w.addr.eq(jrow), tab_w.en.eq(ln_end & res),
                     tab_w.data.eq(Cat(mu_j, rs.o.payload.r, (rs.o.payload.p + 7)[:5]))]
        return m


def row_desc_layout():
    """A decoded, range-checked row operation handed from the controller to the array:
    ``passes`` = ⌈rows/P⌉; ``b_base``/``b_stride``: RADD's AMEM source (``imm[15:0]`` of the
    instruction is its stride); ``dst`` a ``hw.isa.Dst`` (CMEM or AMEM)."""
    return data.StructLayout({
        "op": unsigned(2), "norm": unsigned(1), "res": unsigned(1), "maxc": unsigned(1),
        "rows": unsigned(16), "passes": unsigned(16), "k": unsigned(11),
        "a_base": unsigned(16), "a_stride": unsigned(16),
        "b_base": unsigned(16), "b_stride": unsigned(16),
        "out_base": unsigned(16), "out_stride": unsigned(16),
        "dst": unsigned(2), "sat": unsigned(2), "p_base": unsigned(16),
        "imm": unsigned(32), "eps": unsigned(40),
    })


class RowSequencer(wiring.Component):
    """Issues the elements of a row operation to every PE in lockstep (one per array).

    Parameters (keyword-only): ``pes`` (P, 1…64), ``lanes`` (L).

    Ports
    -----
    cmd : In(stream.Signature(row_desc_layout()))
        A row operation (range-checked by the controller); accepted when not ``busy``.
    busy : Out(1)
        From the cycle after accepting an operation until the cycle after its last result and
        RS entry are written (a register): the PEs' ``row`` input.
    rop : Out(row_op_layout())
        The operation, constant while ``busy`` (every PE's ``rop``).
    rc_data, rc_q1, rc_s2, rc_y2 : Out(row_ctl_layout())
        The element in stages ``RowDatapath.R_DATA``, ``R_Q1``, ``R_S2``, ``R_Y2`` (every PE).
    c_raddr : Out(ROW_ADDR_BITS)
        CMEM element to read in this cycle (every PE; row ``c_raddr div (L/4)``, slot
        ``mod``): R0 for SOFTMAX and LAYERNORM, R16 for RADD.
    a_raddr : Out(ROW_ADDR_BITS)
        AMEM element to read (RADD's x, R10): the PEs' ``a_addr``.
    pm_tile, pm_lane : Out
        PBUF column of the m/sh the PEs need in R_PARAM: read in R_PARAM − ``PBUF_M_LATENCY``.
    pb_tile, pb_lane : Out
        PBUF column of the bias (LAYERNORM's B) the PEs need in R_C: read in
        R_C − ``PBUF_B_LATENCY``.
    w_valid, w_addr, w_rmask : Out
        A result in R_Y: element ``w_addr`` of the destination (``rop``'s ``dst``: ``w_dst``)
        in every PE p with ``w_rmask[p]`` (rows ≥ ``rows`` are never written).
    w_dst : Out(2)
    rs_we : Out(P), rs_waddr : Out(8)
        RS write of the PEs' ``rs_m``/``rs_sh`` (SOFTMAX attention mode, RECIP).
    """
    #: Cycles from a PBUF read address to the value at a PE's ``m``/``sh`` (the array's
    #: PBUF path: bank registers, select, one more register) and at ``bias``.
    PBUF_M_LATENCY = 4
    PBUF_B_LATENCY = 3

    def __init__(self, *, pes, lanes):
        self._pes = check_int("pes", pes, lo=1, hi=64)
        self._lanes = check_choice("lanes", lanes, LANE_CHOICES)
        AB = ROW_ADDR_BITS
        super().__init__({
            "cmd": In(stream.Signature(row_desc_layout())),
            "busy": Out(1),
            "rop": Out(row_op_layout()),
            "rc_data": Out(row_ctl_layout()), "rc_q1": Out(row_ctl_layout()),
            "rc_s2": Out(row_ctl_layout()), "rc_y2": Out(row_ctl_layout()),
            "c_raddr": Out(AB), "a_raddr": Out(AB),
            "pm_tile": Out(AB), "pm_lane": Out(_log2(lanes)),
            "pb_tile": Out(AB), "pb_lane": Out(_log2(lanes)),
            "w_valid": Out(1), "w_addr": Out(AB), "w_rmask": Out(pes), "w_dst": Out(2),
            "rs_we": Out(pes), "rs_waddr": Out(8), "pm_sgn": Out(1),
        })

    pes = property(lambda self: self._pes)
    lanes = property(lambda self: self._lanes)

    def elaborate(self, platform):
        m = Module()
        P, L = self._pes, self._lanes
        AB = ROW_ADDR_BITS
        RD = RowDatapath
        RY = RD.R_Y

        desc = Signal(row_desc_layout())
        m.d.comb += [
            self.rop.op.eq(desc.op), self.rop.norm.eq(desc.norm), self.rop.res.eq(desc.res),
            self.rop.imm.eq(desc.imm),
            self.rop.eps.eq(desc.eps), self.rop.k.eq(desc.k), self.rop.sat.eq(desc.sat),
        ]
        # The issue decision enables every sequencer register: it uses local registered flags
        # only (the descriptor fans out to every PE). Per operation: which pass starts a job,
        # whether output passes wait for it; per pass: its kind's flags and row parity.
        f_ln, f_radd, f_attn, f_norm = Signal(), Signal(), Signal(), Signal()
        f_rcp = Signal()              # RECIP: one element per row, writes RS only
        f_res = Signal()              # LAYERNORM RES: every statistics pass, then every output
        f_mx = Signal()               # SOFTMAX MAXC: pass A is the one element k (the maximum)
        p_res = Signal(AB)            # RES: PBUF tile of the residual's m / sh (after G, B)
        gap = Signal(range(RD.RES_DELAY + 1))   # RES: cycles before the first output element
        jobs_fin = Signal(5)          # RES: jobs finished (rows whose constants are in the table)
        slack = Signal(range(RD.RES_DELAY + 1))   # the job stages after its last Booth step
        f_wait = Signal()             # LAYERNORM, NORM: an output pass waits for its row's job
        done_val = Signal(7)          # the job latency of the operation
        p_out, p_job, p_wait, p_par = Signal(), Signal(), Signal(), Signal()
        p_row = Signal(4)

        active = Signal()
        kind = Signal(2)
        j_left = Signal(11)          # elements of the pass after the next one
        is_first, is_last, k_is_1 = Signal(), Signal(), Signal()
        st_left, out_left = Signal(16), Signal(16)   # rows whose statistics / output remain
        st_ahead = Signal(2)         # rows with statistics done and output not yet started
        st_one, st_any, out_one = Signal(), Signal(), Signal()   # st_left = 1, ≠ 0; out_left = 1
        st_row, out_row = Signal(16), Signal(16)
        src, st_base, ob_base = Signal(AB), Signal(AB), Signal(AB)
        out_rows_left = Signal(signed(17))           # rows − out_row·P
        ready = Signal(2)            # the job of the row of that parity has finished
        job_left = Signal(7)
        job_idle = Signal(init=1)
        job_par = Signal()
        job_row = Signal(8)
        job_rmask = Signal(P)
        tail = Signal(range(RY + 2))

        def set_pass(k, row_v, ln, attn, norm, wait):
            """The next pass: kind ``k`` (a constant) of local row ``row_v``."""
            job_of = {Pass.A: ln, Pass.B: norm, Pass.OUT: attn}[k]
            return [kind.eq(k), p_par.eq(row_v[0]), p_row.eq(row_v[:4]),
                    p_out.eq(k == Pass.OUT), p_job.eq(job_of),
                    p_wait.eq(wait if k == Pass.OUT else 0)]

        # RES: an output pass starts once its row's job has finished (jobs finish in row order,
        # so jobs_fin ≥ out_row) and, the first, RES_DELAY + 1 cycles after the last statistics
        # element (S1 and the CMEM read port are then free of the statistics passes).
        hold = ((is_first & p_wait & ~Mux(p_par, ready[1], ready[0])) |
                (is_last & p_job & ~job_idle) |
                (is_first & p_out & f_res & (gap.any() | (jobs_fin == out_row[:5]))))
        issue = Signal()
        m.d.comb += issue.eq(active & ~hold)

        # Element pipeline R0 … R_Y: ctl[0] is the element's register.
        RQR = RD.R_Q1 + RD.RES_DELAY     # RES: h² leaves S1 here
        NC = max(RY, RQR) + 1
        ctl = [Signal(row_ctl_layout(), name=f"ctl{k}") for k in range(NC)]
        e0_addr = Signal(AB)
        m.d.sync += [ctl[0].valid.eq(issue), ctl[0].first.eq(is_first), ctl[0].last.eq(is_last),
                     ctl[0].kind.eq(kind), ctl[0].par.eq(p_par), ctl[0].row.eq(p_row),
                     e0_addr.eq(src)]
        m.d.sync += [ctl[k + 1].eq(ctl[k]) for k in range(NC - 1)]
        # Each exported stage's `acc`: the element updates that stage's statistic (decoded here
        # once, not in every PE).
        # RES: Σh in R_Y2 and Σh² in RQR (the residual sum comes out of S2).
        for stage, acc in ((RD.R_DATA, lambda c: (_is(c.kind, Pass.A) & ~f_res) | f_rcp),
                           (RD.R_Q1, lambda c: _is(c.kind, Pass.A) & f_ln & ~f_res),
                           (RQR, lambda c: _is(c.kind, Pass.A) & f_res),
                           (RD.R_S2, lambda c: c.kind == Pass.B),
                           (RD.R_Y2, lambda c: ((c.kind == Pass.OUT) & f_attn) |
                                               (_is(c.kind, Pass.A) & f_res))):
            c = ctl[stage - 1]
            m.d.sync += ctl[stage].acc.eq(c.valid & acc(c))
        m.d.comb += [self.rc_data.eq(ctl[RD.R_DATA]),
                     self.rc_q1.eq(Mux(f_res, ctl[RQR], ctl[RD.R_Q1])),
                     self.rc_s2.eq(ctl[RD.R_S2]), self.rc_y2.eq(ctl[RD.R_Y2])]

        accept = self.cmd.valid & self.cmd.ready
        pl = self.cmd.payload
        with m.If(accept):
            d = pl
            d_ln, d_radd = d.op == RowOp.LAYERNORM, d.op == RowOp.RADD
            d_rcp = d.op == RowOp.RECIP
            d_sm = _is(d.op, RowOp.SOFTMAX)
            d_norm, d_attn = d_sm & d.norm, d_sm & ~d.norm
            d_out_only = d_radd | d_rcp      # no statistics pass
            d_res = d_ln & d.res
            m.d.sync += [
                desc.eq(d), active.eq(1),
                f_ln.eq(d_ln), f_radd.eq(d_radd), f_attn.eq(d_attn), f_norm.eq(d_norm),
                f_rcp.eq(d_rcp), f_res.eq(d_res), f_mx.eq(d_sm & d.maxc),
                p_res.eq(d.p_base + ((d.k + (L - 1)) >> _log2(L))),
                gap.eq(0), jobs_fin.eq(0), slack.eq(Mux(d_res, RD.RES_DELAY, 0)),
                f_wait.eq((d_ln & ~d_res) | d_norm),
                done_val.eq(Mux(d_res, RowDatapath.RES_DONE,
                                Mux(d_ln, RowDatapath.LN_DONE,
                                Mux(d_norm, RowDatapath.NORM_DONE,
                                    Mux(d_rcp, RowDatapath.RECIP_DONE,
                                        RowDatapath.ATTN_DONE))))),
                j_left.eq(d.k - 1), is_first.eq(1), k_is_1.eq(d.k == 1),
                is_last.eq((d.k == 1) | (d_sm & d.maxc)),
                st_left.eq(Mux(d_out_only, 0, d.passes)), out_left.eq(d.passes), st_ahead.eq(0),
                st_one.eq(~d_out_only & (d.passes == 1)), st_any.eq(~d_out_only),
                out_one.eq(d.passes == 1),
                st_row.eq(0), out_row.eq(0),
                src.eq(d.a_base + Mux(d_sm & d.maxc, d.k, 0)), st_base.eq(d.a_base),
                ob_base.eq(d.a_base),
                out_rows_left.eq(d.rows),
            ]
            zero = Const(0, 16)
            with m.If(d_out_only):
                m.d.sync += set_pass(Pass.OUT, zero, d_ln, d_attn | d_rcp, d_norm,
                                     (d_ln & ~d_res) | d_norm)
            with m.Else():
                m.d.sync += set_pass(Pass.A, zero, d_ln, d_attn, d_norm, (d_ln & ~d_res) | d_norm)

        flags = (f_ln, f_attn | f_rcp, f_norm, f_wait)
        with m.If(issue):
            m.d.sync += [src.eq(src + 1), j_left.eq(j_left - 1), is_first.eq(0),
                         is_last.eq(j_left == 1), tail.eq(RY + 1)]
            with m.If(is_last):
                m.d.sync += [j_left.eq(desc.k - 1), is_first.eq(1), is_last.eq(k_is_1)]
                with m.If(p_job):
                    m.d.sync += [job_par.eq(p_par), job_row.eq(out_row[:8]),
                                 job_rmask.eq(Cat(*(out_rows_left > p for p in range(P))))]
                with m.If(f_norm & _is(kind, Pass.A)):
                    # NORM: the second statistics pass of the same row.
                    m.d.sync += [src.eq(st_base)] + set_pass(Pass.B, st_row, *flags)
                with m.Elif(~p_out):
                    # The row's statistics are done: the next row's, or an output pass.
                    m.d.sync += [st_left.eq(st_left - 1), st_ahead.eq(st_ahead + 1),
                                 st_one.eq(st_left == 2), st_any.eq(~st_one),
                                 st_row.eq(st_row + 1), st_base.eq(st_base + desc.a_stride)]
                    with m.If(~st_one & (is_zero(st_ahead) | f_res)):
                        m.d.sync += ([src.eq(st_base + desc.a_stride + Mux(f_mx, desc.k, 0)),
                                      is_last.eq(k_is_1 | f_mx)] +
                                     set_pass(Pass.A, st_row + 1, *flags))
                    with m.Else():
                        m.d.sync += [src.eq(ob_base)] + set_pass(Pass.OUT, out_row, *flags)
                        with m.If(f_res):
                            m.d.sync += gap.eq(RD.RES_DELAY)
                with m.Else():
                    m.d.sync += [out_left.eq(out_left - 1), st_ahead.eq(st_ahead - 1),
                                 out_one.eq(out_left == 2),
                                 out_row.eq(out_row + 1), ob_base.eq(ob_base + desc.a_stride),
                                 out_rows_left.eq(out_rows_left - P)]
                    with m.If(out_one):
                        m.d.sync += active.eq(0)
                    with m.Elif(st_any):
                        m.d.sync += ([src.eq(st_base + Mux(f_mx, desc.k, 0)),
                                      is_last.eq(k_is_1 | f_mx)] +
                                     set_pass(Pass.A, st_row, *flags))
                    with m.Else():
                        m.d.sync += ([src.eq(ob_base + desc.a_stride)] +
                                     set_pass(Pass.OUT, out_row + 1, *flags))
        with m.Elif(tail.any()):
            m.d.sync += tail.eq(tail - 1)
        with m.If(gap.any() & ~(issue & is_last)):
            m.d.sync += gap.eq(gap - 1)

        # Jobs: results valid `done_val` cycles after the R0 of the pass's last element.
        start_job = issue & is_last & p_job
        with m.If(start_job):
            m.d.sync += job_left.eq(done_val)
        with m.Elif(job_left.any()):
            m.d.sync += job_left.eq(job_left - 1)
        m.d.sync += job_idle.eq(~start_job & (job_left <= 1 + slack))
        finishing = job_left == 1
        # RES: the next job may start before this one's results are in the table (the hold
        # releases RES_DELAY cycles early, job_left restarts), so its end travels down a delay
        # line from there.
        fin_line = Signal(RD.RES_DELAY)
        m.d.sync += fin_line.eq(Cat(f_res & (job_left == 1 + RD.RES_DELAY), fin_line[:-1]))
        with m.If(fin_line[-1]):
            m.d.sync += jobs_fin.eq(jobs_fin + 1)
        rs_pending = Signal()
        m.d.sync += [self.rs_we.eq(Mux(finishing & (f_attn | f_rcp), job_rmask, 0)),
                     self.rs_waddr.eq(job_row), rs_pending.eq(finishing)]
        # ready[par]: cleared when the output pass of a row of that parity starts, set when
        # the job of one finishes (never the same row in one cycle: see the class docstring).
        ready_clr = Mux(issue & is_first & p_out, Mux(p_par, 2, 1), 0)
        ready_set = Mux(finishing & f_wait, Mux(job_par, 2, 1), 0)
        with m.If(accept):
            m.d.sync += ready.eq(0)
        with m.Else():
            m.d.sync += ready.eq((ready & ~ready_clr) | ready_set)

        # busy is a register (it selects the row unit's inputs in every PE): high from the
        # cycle after acceptance until the cycle after the last write.
        m.d.sync += self.busy.eq(accept | active | tail.any() | job_left.any() | rs_pending)
        m.d.comb += self.cmd.ready.eq(~self.busy)

        # Lagging counters: each follows the output elements at its own stage, so no address
        # travels down the pipeline. `at(s)` is the element entering stage s.
        def out_at(s):
            c = ctl[s - 1]
            return c.valid & (c.kind == Pass.OUT), c.first

        def res_at(s):
            """RES statistics elements: residual adds (RADD's reads, m / sh and CMEM write)."""
            c = ctl[s - 1]
            return c.valid & _is(c.kind, Pass.A) & f_res, c.first

        def radd_at(s):
            (go_o, first), (go_r, _) = out_at(s), res_at(s)
            return Mux(f_res, go_r, go_o), first

        def column_counter(s, tile, lane, res=False):
            go, first = out_at(s)
            if res:
                go_r, _ = res_at(s)
                go = go | go_r
                base = Mux(go_r, p_res, desc.p_base)
            else:
                base = desc.p_base
            with m.If(go):
                with m.If(first):
                    m.d.sync += [tile.eq(base), lane.eq(0)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
                    with m.If(lane == L - 1):
                        m.d.sync += tile.eq(tile + 1)

        column_counter(RD.R_PARAM - self.PBUF_M_LATENCY, self.pm_tile, self.pm_lane, res=True)
        # LAYERNORM's G (output elements) is signed, RADD's m unsigned: the PEs take m in
        # R_PARAM.
        cp = ctl[RD.R_PARAM]
        m.d.comb += self.pm_sgn.eq(f_ln & (cp.kind == Pass.OUT))
        column_counter(RD.R_C - self.PBUF_B_LATENCY, self.pb_tile, self.pb_lane)

        def row_counter(s, addr, base, stride, init, at=out_at):
            go, first = at(s)
            with m.If(accept):
                m.d.sync += base.eq(init)
            with m.Elif(go):
                with m.If(first):
                    m.d.sync += [addr.eq(base), base.eq(base + stride)]
                with m.Else():
                    m.d.sync += addr.eq(addr + 1)

        # RADD: x from AMEM (needed in R_S2), h from CMEM (needed in R_A).
        # RES: the same for its statistics elements, which also write h back in place.
        ar, ar_base = Signal(AB), Signal(AB)
        row_counter(RD.R_S2 - RD.R_DATA, ar, ar_base, desc.b_stride, pl.b_base, at=radd_at)
        cr, cr_base = Signal(AB), Signal(AB)
        CRS = RD.R_A - RD.R_DATA
        row_counter(CRS, cr, cr_base, desc.a_stride, pl.a_base, at=radd_at)
        cr_res = Signal()            # a RES statistics element reads its h now
        m.d.sync += cr_res.eq(res_at(CRS)[0])
        m.d.comb += [self.a_raddr.eq(ar), self.c_raddr.eq(Mux(f_radd | cr_res, cr, e0_addr))]

        # Results (R_Y): address and the PEs whose row exists (RES statistics elements: h in
        # place, into CMEM).
        def writes(at, base_init, stride):
            addr, base = Signal(AB), Signal(AB)
            rows_left = Signal(signed(17))
            rmask = Signal(P)
            row_counter(RY, addr, base, stride, base_init, at=at)
            go, first = at(RY)
            with m.If(accept):
                m.d.sync += rows_left.eq(pl.rows)
            with m.Elif(go & first):
                m.d.sync += [rmask.eq(Cat(*(rows_left > p for p in range(P)))),
                             rows_left.eq(rows_left - P)]
            return go, addr, rmask

        go_o, w_addr_o, rmask_o = writes(out_at, pl.out_base, desc.out_stride)
        go_r, w_addr_r, rmask_r = writes(res_at, pl.a_base, desc.a_stride)
        w_res = Signal()
        m.d.sync += [self.w_valid.eq((go_o & ~f_rcp) | go_r),    # RECIP writes RS only
                     w_res.eq(go_r)]
        m.d.comb += [self.w_addr.eq(Mux(w_res, w_addr_r, w_addr_o)),
                     self.w_rmask.eq(Mux(w_res, rmask_r, rmask_o)),
                     self.w_dst.eq(Mux(w_res, Dst.CMEM, desc.dst))]
        return m
