"""Processing element of the A-row-parallel array, and its requantization unit.

Golden models: :func:`sim.golden.matmul` (docs/numerics.md §3) and :func:`sim.golden.requant`
(§4). The instruction-level behaviour is in docs/isa.md, the dataflow in docs/architecture.md.
"""
from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import Sat
from .multiplier import Multiplier
from .params import check_choice, check_int

__all__ = ["Requant", "PE", "SAT_BOUNDS", "LANE_CHOICES", "InitMode", "BankedRam", "BANK_ROWS",
           "bank_select", "pick", "is_zero", "select"]

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

    def __init__(self, *, width, depth, granularity=None, transparent=False):
        self._width = check_int("width", width, lo=1)
        self._depth = check_int("depth", depth, lo=1)
        if depth & (depth - 1):
            raise ValueError(f"depth must be a power of two, not {depth}")
        self._gran = width if granularity is None else granularity
        if width % self._gran:
            raise ValueError(f"granularity {self._gran} does not divide width {width}")
        self._transparent = transparent
        self.banks = max(1, depth // BANK_ROWS)
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
            mem = Memory(shape=unsigned(self._width), depth=rows_per, init=[],
                         attrs={} if self._transparent else {"no_rw_check": 1})
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



class Requant(wiring.Component):
    """``y = clip(rshift_round(x·m, sh), lo, hi)`` (and ``max(0, y)`` with ``relu``).

    A fixed-latency pipeline without flow control (it never stalls; the caller tracks which
    cycles carry data): the inputs of one cycle come out :attr:`LATENCY` cycles later on ``y``.

    Ports
    -----
    x : In(signed(32))
        The accumulator (int32).
    m : In(unsigned(16))
        Multiplier (numerics: uint15; a 16th bit is multiplied too, the product still fits 48 bits).
    sh : In(unsigned(8))
        Rounding right shift (numerics: 0…47; larger shifts give 0, as the formula does).
    sat : In(unsigned(2))
        ``hw.isa.Sat`` range: INT8, INT9, INT16, UINT8.
    relu : In(1)
        Clamp negative results to 0 after saturation.
    y : Out(signed(16))
        The result, :attr:`LATENCY` cycles after its inputs.

    Stages 1–2 split ``x·m`` over two multipliers (signed 16×16 and unsigned 16×16, one DSP
    each, with the DSP's own input and output registers: ``hw.multiplier.Multiplier``); stage 3
    adds the halves (48 bits); stage 4 shifts right by ``sh − 1`` keeping the rounding bit;
    stage 5 rounds half up; stage 6 compares with the bounds; stage 7 saturates.
    """
    LATENCY = 7

    def __init__(self):
        super().__init__({
            "x": In(signed(32)),
            "m": In(unsigned(16)),
            "sh": In(unsigned(8)),
            "sat": In(unsigned(2)),
            "relu": In(1),
            "y": Out(signed(16)),
        })

    def elaborate(self, platform):
        m = Module()
        p3 = Signal(signed(48))
        t4 = Signal(signed(48))
        s5 = Signal(signed(48))
        over6, under6 = Signal(), Signal()
        low6 = Signal(signed(16))
        lo = [Signal(signed(17), name=f"lo{k}") for k in range(7)]
        hi = [Signal(signed(17), name=f"hi{k}") for k in range(7)]
        shm = [Signal(6, name=f"shm{k}") for k in range(4)]
        shnz = [Signal(name=f"shnz{k}") for k in range(5)]

        # The bounds of the requested range, ReLU folded in (every range has lo ≤ 0 ≤ hi, so
        # max(0, clip(v, lo, hi)) = clip(v, max(lo, 0), hi)).
        with m.Switch(self.sat):
            for code, (l, h) in SAT_BOUNDS.items():
                with m.Case(code):
                    m.d.comb += [lo[0].eq(Mux(self.relu, max(l, 0), l)), hi[0].eq(h)]
        # sh − 1, clamped: p >> 47 is already 0 or −1, further shifts change nothing.
        m.d.comb += [
            shnz[0].eq(self.sh.any()),
            shm[0].eq(Mux(is_zero(self.sh), 0, Mux(self.sh > 48, 47, self.sh - 1))),
        ]
        m.d.sync += [lo[k + 1].eq(lo[k]) for k in range(6)]
        m.d.sync += [hi[k + 1].eq(hi[k]) for k in range(6)]
        m.d.sync += [shm[k + 1].eq(shm[k]) for k in range(3)]
        m.d.sync += [shnz[k + 1].eq(shnz[k]) for k in range(4)]
        # Stages 1–2: two 16×16 products in DSPs with their input and output registers
        # (x = xh·2^16 + xl, xh signed, xl unsigned).
        m.submodules.mul_hi = mh = Multiplier(a_shape=signed(16), b_shape=unsigned(16), latency=2)
        m.submodules.mul_lo = ml = Multiplier(a_shape=unsigned(16), b_shape=unsigned(16),
                                              latency=2)
        m.d.comb += [mh.ce.eq(1), ml.ce.eq(1), mh.a.eq(self.x[16:].as_signed()), mh.b.eq(self.m),
                     ml.a.eq(self.x[:16]), ml.b.eq(self.m)]
        m.d.sync += [
            # Stage 3: the 48-bit product.
            p3.eq((mh.p << 16) + ml.p),
            # Stage 4: shift right by sh − 1; bit 0 is then the rounding bit.
            t4.eq(p3 >> shm[3]),
            # Stage 5: round half up = floor(p / 2^sh) + bit (sh − 1).
            s5.eq(Mux(shnz[4], (t4 >> 1) + t4[0], t4)),
            # Stage 6: compare with the bounds.
            over6.eq(s5 > hi[5]),
            under6.eq(s5 < lo[5]),
            low6.eq(s5[:16]),
            # Stage 7: saturate.
            self.y.eq(Mux(over6, hi[6], Mux(under6, lo[6], low6))),
        ]
        return m


class InitMode:
    """Start value the drain adds to a finished accumulator (array → PE ``d_init``)."""
    ZERO = 0
    BIAS = 1
    CMEM = 2


class PE(wiring.Component):
    """One processing element: L MAC lanes, its rows of A (AMEM), its results (CMEM), a drain
    register and a requantization unit.

    The PE holds no sequencing logic: the array drives all PEs in lockstep with the same
    addresses, and every control input below is expected at a fixed pipeline stage.

    **Beats** (one per cycle). Stage I (the beat's issue cycle): ``valid``, ``a_addr`` (AMEM
    element address), ``first``, ``last``. The PE reads AMEM row ``a_addr div L`` (data in
    stage M1), registers it (M2), selects the element and broadcasts it to its lanes, whose
    DSPs register it with the lane's B byte (M3) and the product (M4); M4 accumulates:
    ``acc ← (first ? 0 : acc) + a·b``. ``b`` is the broadcast BBUF word of the beat, presented
    in stage M2 (two cycles after I). A beat with ``last`` moves the
    L sums into the drain register (in M4), freeing the accumulators for the next tile.

    **Drain** (one element per cycle). From the cycle after a drain-register load, element i
    of the tile is ``dr[0]`` in cycle D0 = load + 1 + i (the register shifts every cycle); the
    array must space loads at least L cycles apart. Per element:

    - D0: ``c_raddr`` (CMEM row) is read (for ``d_init`` = CMEM, the ACCUM start value);
      ``c_slot`` and ``d_init`` are given in D0 too.
    - D3: ``bias`` (int32, the PBUF bias of the column) is given;
      the PE computes ``s = dr + init`` (wrapping int32).
    - D4: ``s`` is written to CMEM if ``c_we`` (row ``c_waddr``, element slot ``c_wslot``),
      and enters the requantizer with ``m``, ``sh``, ``sat``, ``relu`` (given in D4).
    - D4 + :attr:`Requant.LATENCY`: ``y`` holds the requantized value.

    **Memories.** AMEM: ``amem_depth / L`` rows of L int9; the write port (``aw_*``) writes the
    elements selected by ``aw_en`` of row ``aw_addr`` with ``aw_data``, or with ``y`` in every
    element if ``aw_from_y`` (a drain write). CMEM: ``cmem_depth / (L/4)`` rows of L/4 int32
    (one ext-memory word); ``c_rdata`` is the row read at ``c_raddr`` two cycles earlier
    (for STORE_C, the array drives ``c_raddr`` from the DMA engine when no drain reads).
    A CMEM read of the row written in the same cycle returns the old row.

    Parameters (keyword-only)
    -------------------------
    lanes : 4, 8, 16 or 32
    amem_depth : int — int9 elements, a power of two ≥ 2·lanes
    cmem_depth : int — int32 elements, a power of two ≥ lanes
    """
    #: Beat issue to accumulator (the drain-register load happens in stage M4).
    MAC_LATENCY = 4
    #: Drain stage in which the CMEM write and the requantizer input happen.
    D_WRITE = 4
    #: Drain stage in which ``y`` is valid.
    D_Y = 4 + Requant.LATENCY

    def __init__(self, *, lanes, amem_depth, cmem_depth):
        self._lanes = check_choice("lanes", lanes, LANE_CHOICES)
        self._amem_depth = check_int("amem_depth", amem_depth, lo=2 * lanes, hi=1 << 16)
        self._cmem_depth = check_int("cmem_depth", cmem_depth, lo=lanes, hi=1 << 16)
        for name, v in (("amem_depth", amem_depth), ("cmem_depth", cmem_depth)):
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of two, not {v}")
        L = lanes
        arows, crows = amem_depth // L, cmem_depth // (L // 4)
        self.a_row_bits = max(1, _log2(arows))
        self.c_row_bits = max(1, _log2(crows))
        super().__init__({
            # beats
            "valid": In(1),
            "a_addr": In(16),
            "first": In(1),
            "last": In(1),
            "b": In(8 * L),
            # drain
            "c_raddr": In(self.c_row_bits),
            "c_slot": In(max(1, _log2(L // 4))),
            "d_init": In(2),
            "bias": In(signed(32)),
            "c_we": In(1),
            "c_waddr": In(self.c_row_bits),
            "c_wslot": In(max(1, _log2(L // 4))),
            "m": In(unsigned(16)),
            "sh": In(unsigned(8)),
            "sat": In(unsigned(2)),
            "relu": In(1),
            "y": Out(signed(16)),
            "c_rdata": Out(8 * L),
            # AMEM write port
            "aw_addr": In(self.a_row_bits),
            "aw_data": In(9 * L),
            "aw_en": In(L),
            "aw_from_y": In(1),
        })

    lanes = property(lambda self: self._lanes)
    amem_depth = property(lambda self: self._amem_depth)
    cmem_depth = property(lambda self: self._cmem_depth)

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        lsh = _log2(L)
        cw = L // 4   # int32 per CMEM row

        m.submodules.amem = amem = BankedRam(width=9 * L, depth=self._amem_depth // L,
                                             granularity=9)
        # Not transparent: the array issues an ACCUM's first tile L + 4 cycles after the
        # previous one, so an element is always read at least one cycle after the drain wrote
        # it (read D0, write D4).
        m.submodules.cmem = cmem = BankedRam(width=32 * cw, depth=self._cmem_depth // cw,
                                             granularity=32)

        # --- beats: I → M1 (AMEM row read) → M2 (row registered) → M3 (element, B byte in the
        # DSP input registers) → M4 (products registered, accumulate). Names end in the stage
        # in which the signal holds the beat.
        sel1, sel2 = Signal(lsh), Signal(lsh)
        arow2 = bank_select(amem)   # the AMEM row, registered per bank (M2)
        v = {k: Signal(name=f"v{k}") for k in range(1, 5)}
        first = {k: Signal(name=f"first{k}") for k in range(1, 5)}
        last = {k: Signal(name=f"last{k}") for k in range(1, 5)}
        prod4 = [Signal(signed(17), name=f"prod4_{l}") for l in range(L)]
        acc = [Signal(signed(32), name=f"acc{l}") for l in range(L)]
        dr = [Signal(signed(32), name=f"dr{l}") for l in range(L)]

        m.d.comb += amem.r_addr.eq(self.a_addr[lsh:])
        m.d.sync += [
            v[1].eq(self.valid), first[1].eq(self.first), last[1].eq(self.last & self.valid),
            sel1.eq(self.a_addr[:lsh]), sel2.eq(sel1),
        ]
        m.d.sync += [v[k + 1].eq(v[k]) for k in range(1, 4)]
        m.d.sync += [first[k + 1].eq(first[k]) for k in range(1, 4)]
        m.d.sync += [last[k + 1].eq(last[k]) for k in range(1, 4)]
        # M3, M4: one DSP per lane with its input registers (the element selected in M2 and
        # the lane's B byte) and product register: no fabric fan-out in front of a multiplier.
        a2 = select(arow2, sel2, 9).as_signed()
        for l in range(L):
            mul = Multiplier(a_shape=signed(9), b_shape=signed(8), latency=2)
            m.submodules[f"mul{l}"] = mul
            m.d.comb += [mul.ce.eq(1), mul.a.eq(a2), mul.b.eq(self.b[8 * l:8 * l + 8].as_signed()),
                         prod4[l].eq(mul.p)]
        # M4: accumulate (bubbles leave acc alone); a last beat hands the sums to the drain
        # register, otherwise that register shifts one element per cycle towards dr[0].
        for l in range(L):
            total = Mux(first[4], 0, acc[l]) + prod4[l]
            with m.If(v[4]):
                m.d.sync += acc[l].eq(total)
            with m.If(last[4]):
                m.d.sync += dr[l].eq(total)
            with m.Else():
                m.d.sync += dr[l].eq(dr[l + 1] if l + 1 < L else 0)

        # --- drain: D0 (dr[0], CMEM read) → D1 → D2 (row registered) → D3 (start value;
        # s = dr + init) → D4 (s registered: CMEM write, requantizer input)
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
        m.d.comb += [
            cmem.w_addr.eq(self.c_waddr),
            cmem.w_data.eq(Cat(*([s4] * cw))),
            cmem.w_en.eq(Mux(self.c_we, 1 << self.c_wslot, 0) if cw > 1 else self.c_we),
        ]
        m.submodules.requant = rq = Requant()
        m.d.comb += [
            rq.x.eq(s4), rq.m.eq(self.m), rq.sh.eq(self.sh), rq.sat.eq(self.sat),
            rq.relu.eq(self.relu), self.y.eq(rq.y),
        ]

        # --- AMEM writes: a DMA row (aw_data) or the requantized result in every element.
        m.d.comb += [
            amem.w_addr.eq(self.aw_addr),
            amem.w_data.eq(Mux(self.aw_from_y, Cat(*([rq.y[:9]] * L)), self.aw_data)),
            amem.w_en.eq(self.aw_en),
        ]
        return m
