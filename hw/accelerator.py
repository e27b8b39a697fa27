"""The whole accelerator (controller, DMA, PE array, CSRs) and a simulation-only system around it.

docs/isa.md: instructions and host interface; docs/architecture.md: structure, timing, sizing.
"""
from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.sim import Simulator

from .array import DELTA_WORDS, MAX_PES, PEArray
from .controller import Controller
from .csr import CsrRegs, csr_bus_signature
from .dma import Dma, mem_signature
from .isa import CONFIG_NO_DELTA, Csr, ErrorCode
from .params import check_choice, check_int
from .pe import LANE_CHOICES, _log2

__all__ = ["Accelerator", "SimSystem", "run_program", "csr_read", "csr_write", "DEFAULTS"]

#: Default sizes: KWT-1 at P = 8, L = 16 (docs/architecture.md, memory sizing).
DEFAULTS = dict(lanes=16, amem_depth=8192, cmem_depth=4096, bbuf_depth=4096, pbuf_depth=64,
                imem_depth=256)

#: (min, max) of each depth; all must be powers of two.
DEPTH_LIMITS = {
    "amem_depth": (lambda L: 2 * L, 1 << 16),
    "cmem_depth": (lambda L: L, 1 << 16),
    "bbuf_depth": (lambda L: 16, 1 << 16),
    "pbuf_depth": (lambda L: 1, 1 << 14),
    "imem_depth": (lambda L: 2, 1 << 16),
}


def check_params(*, pes, lanes, **depths):
    """Check the accelerator parameters; raise ``TypeError``/``ValueError`` with a one-line
    message naming the parameter."""
    check_int("pes", pes, lo=1, hi=MAX_PES)
    check_choice("lanes", lanes, LANE_CHOICES)
    for name, (lo, hi) in DEPTH_LIMITS.items():
        v = depths[name]
        check_int(name, v, lo=lo(lanes), hi=hi)
        if v & (v - 1):
            raise ValueError(f"{name} must be a power of two, not {v}")


class Accelerator(wiring.Component):
    """The PE-array accelerator: P PEs of L lanes, controller, DMA engine and CSRs.

    Parameters (keyword-only, checked; read-only properties of the same names)
    ------------------------------------------------------------------------
    pes : int
        P, processing elements, 1…64.
    lanes : 4, 8, 16 or 32
        L, lanes per PE; also the ext-memory word width in bytes.
    amem_depth : int
        int9 elements of A per PE, a power of two, 2L…65536.
    cmem_depth : int
        int32 results per PE, a power of two, L…65536.
    bbuf_depth : int
        BBUF words of L bytes, a power of two, 16…65536.
    pbuf_depth : int
        PBUF column tiles (bias, m, sh for L columns), a power of two, 1…16384.
    imem_depth : int
        Instructions, a power of two, 2…65536.
    delta : bool
        With the delta datapath (DMATMUL, docs/delta.md; default). ``False`` leaves it out
        (smaller: the FPGA builds' ``--no-delta``): a DMATMUL then stops the program with
        ILLEGAL_OPCODE, and CONFIG bit 31 (``hw.isa.CONFIG_NO_DELTA``) is set.

    Ports
    -----
    bus : In(csr_bus_signature())
        Control/status registers (``hw.isa.Csr``), Wishbone-classic subset: ``cyc``, ``stb``,
        ``we``, ``adr`` (8 bits), ``dat_w``, ``dat_r`` (32 bits), ``ack`` one cycle after
        ``cyc & stb``.
    mem : Out(mem_signature(L))
        Ext memory: ``mem.cmd`` requests ``{addr: 32, we: 1, data: 8L, mask: L}`` (word
        addresses), ``mem.rsp`` responses ``{data: 8L}``, one per read, in order, any latency.

    Verilog port names: ``bus__cyc`` … ``bus__ack``, ``mem__cmd__valid``, ``mem__cmd__ready``,
    ``mem__cmd__payload``, ``mem__rsp__valid``, ``mem__rsp__ready``, ``mem__rsp__payload``,
    plus ``clk`` and ``rst`` (docs/architecture.md).

    Timing: a MATMUL of M×K·K×N runs ``⌈M/P⌉·⌈N/L⌉·max(K, L)`` cycles of beats plus a
    constant (docs/architecture.md, cost model).
    """

    def __init__(self, *, pes, lanes=DEFAULTS["lanes"], amem_depth=DEFAULTS["amem_depth"],
                 cmem_depth=DEFAULTS["cmem_depth"], bbuf_depth=DEFAULTS["bbuf_depth"],
                 pbuf_depth=DEFAULTS["pbuf_depth"], imem_depth=DEFAULTS["imem_depth"],
                 delta_k=None, delta=True):
        check_params(pes=pes, lanes=lanes, amem_depth=amem_depth, cmem_depth=cmem_depth,
                     bbuf_depth=bbuf_depth, pbuf_depth=pbuf_depth, imem_depth=imem_depth)
        self._pes, self._lanes = pes, lanes
        if delta_k is None:
            delta_k = DELTA_WORDS * lanes
        self._delta_k = check_int("delta_k", delta_k, lo=1, hi=1024)
        if not isinstance(delta, bool):
            raise TypeError(f"delta must be True or False, not {delta!r}")
        self._delta = delta
        self._amem_depth, self._cmem_depth = amem_depth, cmem_depth
        self._bbuf_depth, self._pbuf_depth, self._imem_depth = bbuf_depth, pbuf_depth, imem_depth
        super().__init__({
            "bus": In(csr_bus_signature()),
            "mem": Out(mem_signature(lanes)),
        })

    pes = property(lambda self: self._pes)
    lanes = property(lambda self: self._lanes)
    amem_depth = property(lambda self: self._amem_depth)
    cmem_depth = property(lambda self: self._cmem_depth)
    bbuf_depth = property(lambda self: self._bbuf_depth)
    pbuf_depth = property(lambda self: self._pbuf_depth)
    imem_depth = property(lambda self: self._imem_depth)
    delta_k = property(lambda self: self._delta_k)
    delta = property(lambda self: self._delta)

    @property
    def config_word(self):
        """The CONFIG register: P | L << 8 | log2(AMEM depth) << 16 | log2(BBUF depth) << 24,
        bit 31 set without the delta datapath (``delta=False``)."""
        return (self._pes | self._lanes << 8 | _log2(self._amem_depth) << 16
                | _log2(self._bbuf_depth) << 24 | (0 if self._delta else CONFIG_NO_DELTA))

    def elaborate(self, platform):
        m = Module()
        P, L = self._pes, self._lanes
        m.submodules.csr = csr = CsrRegs(config=self.config_word)
        m.submodules.ctrl = ctrl = Controller(
            pes=P, lanes=L, amem_depth=self._amem_depth, cmem_depth=self._cmem_depth,
            bbuf_depth=self._bbuf_depth, pbuf_depth=self._pbuf_depth, imem_depth=self._imem_depth,
            delta_k=self._delta_k, delta=self._delta)
        m.submodules.dma = dma = Dma(pes=P, lanes=L, imem_depth=self._imem_depth)
        m.submodules.array = array = PEArray(
            pes=P, lanes=L, amem_depth=self._amem_depth, cmem_depth=self._cmem_depth,
            bbuf_depth=self._bbuf_depth, pbuf_depth=self._pbuf_depth, delta_k=self._delta_k,
            delta=self._delta)

        connect(m, flipped(self.bus), csr.bus)
        connect(m, flipped(self.mem), dma.mem)
        connect(m, ctrl.dma, dma.cmd)
        connect(m, ctrl.array, array.cmd)
        connect(m, dma.bbuf_w, array.bbuf_w)
        connect(m, dma.pbuf_w, array.pbuf_w)
        connect(m, dma.amem_w, array.amem_w)
        connect(m, dma.cmem_w, array.cmem_w)
        connect(m, dma.table_w, array.table_w)
        connect(m, ctrl.row, array.row_cmd)
        m.d.comb += [
            csr.busy.eq(ctrl.busy), csr.halted.eq(ctrl.halted), csr.error.eq(ctrl.error),
            csr.code.eq(ctrl.code), csr.pc.eq(ctrl.pc),
            csr.cycles.eq(ctrl.cycles), csr.mac_cycles.eq(ctrl.mac_cycles),
            csr.stall_dma.eq(ctrl.stall_dma), csr.stall_wb.eq(ctrl.stall_wb),
            csr.instret.eq(ctrl.instret), csr.array_cycles.eq(ctrl.array_cycles),
            ctrl.start.eq(csr.start), ctrl.clear.eq(csr.clear),
            ctrl.prog_base.eq(csr.prog_base), ctrl.prog_len.eq(csr.prog_len),
            ctrl.dma_idle.eq(dma.idle), ctrl.dma_loads.eq(dma.loads),
            ctrl.array_active.eq(array.active), ctrl.array_busy.eq(array.busy),
            ctrl.array_mac.eq(array.mac), ctrl.array_stall_wb.eq(array.stall_wb),
            ctrl.imem_w_en.eq(dma.imem_w_en), ctrl.imem_w_addr.eq(dma.imem_w_addr),
            ctrl.imem_w_data.eq(dma.imem_w_data),
            dma.mm_done.eq(array.mm_done), dma.cmem_r_free.eq(array.cmem_r_free),
            array.cmem_r_pe.eq(dma.cmem_r_pe), array.cmem_r_addr.eq(dma.cmem_r_addr),
            dma.cmem_rdata.eq(array.cmem_rdata),
        ]
        return m


class SimSystem(wiring.Component):
    """Simulation-only: an :class:`Accelerator` (``.accel``) and its ext memory (``.ext``).

    The memory is an Amaranth ``Memory`` of ``ext_depth`` words of 8L bits (addresses wrap),
    initialised from ``ext_init``; a testbench reads or writes it with
    ``ctx.get(sys.ext.data[i])`` / ``ctx.set(...)``. Reads are answered ``latency`` cycles
    (≥ 1) after acceptance; with ``stall`` = s percent (0…90) the memory drops ``cmd.ready``
    and ``rsp.valid`` in ≈ s % of cycles, pseudo-randomly (an LFSR: no Python per cycle).

    Parameters (keyword-only): ``ext_depth`` (power of two), ``ext_init``, ``latency``,
    ``stall``, and every :class:`Accelerator` parameter.

    Ports
    -----
    bus : In(csr_bus_signature())
        The accelerator's CSR bus.
    """

    def __init__(self, *, ext_depth, ext_init=(), latency=3, stall=0, **accel_kwargs):
        check_int("ext_depth", ext_depth, lo=2, hi=1 << 24)
        if ext_depth & (ext_depth - 1):
            raise ValueError(f"ext_depth must be a power of two, not {ext_depth}")
        self._latency = check_int("latency", latency, lo=1, hi=64)
        if isinstance(stall, bool) or not isinstance(stall, (int, float)) or not 0 <= stall <= 90:
            raise ValueError(f"stall must be a percentage in [0, 90], not {stall!r}")
        self._stall = stall
        self.accel = Accelerator(**accel_kwargs)
        L = self.accel.lanes
        self.ext = Memory(shape=unsigned(8 * L), depth=ext_depth, init=list(ext_init))
        super().__init__({"bus": In(csr_bus_signature())})

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = acc = self.accel
        m.submodules.ext = ext = self.ext
        L = acc.lanes
        connect(m, flipped(self.bus), acc.bus)
        cmd, rsp = acc.mem.cmd, acc.mem.rsp
        abits = _log2(ext.depth)
        wr = ext.write_port(granularity=8)
        rd = ext.read_port()

        # Pseudo-random gates (16-bit Fibonacci LFSR).
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq((lfsr << 1) | (lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]))
        thr = int(self._stall * 256 / 100)
        gate_cmd = lfsr[:8] >= thr
        gate_rsp = lfsr[8:] >= thr

        lat = self._latency
        depth = lat + 4
        m.submodules.rfifo = rfifo = fifo.SyncFIFOBuffered(width=8 * L, depth=depth)
        inflight = Signal(range(depth + 2))
        pipe_v = [Signal(name=f"pv{k}") for k in range(lat)]
        pipe_d = [Signal(8 * L, name=f"pd{k}") for k in range(lat)]
        space = (rfifo.level + inflight) < depth
        m.d.comb += cmd.ready.eq(gate_cmd & space)
        take = cmd.valid & cmd.ready
        is_read = take & ~cmd.payload.we
        m.d.comb += [
            rd.addr.eq(cmd.payload.addr[:abits]), rd.en.eq(is_read),
            wr.addr.eq(cmd.payload.addr[:abits]), wr.data.eq(cmd.payload.data),
            wr.en.eq(Mux(take & cmd.payload.we, cmd.payload.mask, 0)),
        ]
        m.d.sync += pipe_v[0].eq(is_read)
        m.d.comb += pipe_d[0].eq(rd.data)
        for k in range(1, lat):
            m.d.sync += [pipe_v[k].eq(pipe_v[k - 1]), pipe_d[k].eq(pipe_d[k - 1])]
        m.d.comb += [rfifo.w_en.eq(pipe_v[-1]), rfifo.w_data.eq(pipe_d[-1])]
        m.d.sync += inflight.eq(inflight + is_read - pipe_v[-1])
        m.d.comb += [
            rsp.valid.eq(rfifo.r_rdy & gate_rsp), rsp.payload.data.eq(rfifo.r_data),
            rfifo.r_en.eq(rsp.ready & gate_rsp),
        ]
        return m


async def csr_write(ctx, bus, addr, value):
    """One write on the CSR bus (Amaranth testbench)."""
    ctx.set(bus.cyc, 1); ctx.set(bus.stb, 1); ctx.set(bus.we, 1)
    ctx.set(bus.adr, int(addr)); ctx.set(bus.dat_w, int(value))
    await ctx.tick().until(bus.ack)
    ctx.set(bus.cyc, 0); ctx.set(bus.stb, 0); ctx.set(bus.we, 0)


async def csr_read(ctx, bus, addr):
    """One read on the CSR bus (Amaranth testbench); returns the value."""
    ctx.set(bus.cyc, 1); ctx.set(bus.stb, 1); ctx.set(bus.we, 0); ctx.set(bus.adr, int(addr))
    value, = await ctx.tick().sample(bus.dat_r).until(bus.ack)
    ctx.set(bus.cyc, 0); ctx.set(bus.stb, 0)
    return int(value)


COUNTERS = ("CYCLES", "MAC_CYCLES", "STALL_DMA", "STALL_WB", "INSTRET", "ARRAY_CYCLES")


def run_program(image, *, prog_base, prog_len, max_cycles=200_000, ext_depth=None, latency=3,
                stall=0, poll=32, vcd=None, **accel_kwargs):
    """Run a program on :class:`SimSystem` in the Amaranth simulator.

    Parameters
    ----------
    image : sequence of int
        Initial ext memory, one word (8L bits, byte b in bits 8b…8b+7) per entry.
    prog_base, prog_len : int
        Written to PROG_BASE and PROG_LEN before CTRL.start.
    max_cycles : int
        Watchdog: raise ``TimeoutError`` if STATUS.busy has not dropped by then.
    ext_depth : int, optional
        Ext-memory words (default: the next power of two ≥ ``len(image)``, at least 16).

    Returns
    -------
    dict with ``mem`` (list of int: the final ext memory), ``status``, ``halted``, ``error``,
    ``code`` (``hw.isa.ErrorCode``), ``pc``, ``config``, ``id`` and the counters ``cycles``,
    ``mac_cycles``, ``stall_dma``, ``stall_wb``, ``instret``, ``array_cycles``, and ``sim_cycles`` (cycles from
    the start write until busy dropped, as seen by the poller).
    """
    image = [int(x) for x in image]
    if ext_depth is None:
        ext_depth = max(16, 1 << (max(1, len(image)) - 1).bit_length())
    sys = SimSystem(ext_depth=ext_depth, ext_init=image, latency=latency, stall=stall,
                    **accel_kwargs)
    result = {}

    async def bench(ctx):
        bus = sys.bus
        await csr_write(ctx, bus, Csr.PROG_BASE, prog_base)
        await csr_write(ctx, bus, Csr.PROG_LEN, prog_len)
        await csr_write(ctx, bus, Csr.CTRL, 1)
        waited = 0
        while True:
            await ctx.tick().repeat(poll)
            waited += poll
            status = await csr_read(ctx, bus, Csr.STATUS)
            waited += 2
            if not status & 1:
                break
            if waited > max_cycles:
                raise TimeoutError(f"accelerator still busy after {waited} cycles "
                                   f"(STATUS {status:#x})")
        result["sim_cycles"] = waited
        result["status"] = status
        result["halted"] = bool(status & 2)
        result["error"] = bool(status & 4)
        result["code"] = ErrorCode((status >> 8) & 0xFF)
        result["pc"] = await csr_read(ctx, bus, Csr.PC)
        result["id"] = await csr_read(ctx, bus, Csr.ID)
        result["config"] = await csr_read(ctx, bus, Csr.CONFIG)
        for name in COUNTERS:
            result[name.lower()] = await csr_read(ctx, bus, Csr[name])
        result["mem"] = [int(ctx.get(sys.ext.data[i])) for i in range(ext_depth)]

    sim = Simulator(sys)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return result
