"""SDR SDRAM controller answering the ext-memory protocol (docs/board.md, *SDRAM controller*).

Made for the ULX3S's SDRAM: by default 32 MB (16 bits, 4 banks × 8192 rows × 512 columns, as
the 32 MB parts fitted to the board); the 64 MB AS4C32M16SB of later boards has 1024 columns
(``cols=1024``; with 512 it works and uses half of it). Any 16-bit SDR part fits by geometry and
timing (default: the AS4C32M16SB-7's). The controller is a *target* of ``hw.dma.mem_signature``
(like ``hw.extmem.BlockRamMemory``): requests ``{addr, we, data, mask}`` of L-byte words in,
read responses out in order, ``rsp.ready`` back-pressure honoured.

An L-byte word is L/2 consecutive columns of one row, moved as a burst of L/2 column commands on
consecutive cycles (the mode register programs burst length 1, so every L works and a write's
byte mask is the DQM of each beat). Word address bits, low to high: the word within the row,
the bank, the row; a linear stream runs through a whole row (1 KiB at 512 columns) before it
changes bank. Every bank keeps its row open until another row of that bank or a refresh needs it
closed (open-row policy: a stream of reads or writes costs L/2 cycles per word while it
stays in the open rows).
"""
import math

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .dma import mem_signature
from .params import check_int
from .pe import LANE_CHOICES, _log2, is_zero

__all__ = ["sdram_pins_signature", "SdramController", "AS4C32M16SB", "Cmd"]

#: AS4C32M16SB-7 timing (ns; tMRD in clock cycles), from its data sheet.
AS4C32M16SB = dict(tRCD=21.0, tRP=21.0, tRAS=42.0, tRC=63.0, tRRD=14.0, tRFC=63.0, tWR=14.0,
                   tMRD=2, tREFI=7812.5)


class Cmd:
    """SDRAM commands as (ras, cas, we) with cs asserted (the pins are active high here; the
    board's PinsN inverts them)."""
    NOP = (0, 0, 0)
    ACTIVE = (1, 0, 0)
    READ = (0, 1, 0)
    WRITE = (0, 1, 1)
    PRECHARGE = (1, 0, 1)
    REFRESH = (1, 1, 0)
    MODE = (1, 1, 1)


def sdram_pins_signature(*, addr_bits=13, ba_bits=2):
    """The SDRAM pins seen from the controller. ``cs``, ``ras``, ``cas``, ``we`` are 1 when
    asserted (the chip's pins are active low); ``dqm`` 1 masks a byte; ``dq`` is split into
    ``dq_o``/``dq_oe``/``dq_i`` for the board's tristate buffer (or a simulation model)."""
    return wiring.Signature({
        "clk_en": Out(1), "cs": Out(1), "ras": Out(1), "cas": Out(1), "we": Out(1),
        "ba": Out(ba_bits), "a": Out(addr_bits), "dqm": Out(2),
        "dq_o": Out(16), "dq_oe": Out(1), "dq_i": In(16),
    })


def _pow2(name, v, lo, hi):
    check_int(name, v, lo=lo, hi=hi)
    if v & (v - 1):
        raise ValueError(f"{name} must be a power of two, not {v}")
    return v


def _eq(sig, k):
    return is_zero(sig) if k == 0 else sig == k


class SdramController(wiring.Component):
    """SDR SDRAM controller: ext-memory protocol in, SDRAM pins out.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    lanes : 4, 8, 16 or 32
        Bytes per ext-memory word (L); a word is L/2 columns of 16 bits.
    clk_hz : int
        Clock frequency: turns the timing in ns into cycles (rounded up).
    cas_latency : 2 or 3
        CAS latency programmed into the mode register (the part allows 2 up to 133 MHz).
    rows, cols, banks : int
        Geometry, powers of two (default 8192, 512, 4: 32 MB); ``cols`` ≤ 1024 (A10 is the
        precharge-all bit) and a multiple of L/2.
    timing : dict, optional
        Overrides of :data:`AS4C32M16SB` (ns; ``tMRD`` in cycles; ``tREFI`` the average
        refresh interval).
    init_us : float
        Power-up pause before the first command (200 µs for the part; less only in tests).
    init_refresh : int
        AUTO REFRESH commands in the initialization (the data sheet asks for 8).

    Ports
    -----
    bus : In(mem_signature(lanes))
        Requests in, read responses out (in order), as ``hw.extmem.BlockRamMemory``.
    sdram : Out(sdram_pins_signature(...))
        The chip's pins (registered outputs; read data sampled into a register).
    ready : Out(1)
        High once the initialization is done (requests wait until then).

    Clocking: the chip's clock is the inverted system clock (``hw.board.BoardPins``), so the
    chip samples a command half a cycle after the controller registered it and drives READ
    data CL − ½ cycles after that, valid around the system clock edge CL cycles after the
    command was registered: the controller samples DQ into a register at that edge. The
    simulation models (tb/sdram_model.py, tb/verilator/sdram_model.h) follow this timing.
    """

    #: Words of the response FIFO (credits: reads are taken only while it has room for them).
    RSP_DEPTH = 4

    def __init__(self, *, lanes, clk_hz, cas_latency=2, rows=8192, cols=512, banks=4,
                 timing=None, init_us=200.0, init_refresh=8):
        if lanes not in LANE_CHOICES:
            raise ValueError(f"lanes must be one of {', '.join(map(str, LANE_CHOICES))}; not {lanes!r}")
        self._lanes = lanes
        self._clk_hz = check_int("clk_hz", clk_hz, lo=1_000_000, hi=200_000_000)
        if cas_latency not in (2, 3):
            raise ValueError(f"cas_latency must be 2 or 3, not {cas_latency!r}")
        self._cl = cas_latency
        self._rows = _pow2("rows", rows, 2, 1 << 13)
        self._cols = _pow2("cols", cols, lanes // 2, 1024)
        self._banks = _pow2("banks", banks, 1, 4)
        t = dict(AS4C32M16SB)
        unknown = set(timing or {}) - set(t)
        if unknown:
            raise ValueError(f"unknown timing parameter(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(t)}")
        t.update(timing or {})
        if isinstance(init_us, bool) or not isinstance(init_us, (int, float)) or init_us < 0:
            raise ValueError(f"init_us must be a non-negative number, not {init_us!r}")
        self._init_refresh = check_int("init_refresh", init_refresh, lo=1, hi=64)

        def cyc(ns):
            return max(1, math.ceil(ns * clk_hz / 1e9 - 1e-9))

        self._t = {k: (int(v) if k == "tMRD" else cyc(v)) for k, v in t.items() if k != "tREFI"}
        self._t["tRRD"] = max(self._t["tRRD"], 1)
        if self._t["tRCD"] < self._t["tRRD"]:
            # After an ACTIVE the controller waits tRCD before any command: that covers tRRD.
            self._t["tRCD"] = self._t["tRRD"]
        self._refi = int(t["tREFI"] * clk_hz / 1e9)
        self._beats = lanes // 2
        if self._refi < 2 * (self._beats + sum(self._t[k] for k in ("tRP", "tRFC", "tRAS"))):
            raise ValueError(f"tREFI is {self._refi} cycles at {clk_hz} Hz: too short for the "
                             f"refresh and a word between refreshes")
        self._init_cycles = max(1, math.ceil(init_us * clk_hz / 1e6))
        self._abits = max(_log2(self._rows), 11)
        super().__init__({
            "bus": In(mem_signature(lanes)),
            "sdram": Out(sdram_pins_signature(addr_bits=self._abits, ba_bits=max(1, _log2(self._banks)))),
            "ready": Out(1),
        })

    lanes = property(lambda self: self._lanes)
    clk_hz = property(lambda self: self._clk_hz)
    cas_latency = property(lambda self: self._cl)
    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    banks = property(lambda self: self._banks)
    init_refresh = property(lambda self: self._init_refresh)
    init_cycles = property(lambda self: self._init_cycles, doc="Power-up pause in cycles.")
    refresh_interval = property(lambda self: self._refi, doc="Cycles between AUTO REFRESHes.")
    timing_cycles = property(lambda self: dict(self._t), doc="tRCD, tRP, … in clock cycles.")
    words_per_row = property(lambda self: self._cols // self._beats)

    @property
    def depth(self):
        """Words of L bytes the chip holds (addresses wrap there)."""
        return self.words_per_row * self._banks * self._rows

    @property
    def mode_register(self):
        """Burst length 1, sequential, CAS latency, programmed-burst writes."""
        return self._cl << 4

    def split(self, addr):
        """(bank, row, first column) of word address ``addr`` (the controller's mapping)."""
        wpr = self.words_per_row
        addr %= self.depth
        return (addr // wpr) % self._banks, addr // (wpr * self._banks), (addr % wpr) * self._beats

    def elaborate(self, platform):
        m = Module()
        L, B, CL = self._lanes, self._beats, self._cl
        T = self._t
        nb = self._banks
        cmd, rsp, pins = self.bus.cmd, self.bus.rsp, self.sdram
        cw, bb, rb = _log2(self.words_per_row), _log2(nb), _log2(self._rows)

        # ---- command pins (registered; NOP unless a branch below issues something)
        ras, cas, we_ = Signal(), Signal(), Signal()
        m.d.comb += [pins.clk_en.eq(1), pins.cs.eq(1), pins.ras.eq(ras), pins.cas.eq(cas),
                     pins.we.eq(we_)]
        m.d.sync += [ras.eq(0), cas.eq(0), we_.eq(0), pins.dq_oe.eq(0), pins.dqm.eq(0)]

        def issue(c, *, ba=None, a=None):
            out = [ras.eq(c[0]), cas.eq(c[1]), we_.eq(c[2])]
            if ba is not None:
                out.append(pins.ba.eq(ba))
            if a is not None:
                out.append(pins.a.eq(a))
            return out

        # ---- timers ("cycles until allowed"; a command loads t − 1)
        def timer(name, bits_for):
            return Signal(range(max(2, bits_for + 1)), name=name)

        # The power-up pause is the first wait.
        wait = Signal(range(max(T.values()) + self._init_cycles + 1), init=self._init_cycles - 1)
        wr_t = timer("wr_t", T["tWR"])
        ras_t = [timer(f"ras_t{b}", T["tRAS"]) for b in range(nb)]
        rc_t = [timer(f"rc_t{b}", T["tRC"]) for b in range(nb)]
        for s in [wait, wr_t, *ras_t, *rc_t]:
            with m.If(s.any()):
                m.d.sync += s.eq(s - 1)

        open_ = Signal(nb)
        row = [Signal(rb, name=f"row{b}") for b in range(nb)]

        # ---- refresh: one owed every tREFI cycles, served between words
        refi = Signal(range(self._refi + 1))
        owed = Signal(4)
        owe = Signal()
        paid = Signal()
        with m.If(self.ready):
            with m.If(is_zero(refi)):
                m.d.sync += refi.eq(self._refi - 1)
                m.d.comb += owe.eq(1)
            with m.Else():
                m.d.sync += refi.eq(refi - 1)
        with m.If(owe & ~paid):
            m.d.sync += owed.eq(owed + 1)
        with m.Elif(paid & ~owe):
            m.d.sync += owed.eq(owed - 1)

        # ---- read data path: a token per READ beat; the beat is in dq_reg CL cycles after the
        # READ was registered, when the token reaches pipe[CL]
        pipe = Signal(CL + 1)
        read_beat = Signal()
        dq_reg = Signal(16)
        m.d.sync += [pipe.eq(Cat(read_beat, pipe[:-1])), dq_reg.eq(pins.dq_i)]
        # No WRITE while read data is due: it would truncate the READ and collide on DQ.
        rd_busy = pipe.any()
        m.submodules.rsp_fifo = q = fifo.SyncFIFO(width=8 * L, depth=self.RSP_DEPTH)
        asm = Signal(8 * L)
        n_in = Signal(range(B))
        inflight = Signal(range(self.RSP_DEPTH + 1))
        accepted_read = Signal()
        push = Signal()
        with m.If(pipe[CL]):
            m.d.sync += asm.eq(Cat(asm[16:], dq_reg))
            with m.If(n_in == B - 1):
                m.d.sync += n_in.eq(0)
                m.d.comb += push.eq(1)
            with m.Else():
                m.d.sync += n_in.eq(n_in + 1)
        m.d.comb += [q.w_en.eq(push), q.w_data.eq(Cat(asm[16:], dq_reg)),
                     rsp.valid.eq(q.r_rdy), rsp.payload.data.eq(q.r_data), q.r_en.eq(rsp.ready)]
        with m.If(accepted_read & ~push):
            m.d.sync += inflight.eq(inflight + 1)
        with m.Elif(push & ~accepted_read):
            m.d.sync += inflight.eq(inflight - 1)
        credit = Signal()
        m.d.comb += credit.eq(q.level + inflight < self.RSP_DEPTH)

        # ---- the request being served (latched from cmd)
        have = Signal()
        r_addr = Signal(32)
        r_we = Signal()
        r_data = Signal(8 * L)
        r_mask = Signal(L)
        beat = Signal(range(B))
        in_rw = Signal()
        last = Signal()
        m.d.comb += last.eq(in_rw & (beat == B - 1))
        m.d.comb += cmd.ready.eq(self.ready & credit & (~have | last))

        bank = r_addr[cw:cw + bb] if bb else Const(0, 1)
        r_row = r_addr[cw + bb:cw + bb + rb]
        col0 = Cat(Const(0, _log2(B)), r_addr[:cw])     # first column of the word

        def bank_is(b):
            return _eq(bank, b) if bb else Const(1, 1)

        hit = Signal()
        is_open = Signal()
        ras_ok = Signal()
        rc_ok = Signal()
        for b in range(nb):
            with m.If(bank_is(b)):
                m.d.comb += [is_open.eq(open_[b]), hit.eq(open_[b] & (row[b] == r_row)),
                             ras_ok.eq(is_zero(ras_t[b])), rc_ok.eq(is_zero(rc_t[b]))]
        all_ras_ok = Cat(*[is_zero(t) for t in ras_t]).all()
        all_rc_ok = Cat(*[is_zero(t) for t in rc_t]).all()

        def beat_cmds(col):
            # r_data/r_mask shift by one beat per column command; the beat's bytes are at the bottom.
            return [
                ras.eq(0), cas.eq(1), we_.eq(r_we), pins.ba.eq(bank), pins.a.eq(col),
                pins.dq_o.eq(r_data[:16]), pins.dq_oe.eq(r_we), pins.dqm.eq(~r_mask[:2] & r_we.replicate(2)),
                r_data.eq(r_data >> 16), r_mask.eq(r_mask >> 2),
            ]

        # ---- the state machine: init, then idle / row management / column bursts
        init_done = self.ready
        step = Signal(range(self._init_refresh + 3))
        with m.If(~init_done):
            # step 0: the power-up pause; 1: PRECHARGE ALL; 2…: AUTO REFRESH × n; then MODE.
            with m.If(wait.any()):
                pass
            with m.Elif(_eq(step, 0)):
                m.d.sync += step.eq(1)
            with m.Elif(_eq(step, 1)):
                m.d.sync += issue(Cmd.PRECHARGE, a=1 << 10) + [wait.eq(T["tRP"] - 1), step.eq(2)]
            with m.Elif(step < 2 + self._init_refresh):
                m.d.sync += issue(Cmd.REFRESH) + [wait.eq(T["tRFC"] - 1), step.eq(step + 1)]
            with m.Else():
                m.d.sync += issue(Cmd.MODE, ba=0, a=self.mode_register) + [
                    wait.eq(T["tMRD"] - 1), init_done.eq(1)]
        with m.Elif(in_rw):
            m.d.sync += beat_cmds(col0 | beat)
            m.d.comb += read_beat.eq(~r_we)
            with m.If(r_we):
                m.d.sync += wr_t.eq(T["tWR"] - 1)
            with m.If(beat == B - 1):
                m.d.sync += [in_rw.eq(0), beat.eq(0)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        with m.Elif(wait.any()):
            pass
        with m.Elif(owed.any()):
            with m.If(open_.any()):
                with m.If(all_ras_ok & is_zero(wr_t)):
                    m.d.sync += issue(Cmd.PRECHARGE, a=1 << 10) + [open_.eq(0), wait.eq(T["tRP"] - 1)]
            with m.Elif(all_rc_ok):
                m.d.sync += issue(Cmd.REFRESH) + [wait.eq(T["tRFC"] - 1)]
                m.d.comb += paid.eq(1)
        with m.Elif(have):
            with m.If(hit):
                with m.If(~(r_we & rd_busy)):
                    m.d.sync += beat_cmds(col0) + [in_rw.eq(1), beat.eq(1)]
                    m.d.comb += read_beat.eq(~r_we)
                    with m.If(r_we):
                        m.d.sync += wr_t.eq(T["tWR"] - 1)
            with m.Elif(is_open):
                with m.If(ras_ok & is_zero(wr_t)):
                    m.d.sync += issue(Cmd.PRECHARGE, ba=bank, a=0) + [wait.eq(T["tRP"] - 1)]
                    for b in range(nb):
                        with m.If(bank_is(b)):
                            m.d.sync += open_[b].eq(0)
            with m.Elif(rc_ok):
                m.d.sync += issue(Cmd.ACTIVE, ba=bank, a=r_row) + [wait.eq(T["tRCD"] - 1)]
                for b in range(nb):
                    with m.If(bank_is(b)):
                        m.d.sync += [open_[b].eq(1), row[b].eq(r_row), ras_t[b].eq(T["tRAS"] - 1),
                                     rc_t[b].eq(T["tRC"] - 1)]

        # Latch the next request (after the state machine: this assignment of r_data wins over
        # the beat shift in the cycle that ends a burst and takes the next request).
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [have.eq(1), r_addr.eq(cmd.payload.addr), r_we.eq(cmd.payload.we),
                         r_data.eq(cmd.payload.data), r_mask.eq(cmd.payload.mask)]
            m.d.comb += accepted_read.eq(~cmd.payload.we)
        with m.Elif(last):
            m.d.sync += have.eq(0)
        return m
