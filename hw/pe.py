"""Processing element of the A-row-parallel array: MAC lanes, drain with its epilogues
(row scale, requantization, activation table), and the arithmetic it shares with its row unit.

Golden models: :func:`sim.golden.matmul` (docs/numerics.md §3), :func:`sim.golden.requant` (§4),
:func:`sim.golden.activation` (§12), the row scale of :func:`sim.golden.attention` (§9). The
instruction-level behaviour is in docs/isa.md and docs/isa_transformer.md, the dataflow in
docs/architecture.md; the row operations' own logic is in :mod:`hw.rowunit`.
"""
import enum

from amaranth.hdl import Array, Cat, MemoryData, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import Sat
from .multiplier import FabricMultiplier, Multiplier
from .params import check_choice, check_int

__all__ = ["MulRound", "Requant", "PE", "SAT_BOUNDS", "LANE_CHOICES", "InitMode", "BankedRam",
           "BANK_ROWS", "bank_select", "pick", "is_zero", "select", "RowOp", "Pass",
           "row_ctl_layout", "row_op_layout", "RS_ENTRIES", "ACT_ENTRIES"]

LANE_CHOICES = (4, 8, 16, 32)

#: ``hw.isa.Sat`` code → (lo, hi) of the requantized result.
SAT_BOUNDS = {
    Sat.INT8: (-128, 127),
    Sat.INT9: (-256, 255),
    Sat.INT16: (-32768, 32767),
    Sat.UINT8: (0, 255),
}


def _log2(n):
    return n.bit_length() - 1


def is_zero(v):
    """``v == 0`` written so that Verilator's lint does not see ``!v`` on a vector."""
    return ~v.any()


def pick(values, index):
    """``values[index]``: an ``Array`` padded (with its last value) to a power-of-two length,
    so that the emitted case statement is complete (Verilator lint); one value needs none."""
    values = list(values)
    if len(values) == 1:
        return values[0]
    n = 1 << (len(values) - 1).bit_length()
    return Array(values + [values[-1]] * (n - len(values)))[index]


def select(v, index, width):
    """Element ``index`` of ``width`` bits of ``v``: a multiplexer over the elements (lints
    clean, unlike ``word_select`` with a variable index, and never infers a multiplication
    for the bit offset)."""
    n = len(v) // width
    return pick([v[k * width:(k + 1) * width] for k in range(n)], index)


#: Rows of one block-RAM bank: every ECP5 DP16KD configuration is at least 512 deep, so a bank
#: this deep never needs a read multiplexer between the block RAM and its output register.
BANK_ROWS = 512


class BankedRam(wiring.Component):
    """A RAM split into banks of at most :data:`BANK_ROWS` rows, each read into its own register.

    A memory deeper than one block RAM needs a multiplexer after the block RAMs, which in the
    same cycle as the RAM's ≈ 6 ns clock-to-output keeps a design below 150 MHz on ECP5
    (docs/units.md, *block-RAM floor*). Here every bank's output goes straight into a register;
    the consumer picks the bank (``Array(rows)[bank]``) in the next stage, together with
    whatever element selection it does anyway.

    Parameters (keyword-only): ``width`` (bits per row), ``depth`` (rows, a power of two),
    ``granularity`` (write-enable granularity in bits, dividing ``width``), ``transparent``
    (a read of the row being written returns the new data; yosys builds that with a bypass
    multiplexer behind the block RAM, ≈ 120–130 MHz on ECP5).

    Without ``transparent`` the read is an asynchronous port followed by a register, which
    yosys folds into the block RAM, and the memory carries ``no_rw_check``: no collision logic
    at all (a synchronous read port would make yosys emulate Amaranth's read-old-data rule with
    that multiplexer). In hardware, the elements (``granularity`` lanes) being written in the
    same cycle as a read of their row read back undefined; the other elements of the row read
    correctly (the block RAM's byte enables). The Amaranth simulator returns the old row.
    Callers never read an element in the cycle it is written (docs/architecture.md,
    *Ordering*).

    The storage of bank ``b`` is ``data[b]`` (an ``amaranth.hdl.MemoryData`` of ``depth / banks``
    rows), which a testbench can read and write directly (``ctx.get(ram.data[b][row])``). A
    parent that wants to expose it before elaboration creates it with :meth:`storage` and
    passes it as ``storage``.

    Ports
    -----
    w_addr, w_data, w_en : In
        Write port; ``w_en`` has one bit per ``granularity`` bits.
    r_addr : In
        Read address, every cycle.
    rows : Out(ArrayLayout(width, banks))
        Each bank's row at ``r_addr mod BANK_ROWS``, registered: two cycles after ``r_addr``.
    bank : Out
        ``r_addr div BANK_ROWS`` of the same read, aligned with ``rows``.
    """

    @staticmethod
    def storage(*, width, depth):
        """The banks' storage for a ``width`` × ``depth`` BankedRam: a list of MemoryData."""
        banks = max(1, depth // BANK_ROWS)
        return [MemoryData(shape=unsigned(width), depth=depth // banks, init=[])
                for _ in range(banks)]

    def __init__(self, *, width, depth, granularity=None, transparent=False, storage=None):
        self._width = check_int("width", width, lo=1)
        self._depth = check_int("depth", depth, lo=1)
        if depth & (depth - 1):
            raise ValueError(f"depth must be a power of two, not {depth}")
        self._gran = width if granularity is None else granularity
        if width % self._gran:
            raise ValueError(f"granularity {self._gran} does not divide width {width}")
        self._transparent = transparent
        self.banks = max(1, depth // BANK_ROWS)
        self.data = self.storage(width=width, depth=depth) if storage is None else list(storage)
        if (len(self.data) != self.banks or
                any(d.depth != depth // self.banks or d.shape != unsigned(width)
                    for d in self.data)):
            raise ValueError(f"storage must be BankedRam.storage(width={width}, depth={depth})")
        abits = max(1, _log2(depth))
        super().__init__({
            "w_addr": In(abits), "w_data": In(width), "w_en": In(width // self._gran),
            "r_addr": In(abits),
            "rows": Out(data.ArrayLayout(unsigned(width), self.banks)),
            "bank": Out(range(self.banks)),
        })

    def elaborate(self, platform):
        m = Module()
        nb = self.banks
        rows_per = self._depth // nb
        rbits = _log2(rows_per)
        bank1 = Signal.like(self.bank)
        for b in range(nb):
            # A read port without a collision rule: an asynchronous read whose register yosys
            # folds into the DP16KD, with no_rw_check (see the class docstring).
            mem = Memory(self.data[b], attrs={} if self._transparent else {"no_rw_check": 1})
            m.submodules[f"bank{b}"] = mem
            wr = mem.write_port(granularity=self._gran if self._gran != self._width else None)
            if self._transparent:
                rd = mem.read_port(transparent_for=(wr,))
                q = rd.data
            else:
                rd = mem.read_port(domain="comb")
                q = Signal(self._width, name=f"q{b}")
                m.d.sync += q.eq(rd.data)
            hi = self.w_addr[rbits:]
            hit = 1 if nb == 1 else (hi == b if b else is_zero(hi))
            m.d.comb += [
                wr.addr.eq(self.w_addr[:rbits] if rbits else 0), wr.data.eq(self.w_data),
                wr.en.eq(Mux(hit, self.w_en, 0)),
                rd.addr.eq(self.r_addr[:rbits] if rbits else 0),
            ]
            if self._transparent:
                m.d.comb += rd.en.eq(1)
            m.d.sync += self.rows[b].eq(q)
        if nb > 1:
            m.d.sync += [bank1.eq(self.r_addr[rbits:]), self.bank.eq(bank1)]
        return m


def bank_select(ram):
    """The row of a :class:`BankedRam` read: ``rows[bank]`` (combinational)."""
    if ram.banks == 1:
        return ram.rows[0]
    return Array(ram.rows[b] for b in range(ram.banks))[ram.bank]



class RowOp(enum.IntEnum):
    """Row operation run by the row unit (``row_op_layout().op``)."""
    SOFTMAX = 0
    LAYERNORM = 1
    RADD = 2
    RECIP = 3    # linear attention's normalizer: RS entries from int32 denominators


class Pass(enum.IntEnum):
    """Kind of a row pass (``row_ctl_layout().kind``), see :mod:`hw.rowunit`."""
    A = 0        # first statistics pass: SOFTMAX max, LAYERNORM sum and sum of squares
    B = 1        # second statistics pass: SOFTMAX (NORM) sum of e
    OUT = 2      # output pass


def row_ctl_layout():
    """One row-unit element as it passes a pipeline stage (the array broadcasts it to every PE).
    ``par``: parity of the element's local row (selects the double-buffered row constants);
    ``acc``: the element updates the statistic of this stage (decoded by the sequencer: see
    :class:`hw.rowunit.RowSequencer`); ``row``: the low bits of its local row (LAYERNORM RES
    keeps its row constants in a table)."""
    return data.StructLayout({"valid": unsigned(1), "first": unsigned(1), "last": unsigned(1),
                              "kind": unsigned(2), "par": unsigned(1), "acc": unsigned(1),
                              "row": unsigned(4)})


def row_op_layout():
    """The running row operation, constant while it runs: ``imm`` (SOFTMAX: c_e = imm[15:0],
    sh_e = imm[21:16]; LAYERNORM: r_D = imm[24:0]), ``eps`` (LAYERNORM: E, 40 bits), ``k`` (row
    length 1…1024), ``sat`` (``hw.isa.Sat`` of LAYERNORM and RADD results), ``res``
    (LAYERNORM with the fused residual add, flag RES)."""
    return data.StructLayout({"op": unsigned(2), "norm": unsigned(1), "res": unsigned(1),
                              "imm": unsigned(32),
                              "eps": unsigned(40), "k": unsigned(11), "sat": unsigned(2)})


#: Row-scale entries per PE (local rows 0…255), each (m uint15, sh 6 bits).
RS_ENTRIES = 256
#: Activation-table entries per PE: two tables of 256 int9 (``act_sel`` picks one).
ACT_ENTRIES = 512


class MulRound(wiring.Component):
    """``q = rshift_round(x·m + c, sh)``, exact, one result per cycle, fixed latency.

    A fixed-latency pipeline without flow control: the inputs of one cycle come out
    :attr:`latency` cycles later on ``q``. With ``dsp``, ``x·m`` is split over two multipliers
    (``x = xh·2^16 + xl``: signed 17 × signed 17 and unsigned 16 × signed 17, one 18×18 DSP
    each with its input and output registers, ``hw.multiplier.Multiplier``); without, it is
    one :class:`hw.multiplier.FabricMultiplier` (LUT logic, three stages like the DSPs and the
    sum of their halves), so that a PE fits the LFE5U-85F's 156 DSPs at P = 8, L = 16.

    Parameters (keyword-only)
    -------------------------
    addend : bool
        With the ``c`` input (one more stage: ``c`` is added to the low partial product before
        the halves are summed, so no stage has two carry chains in series). Needs ``dsp``.
    dsp : bool
        The product in two DSPs (default) or in fabric logic; same latency and results.

    Ports
    -----
    x : In(signed(33))
    m : In(signed(17))
        Both signed; a uint16 or uint15 multiplier is a non-negative value of this shape.
    sh : In(unsigned(8))
        Rounding right shift; shifts past 49 give the same result as 50 (0 or, rounded, 0).
    c : In(signed(32)), only with ``addend``
        Given **two cycles after** ``x``, ``m``, ``sh`` (when the products leave the DSPs).
    q : Out(signed(50))
        The result (|x·m + c| < 2^49).

    Stages: 1–2 the DSPs; [3 ``lo + c``]; sum of the halves (fabric: 1–3 the
    ``FabricMultiplier``); shift right by ``sh − 1`` (clamped at 49) keeping the rounding bit;
    round half up.
    """
    Q_BITS = 50

    @staticmethod
    def latency_of(addend):
        return 6 if addend else 5

    def __init__(self, *, addend=False, dsp=True):
        if not isinstance(addend, bool):
            raise TypeError(f"addend must be a bool, not {addend!r}")
        if not isinstance(dsp, bool):
            raise TypeError(f"dsp must be a bool, not {dsp!r}")
        if addend and not dsp:
            raise ValueError("addend=True needs dsp=True (the fabric product has no addend stage)")
        self._addend = addend
        self._dsp = dsp
        sig = {"x": In(signed(33)), "m": In(signed(17)), "sh": In(unsigned(8)),
               "q": Out(signed(self.Q_BITS))}
        if addend:
            sig["c"] = In(signed(32))
        super().__init__(sig)

    addend = property(lambda self: self._addend)
    dsp = property(lambda self: self._dsp)
    latency = property(lambda self: self.latency_of(self._addend))

    def elaborate(self, platform):
        m = Module()
        lat = self.latency
        # sh is registered (stage 1), then decoded (stage 2): sh − 1 clamped (a 50-bit product
        # shifted by 49 is already 0 or −1) and sh ≠ 0, delayed to the shift stage (lat − 2,
        # when the product is complete) and the rounding stage (lat − 1).
        sh1 = Signal(8)
        shm = {k: Signal(6, name=f"shm{k}") for k in range(2, lat - 1)}
        shnz = {k: Signal(name=f"shnz{k}") for k in range(2, lat)}
        m.d.sync += [
            sh1.eq(self.sh),
            shnz[2].eq(sh1.any()),
            shm[2].eq(Mux(is_zero(sh1), 0, Mux(sh1 > 50, 49, sh1 - 1))),
        ]
        m.d.sync += [shm[k + 1].eq(shm[k]) for k in range(2, lat - 2)]
        m.d.sync += [shnz[k + 1].eq(shnz[k]) for k in range(2, lat - 1)]
        p = Signal(signed(self.Q_BITS))      # x·m (+ c), stage lat − 2
        if not self._dsp:
            m.submodules.mul = fm = FabricMultiplier(a_shape=signed(33), b_shape=signed(17))
            m.d.comb += [fm.a.eq(self.x), fm.b.eq(self.m), p.eq(fm.p)]
        else:
            m.submodules.mul_hi = mh = Multiplier(a_shape=signed(17), b_shape=signed(17),
                                                  latency=2)
            m.submodules.mul_lo = ml = Multiplier(a_shape=unsigned(16), b_shape=signed(17),
                                                  latency=2)
            m.d.comb += [mh.ce.eq(1), ml.ce.eq(1), mh.a.eq(self.x[16:].as_signed()),
                         mh.b.eq(self.m), ml.a.eq(self.x[:16]), ml.b.eq(self.m)]
            if self._addend:
                lo3 = Signal(signed(35))
                hi3 = Signal(signed(34))
                m.d.sync += [lo3.eq(ml.p + self.c), hi3.eq(mh.p), p.eq((hi3 << 16) + lo3)]
            else:
                m.d.sync += p.eq((mh.p << 16) + ml.p)
        t = Signal(signed(self.Q_BITS))
        m.d.sync += [
            # Shift right by sh − 1: bit 0 is then the rounding bit.
            t.eq(p >> shm[lat - 2]),
            # Round half up: floor(p / 2^sh) + bit (sh − 1).
            self.q.eq(Mux(shnz[lat - 1], (t >> 1) + t[0], t)),
        ]
        return m


class Requant(wiring.Component):
    """``y = clip(rshift_round(x·m + c, sh) + a, lo, hi)`` (and ``max(0, y)`` with ``relu``).

    With ``c = a = 0`` this is :func:`sim.golden.requant`; ``c`` serves LAYERNORM's
    ``n·G + B``, ``a`` RADD's ``h + rshift_round(x·m, sh)`` (:func:`sim.golden.add`).
    A fixed-latency pipeline without flow control (it never stalls; the caller tracks which
    cycles carry data): the inputs of one cycle come out :attr:`LATENCY` cycles later on ``y``.

    Ports
    -----
    x : In(signed(33))
        The accumulator (int32 in a matmul; anything of 33 bits).
    m : In(signed(17))
        Multiplier (numerics: uint15; any int17 is multiplied exactly).
    sh : In(unsigned(8))
        Rounding right shift (numerics: 0…47; larger shifts give 0, as the formula does).
    c : In(signed(32))
        Added to ``x·m`` before the shift; given two cycles after ``x`` (stage 2).
    a : In(signed(32))
        Added after rounding; given six cycles after ``x`` (stage 6).
    sat : In(unsigned(2))
        ``hw.isa.Sat`` range: INT8, INT9, INT16, UINT8.
    relu : In(1)
        Clamp negative results to 0 after saturation.
    y : Out(signed(16))
        The result, :attr:`LATENCY` cycles after ``x``.

    Stages 1–6 are a :class:`MulRound` with addend (``q = rshift_round(x·m + c, sh)``);
    stage 7 adds ``a``; stage 8 compares with the bounds; stage 9 saturates.
    """
    LATENCY = MulRound.latency_of(True) + 3
    #: Stage in which ``c`` is given.
    C_STAGE = 2
    #: Stage in which ``a`` is given.
    A_STAGE = MulRound.latency_of(True)

    def __init__(self):
        super().__init__({
            "x": In(signed(33)),
            "m": In(signed(17)),
            "sh": In(unsigned(8)),
            "c": In(signed(32)),
            "a": In(signed(32)),
            "sat": In(unsigned(2)),
            "relu": In(1),
            "y": Out(signed(16)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mr = mr = MulRound(addend=True)
        m.d.comb += [mr.x.eq(self.x), mr.m.eq(self.m), mr.sh.eq(self.sh), mr.c.eq(self.c)]
        n = self.A_STAGE
        # sat and relu travel with the value (3 bits) and become bounds in stage 7.
        sat = [Signal(2, name=f"sat{k}") for k in range(n + 1)]
        relu = [Signal(name=f"relu{k}") for k in range(n + 1)]
        m.d.comb += [sat[0].eq(self.sat), relu[0].eq(self.relu)]
        m.d.sync += [sat[k + 1].eq(sat[k]) for k in range(n)]
        m.d.sync += [relu[k + 1].eq(relu[k]) for k in range(n)]
        lo7, hi7, lo8, hi8 = (Signal(signed(17), name=nm) for nm in ("lo7", "hi7", "lo8", "hi8"))
        s7 = Signal(signed(MulRound.Q_BITS + 1))
        over8, under8 = Signal(), Signal()
        low8 = Signal(signed(16))
        # The bounds of the requested range, ReLU folded in (every range has lo ≤ 0 ≤ hi, so
        # max(0, clip(v, lo, hi)) = clip(v, max(lo, 0), hi)).
        with m.Switch(sat[n]):
            for code, (l, h) in SAT_BOUNDS.items():
                with m.Case(code):
                    m.d.sync += [lo7.eq(Mux(relu[n], max(l, 0), l)), hi7.eq(h)]
        m.d.sync += [
            # Stage 7: the post-rounding addend.
            s7.eq(mr.q + self.a),
            # Stage 8: compare with the bounds.
            over8.eq(s7 > hi7), under8.eq(s7 < lo7), low8.eq(s7[:16]),
            lo8.eq(lo7), hi8.eq(hi7),
            # Stage 9: saturate.
            self.y.eq(Mux(over8, hi8, Mux(under8, lo8, low8))),
        ]
        return m


class InitMode:
    """Start value the drain adds to a finished accumulator (array → PE ``d_init``)."""
    ZERO = 0
    BIAS = 1
    CMEM = 2


#: Stages of the activation-table lookup: table read (block RAM and its register), a plain
#: register after the block RAM, the select.
ACT_LATENCY = 3


class PE(wiring.Component):
    """One processing element: L MAC lanes, its rows of A (AMEM), its results (CMEM), a drain
    register with its epilogues (row scale, requantization, activation table), and its row unit
    (:class:`hw.rowunit.RowDatapath`), which shares the epilogues' two multipliers.

    The PE holds no sequencing logic: the array drives all PEs in lockstep with the same
    addresses, and every control input below is expected at a fixed pipeline stage.

    **Beats** (one per cycle). Stage I (the beat's issue cycle): ``valid``, ``a_addr`` (AMEM
    element address), ``first``, ``last``. The PE reads AMEM row ``a_addr div L`` (data in
    stage M1), registers it (M2), selects the element and registers it (M3) with the beat's B
    word, broadcasts it to its lanes, whose DSPs register it with the lane's B byte (M4) and
    the product (M5); M5 accumulates: ``acc ← (first ? 0 : acc) + a·b``. ``b`` is the
    broadcast BBUF word of the beat, presented in stage M2 (two cycles after I). A beat with
    ``last`` moves the L sums into the drain register (in M5), freeing the accumulators for
    the next tile.

    **Delta beats** (DMATMUL, docs/delta.md): with ``dmode`` (given in M2, like ``b``) the
    operands are swapped: every lane multiplies the broadcast ``dval`` (Δ, int10) by its own
    element of the AMEM row (the low 8 bits: a W slice stored as int9) instead of the selected
    element by its B byte; the array keeps ``first`` low between tokens, so the lanes keep
    accumulating. ``arow`` is the AMEM row in M2 (the array's delta encoder reads token rows
    through it).

    **Drain** (one element per cycle). From the cycle after a drain-register load, element i
    of the tile is ``dr[0]`` in cycle D0 = load + 1 + i (the register shifts every cycle); the
    array must space loads at least L cycles apart. Per element:

    - D0: ``c_raddr`` (CMEM row) is read (for ``d_init`` = CMEM, the ACCUM start value);
      ``c_slot`` and ``d_init`` are given in D0 too.
    - D2 (:attr:`D_RS`): ``rs_row``, the row-scale entry to use (the tile's row pass).
    - D3: ``bias`` (int32, the PBUF bias of the column) is given;
      the PE computes ``s = dr + init`` (wrapping int32).
    - D4 (:attr:`D_WRITE`, :attr:`D_RQ`): ``s`` is written to CMEM if ``c_we`` and not
      ``c_wy`` (row ``c_waddr``, element slot ``c_wslot``); ``s`` enters the row scale with
      ``rscale`` (1: ``s ← wrap32(rshift_round(s·RS.m, RS.sh))``; 0: the identity, m = 1,
      sh = 0); ``m``, ``sh``, ``sat``, ``relu`` for the requantizer are given (the PE delays
      them by the row scale's latency).
    - D9 (:attr:`D_S2`): the scaled ``s`` enters the requantizer.
    - D18 (:attr:`D_ACT`): the requantized value; ``act`` (1: replace it by
      ``ACT[256·act_sel + y + 128]``; needs ``sat`` INT8) and ``act_sel`` are given.
    - D21 (:attr:`D_Y`): ``y`` holds the result. The array writes it into AMEM
      (``aw_from_y``), into its write-back, or into CMEM (``c_we`` with ``c_wy``: REQ, ``y``
      sign-extended).

    **Row mode** (``row`` = 1, constant while a row operation runs; no beats or drains then):
    the row unit (:class:`hw.rowunit.RowDatapath`, whose class constants ``R_*`` are the
    stages, counted from R0, the cycle in which the row sequencer's registers hold the element)
    uses the CMEM read port (``c_raddr``/``c_slot``: the element in stage :attr:`R_DATA`), the
    AMEM read (``a_addr``, same timing), the two multipliers (S1 in ``R_S1``, the requantizer
    in ``R_S2``), ``m``/``sh`` (given in ``R_PARAM``, delayed by the PE to ``R_S2``), ``bias``
    (given in ``R_C``: LAYERNORM's B), and produces ``y`` in ``R_Y``, written like a drain
    result. The element controls ``rc_data``, ``rc_q1``, ``rc_s2``, ``rc_y2`` are given in
    stages ``R_DATA``, ``R_Q1``, ``R_S2`` and ``R_Y2``, ``rop`` throughout.

    **Memories.** AMEM: ``amem_depth / L`` rows of L int9; the write port (``aw_*``) writes the
    elements selected by ``aw_en`` of row ``aw_addr`` with ``aw_data``, or with ``y`` in every
    element if ``aw_from_y`` (a drain write). CMEM: ``cmem_depth / (L/4)`` rows of L/4 int32
    (one ext-memory word); ``c_rdata`` is the row read at ``c_raddr`` two cycles earlier
    (for STORE_C, the array drives ``c_raddr`` from the DMA engine when no drain reads). A
    CMEM read of the row written in the same cycle returns the old row. A whole row is
    written with ``cw_en`` (one bit per int32) and ``cw_data`` at ``c_waddr`` (LOAD_C) in
    cycles with ``c_dma``, which the array holds only while no drain or row operation writes
    CMEM. RS (:data:`RS_ENTRIES` × (m uint15, sh 6 bits)): written by the row
    unit (SOFTMAX) at ``rs_waddr`` when ``rs_we``. ACT (:data:`ACT_ENTRIES` int9): written at
    ``t_waddr`` with ``t_wdata`` when ``t_we`` (LOAD_T). Each memory's storage (the banks'
    ``MemoryData``, :meth:`BankedRam.storage`) is reachable from a testbench as
    ``pe.amem_data``, ``pe.cmem_data``, ``pe.rs_data`` (entry: m in bits 0–14, sh in 15–20),
    ``pe.act_data``.

    Parameters (keyword-only)
    -------------------------
    lanes : 4, 8, 16 or 32
    amem_depth : int — int9 elements, a power of two ≥ 2·lanes
    cmem_depth : int — int32 elements, a power of two ≥ lanes
    """
    #: Beat issue to accumulator (the drain-register load happens in stage M5).
    MAC_LATENCY = 5
    #: Drain stage in which the row-scale entry is read (``rs_row``).
    D_RS = 2
    #: Drain stage in which ``s`` is written to CMEM and enters the row scale.
    D_WRITE = 4
    #: Drain stage in which ``m``, ``sh``, ``sat``, ``relu`` are given.
    D_RQ = 4
    #: Drain stage in which the requantizer takes the row-scaled ``s``.
    D_S2 = D_WRITE + MulRound.latency_of(False)
    #: Drain stage of the requantized value (``act``, ``act_sel`` given).
    D_ACT = D_S2 + Requant.LATENCY
    #: Drain stage in which ``y`` is valid.
    D_Y = D_ACT + ACT_LATENCY
    #: Row mode: stage of the CMEM and AMEM elements read in R0.
    R_DATA = 3

    def __init__(self, *, lanes, amem_depth, cmem_depth):
        self._lanes = check_choice("lanes", lanes, LANE_CHOICES)
        self._amem_depth = check_int("amem_depth", amem_depth, lo=2 * lanes, hi=1 << 16)
        self._cmem_depth = check_int("cmem_depth", cmem_depth, lo=lanes, hi=1 << 16)
        for name, v in (("amem_depth", amem_depth), ("cmem_depth", cmem_depth)):
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of two, not {v}")
        L = lanes
        cw = L // 4
        arows, crows = amem_depth // L, cmem_depth // cw
        self.a_row_bits = max(1, _log2(arows))
        self.c_row_bits = max(1, _log2(crows))
        super().__init__({
            # beats
            "valid": In(1),
            "a_addr": In(16),
            "first": In(1),
            "last": In(1),
            "b": In(8 * L),
            # delta beats (DMATMUL), given in stage M2 like ``b``
            "dmode": In(1),
            "dval": In(signed(10)),
            "arow": Out(9 * L),
            # drain
            "c_raddr": In(self.c_row_bits),
            "c_slot": In(max(1, _log2(cw))),
            "d_init": In(2),
            "rs_row": In(8),
            "bias": In(signed(32)),
            "rscale": In(1),
            "c_we": In(1),
            "c_wy": In(1),
            # MATMUL MAXC: the row maximum of s (updated in D_WRITE), written with c_wmx
            "mx_upd": In(1),
            "mx_first": In(1),
            "c_wmx": In(1),
            "c_waddr": In(self.c_row_bits),
            "c_wslot": In(max(1, _log2(cw))),
            "m": In(signed(17)),
            "sh": In(unsigned(8)),
            "sat": In(unsigned(2)),
            "relu": In(1),
            "act": In(1),
            "act_sel": In(1),
            "y": Out(signed(16)),
            "c_rdata": Out(8 * L),
            # CMEM row write (LOAD_C)
            "c_dma": In(1),
            "cw_en": In(cw),
            "cw_data": In(8 * L),
            # AMEM write port
            "aw_addr": In(self.a_row_bits),
            "aw_data": In(9 * L),
            "aw_en": In(L),
            "aw_from_y": In(1),
            # activation table write (LOAD_T)
            "t_we": In(1),
            "t_waddr": In(9),
            "t_wdata": In(signed(9)),
            # row unit
            "row": In(1),
            "rop": In(row_op_layout()),
            "rc_data": In(row_ctl_layout()),
            "rc_q1": In(row_ctl_layout()),
            "rc_s2": In(row_ctl_layout()),
            "rc_y2": In(row_ctl_layout()),
            "rs_we": In(1),
            "rs_waddr": In(8),
        })
        # The memories' storage exists with the component, so that testbenches can reach it.
        self.amem_data = BankedRam.storage(width=9 * L, depth=amem_depth // L)
        self.cmem_data = BankedRam.storage(width=32 * cw, depth=cmem_depth // cw)
        self.rs_data = BankedRam.storage(width=21, depth=RS_ENTRIES)
        self.act_data = BankedRam.storage(width=9, depth=ACT_ENTRIES)

    lanes = property(lambda self: self._lanes)
    amem_depth = property(lambda self: self._amem_depth)
    cmem_depth = property(lambda self: self._cmem_depth)

    def elaborate(self, platform):
        from .rowunit import RowDatapath   # the row unit builds on this module's units

        m = Module()
        L = self._lanes
        lsh = _log2(L)
        cw = L // 4   # int32 per CMEM row

        m.submodules.amem = amem = BankedRam(width=9 * L, depth=self._amem_depth // L,
                                             granularity=9, storage=self.amem_data)
        # Not transparent: the array issues an ACCUM's first tile L + 4 cycles after the
        # previous one, so an element is always read at least one cycle after the drain wrote
        # it (read D0, write D4).
        m.submodules.cmem = cmem = BankedRam(width=32 * cw, depth=self._cmem_depth // cw,
                                             granularity=32, storage=self.cmem_data)

        # --- beats: I → M1 (AMEM row read) → M2 (row registered) → M3 (element and B word
        # registered) → M4 (element, B byte in the DSP input registers) → M5 (products
        # registered, accumulate). Names end in the stage in which the signal holds the beat.
        ML = self.MAC_LATENCY
        sel1, sel2 = Signal(lsh), Signal(lsh)
        arow2 = bank_select(amem)   # the AMEM row, registered per bank (M2)
        v = {k: Signal(name=f"v{k}") for k in range(1, ML + 1)}
        first = {k: Signal(name=f"first{k}") for k in range(1, ML + 1)}
        last = {k: Signal(name=f"last{k}") for k in range(1, ML + 1)}
        prod5 = [Signal(signed(18), name=f"prod5_{l}") for l in range(L)]
        acc = [Signal(signed(32), name=f"acc{l}") for l in range(L)]
        dr = [Signal(signed(32), name=f"dr{l}") for l in range(L)]

        m.d.comb += amem.r_addr.eq(self.a_addr[lsh:])
        m.d.sync += [
            v[1].eq(self.valid), first[1].eq(self.first), last[1].eq(self.last & self.valid),
            sel1.eq(self.a_addr[:lsh]), sel2.eq(sel1),
        ]
        m.d.sync += [v[k + 1].eq(v[k]) for k in range(1, ML)]
        m.d.sync += [first[k + 1].eq(first[k]) for k in range(1, ML)]
        m.d.sync += [last[k + 1].eq(last[k]) for k in range(1, ML)]
        # M3: the element selected from the row, registered next to the 16:1 multiplexer (the
        # fan-out to the lanes' DSPs is then a plain net from one register), with the B word.
        # It is also the row unit's AMEM element (R_DATA, like the CMEM element).
        # Delta beats (``dmode``, DMATMUL) swap the operands: the broadcast scalar is the
        # array's Δ (int10) and each lane's operand is its own element of the AMEM row (a W
        # slice, int8 stored as int9).
        a3 = Signal(signed(10))
        b3 = Signal(8 * L)
        wrow = Cat(*(arow2[9 * l:9 * l + 8] for l in range(L)))
        m.d.comb += self.arow.eq(arow2)
        m.d.sync += [a3.eq(Mux(self.dmode, self.dval, select(arow2, sel2, 9).as_signed())),
                     b3.eq(Mux(self.dmode, wrow, self.b))]
        # M4, M5: one DSP per lane with its input registers (the element and the lane's B
        # byte) and product register: no fabric logic in front of a multiplier.
        for l in range(L):
            mul = Multiplier(a_shape=signed(10), b_shape=signed(8), latency=2)
            m.submodules[f"mul{l}"] = mul
            m.d.comb += [mul.ce.eq(1), mul.a.eq(a3), mul.b.eq(b3[8 * l:8 * l + 8].as_signed()),
                         prod5[l].eq(mul.p)]
        # M5: accumulate (bubbles leave acc alone); a last beat hands the sums to the drain
        # register, otherwise that register shifts one element per cycle towards dr[0].
        for l in range(L):
            total = Mux(first[ML], 0, acc[l]) + prod5[l]
            with m.If(v[ML]):
                m.d.sync += acc[l].eq(total)
            with m.If(last[ML]):
                m.d.sync += dr[l].eq(total)
            with m.Else():
                m.d.sync += dr[l].eq(dr[l + 1] if l + 1 < L else 0)

        # --- drain: D0 (dr[0], CMEM read) → D1 → D2 (row registered; RS read) → D3 (start
        # value; s = dr + init) → D4 (s registered: CMEM write, row-scale input)
        val1, val2, val3 = (Signal(signed(32), name=f"dval{k}") for k in (1, 2, 3))
        slot1, slot2 = Signal.like(self.c_slot), Signal.like(self.c_slot)
        init1, init2, init3 = Signal(2), Signal(2), Signal(2)
        crow2 = bank_select(cmem)   # the CMEM row, registered per bank (D2)
        cin3 = Signal(signed(32))
        s4 = Signal(signed(32))
        m.d.comb += [cmem.r_addr.eq(self.c_raddr), self.c_rdata.eq(crow2)]
        m.d.sync += [
            val1.eq(dr[0]), slot1.eq(self.c_slot), init1.eq(self.d_init),
            val2.eq(val1), slot2.eq(slot1), init2.eq(init1),
            val3.eq(val2), init3.eq(init2),
            cin3.eq(select(crow2, slot2, 32).as_signed() if cw > 1 else crow2.as_signed()),
            s4.eq(val3 + Mux(init3 == InitMode.BIAS, self.bias,
                             Mux(init3 == InitMode.CMEM, cin3, 0))),
        ]

        # --- the row unit, and the two multipliers it shares with the drain: S1 (row scale)
        # and S2 (requantizer). `row` is constant while a row operation runs.
        m.submodules.rowdp = rd = RowDatapath()
        # S1's product in fabric logic, so that a PE takes L + 2 DSPs (the lanes and S2): 144 at
        # P = 8, L = 16 of the LFE5U-85F's 156. On iCE40 (few LUTs, the UP5K's 8 DSPs hold
        # L + 4 at L = 4) in DSPs; both give the same results (tests/test_pe.py).
        s1_dsp = getattr(platform, "family", None) == "ice40"
        m.submodules.s1 = s1 = MulRound(addend=False, dsp=s1_dsp)
        m.submodules.requant = s2 = Requant()

        # Row scale (D4): the entry of the tile's row, read in D2.
        m.submodules.rs = rs = BankedRam(width=21, depth=RS_ENTRIES, storage=self.rs_data)
        rse = bank_select(rs)
        m.d.comb += [
            rs.r_addr.eq(self.rs_row),
            rs.w_addr.eq(self.rs_waddr), rs.w_data.eq(Cat(rd.rs_m, rd.rs_sh)),
            rs.w_en.eq(self.rs_we),
            s1.x.eq(Mux(self.row, rd.s1_x, s4)),
            s1.m.eq(Mux(self.row, rd.s1_m, Mux(self.rscale, rse[:15], 1))),
            s1.sh.eq(Mux(self.row, rd.s1_sh, Mux(self.rscale, rse[15:21], 0))),
        ]

        # Requantizer parameters, given in D_RQ, travel with the value to D_S2.
        nd = self.D_S2 - self.D_RQ
        pm = [Signal(signed(17), name=f"pm{k}") for k in range(nd + 1)]
        psh = [Signal(8, name=f"psh{k}") for k in range(nd + 1)]
        psat = [Signal(2, name=f"psat{k}") for k in range(nd + 1)]
        prelu = [Signal(name=f"prelu{k}") for k in range(nd + 1)]
        m.d.comb += [pm[0].eq(self.m), psh[0].eq(self.sh), psat[0].eq(self.sat),
                     prelu[0].eq(self.relu)]
        for sig in (pm, psh, psat, prelu):
            m.d.sync += [sig[k + 1].eq(sig[k]) for k in range(nd)]
        m.d.comb += [
            s2.x.eq(Mux(self.row, rd.s2_x, s1.q[:32].as_signed())),   # wrap32
            s2.m.eq(Mux(self.row, rd.s2_m, pm[nd])),
            s2.sh.eq(Mux(self.row, rd.s2_sh, psh[nd])),
            s2.sat.eq(Mux(self.row, rd.s2_sat, psat[nd])),
            s2.relu.eq(~self.row & prelu[nd]),
            s2.c.eq(Mux(self.row, rd.s2_c, 0)),
            s2.a.eq(Mux(self.row, rd.s2_a, 0)),
        ]
        m.d.comb += [
            rd.op.eq(self.rop), rd.rc_data.eq(self.rc_data), rd.rc_q1.eq(self.rc_q1),
            rd.rc_s2.eq(self.rc_s2), rd.rc_y2.eq(self.rc_y2),
            rd.cin.eq(cin3), rd.ain.eq(a3[:9].as_signed()), rd.q1.eq(s1.q), rd.y2.eq(s2.y),
            rd.bias.eq(self.bias), rd.m_d.eq(pm[nd]), rd.sh_d.eq(psh[nd]),
        ]

        # --- activation table (D_ACT → D_Y): index y + 128 of table act_sel; the block RAM
        # output is registered once more before the select.
        m.submodules.act = act = BankedRam(width=9, depth=ACT_ENTRIES, storage=self.act_data)
        y19, y20 = Signal(signed(16)), Signal(signed(16))
        act19, act20 = Signal(), Signal()
        m.d.comb += [
            act.r_addr.eq(Cat(s2.y[:7], ~s2.y[7], self.act_sel)),
            act.w_addr.eq(self.t_waddr), act.w_data.eq(self.t_wdata), act.w_en.eq(self.t_we),
        ]
        m.d.sync += [
            y19.eq(s2.y), y20.eq(y19), act19.eq(self.act), act20.eq(act19),
            self.y.eq(Mux(act20, bank_select(act).as_signed(), y20)),
        ]

        # --- CMEM writes: one element (s in D_WRITE, or y in D_Y with c_wy), or a whole row
        # (LOAD_C; selected by c_dma, a register in the array, not by the element's enable).
        ysx = Signal(signed(32))
        m.d.comb += ysx.eq(self.y)
        # MAXC: the running maximum of the row pass's valid s (the element in D_WRITE), written
        # by the array the cycle after the row pass's last element.
        rmax = Signal(signed(32))
        with m.If(self.mx_upd):
            m.d.sync += rmax.eq(Mux(self.mx_first | (s4 > rmax), s4, rmax))
        m.d.comb += [
            cmem.w_addr.eq(self.c_waddr),
            cmem.w_data.eq(Mux(self.c_dma, self.cw_data,
                               Cat(*([Mux(self.c_wmx, rmax, Mux(self.c_wy, ysx, s4))] * cw)))),
            cmem.w_en.eq(Mux(self.c_dma, self.cw_en,
                             Mux(self.c_we, (1 << self.c_wslot) if cw > 1 else 1, 0))),
        ]

        # --- AMEM writes: a DMA row (aw_data) or the requantized result in every element.
        m.d.comb += [
            amem.w_addr.eq(self.aw_addr),
            amem.w_data.eq(Mux(self.aw_from_y, Cat(*([self.y[:9]] * L)), self.aw_data)),
            amem.w_en.eq(self.aw_en),
        ]
        return m
