"""Board top: the accelerator, on-chip ext memory and a UART host link (docs/board.md).

:class:`BoardTop` is platform-independent (its UART pins are plain ports, so it simulates in
Amaranth); :class:`BoardPins` puts it on an ``amaranth_boards`` platform (``hw/build.py``).

::

    rx ─▶ UartRx ─▶ FIFO ─▶ HostBridge ─▶ UartTx ─▶ tx
                              │    │ csr (Wishbone subset)
                              │    └──────────────────────▶ Accelerator.bus
                              │ mem                              │ mem
                              ▼                                  ▼
                           MemArbiter (round robin, in-order responses)
                              │ target
                              ▼
                           BlockRamMemory, or SdramController ─▶ sdram pins
"""
import enum

from amaranth.build import ResourceError
from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Elaboratable, Module, ResetSignal, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from .accelerator import DEFAULTS, DEPTH_LIMITS, Accelerator, check_params
from .csr import csr_bus_signature
from .dma import mem_signature
from .extmem import BlockRamMemory, MemArbiter
from .sdram import SdramController, sdram_pins_signature
from .params import check_int
from .pll import Ecp5Pll, ecp5_pll
from .pe import LANE_CHOICES, _log2, is_zero
from .uart import UartRx, UartTx, uart_divisor

__all__ = ["HostCmd", "ACK", "NAK", "INFO_MAGIC", "PROTOCOL_VERSION", "HEADER_BYTES", "HostBridge",
           "BoardTop", "BoardPins"]

PROTOCOL_VERSION = 1
INFO_MAGIC = 0x4B            # 'K', first byte of the INFO reply
ACK = 0xAA                   # reply to CSR_WRITE and MEM_WRITE
NAK = 0x15                   # reply to an unknown command byte


class HostCmd(enum.IntEnum):
    """Command bytes of the host link (docs/board.md)."""
    INFO = 0x01         # → 'K', version, L, log2(memory words)
    CSR_READ = 0x02     # adr:1 → value:4
    CSR_WRITE = 0x03    # adr:1 value:4 → ACK
    MEM_READ = 0x04     # addr:4 count-1:2 → count·L bytes
    MEM_WRITE = 0x05    # addr:4 count-1:2 data:count·L → ACK


#: Bytes after the command byte, before any data.
HEADER_BYTES = {HostCmd.INFO: 0, HostCmd.CSR_READ: 1, HostCmd.CSR_WRITE: 5, HostCmd.MEM_READ: 6,
                HostCmd.MEM_WRITE: 6}


def _eq(sig, k):
    """``sig == k``; for k = 0 written so that Verilator's lint does not see ``!sig``."""
    return is_zero(sig) if k == 0 else sig == k


class _BridgeState(enum.IntEnum):
    IDLE = 0
    HEADER = 1
    EXEC = 2
    CSR = 3
    WDATA = 4
    WRITE = 5
    READ = 6
    READ_RSP = 7
    SEND = 8             # the final Else: keep it last


class HostBridge(wiring.Component):
    """Executes host-link commands (docs/board.md) on the CSR bus and an ext-memory port.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    lanes : 4, 8, 16 or 32
        Ext-memory word width in bytes (the accelerator's L).
    mem_depth : int
        Words of the memory behind ``mem`` (a power of two; only reported by INFO).
    timeout : int
        Clock cycles a command may wait for its next byte before the bridge drops it and
        waits for a new command byte (resynchronization after a lost byte); 0 waits forever.

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes from the host (UART receiver).
    o : Out(stream.Signature(8))
        Bytes to the host (UART transmitter).
    csr : Out(csr_bus_signature())
        Initiator of the accelerator's CSR bus.
    mem : Out(mem_signature(lanes))
        Initiator on the ext memory (through the arbiter).

    One command at a time: the bridge does not read ``i`` while it executes a command or sends
    its reply (the host waits for the reply; a FIFO in front absorbs what arrives meanwhile).
    MEM_READ reads one word, sends its L bytes, then reads the next; MEM_WRITE collects L bytes,
    writes the word (all byte-mask bits set), and answers ACK after the last word was taken by
    the memory. Addresses wrap at 2³².
    """

    def __init__(self, *, lanes, mem_depth, timeout=0):
        if lanes not in LANE_CHOICES:
            raise ValueError(f"lanes must be one of {', '.join(map(str, LANE_CHOICES))}; not {lanes!r}")
        self._lanes = lanes
        check_int("mem_depth", mem_depth, lo=1, hi=1 << 32)
        if mem_depth & (mem_depth - 1):
            raise ValueError(f"mem_depth must be a power of two, not {mem_depth}")
        self._mem_depth = mem_depth
        self._timeout = check_int("timeout", timeout, lo=0, hi=1 << 32)
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "csr": Out(csr_bus_signature()),
            "mem": Out(mem_signature(lanes)),
        })

    lanes = property(lambda self: self._lanes)
    mem_depth = property(lambda self: self._mem_depth)
    timeout = property(lambda self: self._timeout)

    @property
    def info_word(self):
        """The INFO reply as a little-endian 32-bit value."""
        return (INFO_MAGIC | PROTOCOL_VERSION << 8 | self._lanes << 16
                | _log2(self._mem_depth) << 24)

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        S = _BridgeState
        state = Signal(S)
        cmd = Signal(8)
        hdr = Signal(48)                 # little-endian fields, byte n at bits 8n…8n+7
        n_hdr = Signal(range(7))
        need = Signal(range(7))
        addr = Signal(32)
        left = Signal(16)                # words after the current one
        wbuf = Signal(8 * L)
        n_byte = Signal(range(max(L, 4) + 1))
        obuf = Signal(max(8 * L, 32))
        reading = Signal()

        # Inter-byte timeout while a command waits for more bytes from the host.
        waiting = Signal()
        expired = Signal()
        if self._timeout:
            quiet = Signal(range(self._timeout + 1))
            with m.If(~waiting | (self.i.valid & self.i.ready)):
                m.d.sync += quiet.eq(0)
            with m.Elif(~expired):
                m.d.sync += quiet.eq(quiet + 1)
            m.d.comb += expired.eq(quiet == self._timeout)

        bus, mc, mr = self.csr, self.mem.cmd, self.mem.rsp
        m.d.comb += [
            bus.adr.eq(hdr[0:8]), bus.dat_w.eq(hdr[8:40]), bus.we.eq(cmd == HostCmd.CSR_WRITE),
            mc.payload.addr.eq(addr), mc.payload.data.eq(wbuf),
            mc.payload.mask.eq(mc.payload.we.replicate(L)),
            self.o.payload.eq(obuf[:8]),
        ]

        def send(value, nbytes):
            return [obuf.eq(value), n_byte.eq(nbytes), state.eq(S.SEND)]

        def at(st):
            return _eq(state, st)

        # If/Elif chains rather than m.FSM / m.Switch: the Verilog then has no incomplete case
        # statements (Verilator lint, as everywhere in hw/).
        with m.If(at(S.IDLE)):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                byte = self.i.payload
                m.d.sync += [cmd.eq(byte), n_hdr.eq(0)]
                with m.If(byte == HostCmd.INFO):
                    m.d.sync += send(self.info_word, 4)
                for c in HostCmd:
                    if HEADER_BYTES[c]:
                        with m.Elif(byte == c):
                            m.d.sync += [need.eq(HEADER_BYTES[c]), state.eq(S.HEADER)]
                with m.Else():
                    m.d.sync += send(NAK, 1)

        with m.Elif(at(S.HEADER)):
            m.d.comb += [self.i.ready.eq(1), waiting.eq(1)]
            with m.If(self.i.valid):
                # Byte n_hdr of the header: a decoder, not a variable-offset word_select.
                for k in range(6):
                    with m.If(_eq(n_hdr, k)):
                        m.d.sync += hdr[8 * k:8 * k + 8].eq(self.i.payload)
                m.d.sync += n_hdr.eq(n_hdr + 1)
                with m.If(n_hdr + 1 == need):
                    m.d.sync += state.eq(S.EXEC)
            with m.Elif(expired):
                m.d.sync += state.eq(S.IDLE)

        with m.Elif(at(S.EXEC)):
            m.d.sync += [addr.eq(hdr[0:32]), left.eq(hdr[32:48]), n_byte.eq(0)]
            with m.If((cmd == HostCmd.CSR_READ) | (cmd == HostCmd.CSR_WRITE)):
                m.d.sync += state.eq(S.CSR)
            with m.Elif(cmd == HostCmd.MEM_READ):
                m.d.sync += state.eq(S.READ)
            with m.Else():
                m.d.sync += state.eq(S.WDATA)

        with m.Elif(at(S.CSR)):
            m.d.comb += [bus.cyc.eq(1), bus.stb.eq(1)]
            with m.If(bus.ack):
                with m.If(cmd == HostCmd.CSR_WRITE):
                    m.d.sync += send(ACK, 1)
                with m.Else():
                    m.d.sync += send(bus.dat_r, 4)

        with m.Elif(at(S.WDATA)):
            m.d.comb += [self.i.ready.eq(1), waiting.eq(1)]
            with m.If(self.i.valid):
                for k in range(L):
                    with m.If(_eq(n_byte, k)):
                        m.d.sync += wbuf[8 * k:8 * k + 8].eq(self.i.payload)
                m.d.sync += n_byte.eq(n_byte + 1)
                with m.If(n_byte == L - 1):
                    m.d.sync += state.eq(S.WRITE)
            with m.Elif(expired):
                m.d.sync += state.eq(S.IDLE)

        with m.Elif(at(S.WRITE)):
            m.d.comb += [mc.valid.eq(1), mc.payload.we.eq(1)]
            with m.If(mc.ready):
                m.d.sync += [addr.eq(addr + 1), left.eq(left - 1), n_byte.eq(0)]
                with m.If(is_zero(left)):
                    m.d.sync += send(ACK, 1)
                with m.Else():
                    m.d.sync += state.eq(S.WDATA)

        with m.Elif(at(S.READ)):
            m.d.comb += [mc.valid.eq(1), mc.payload.we.eq(0)]
            with m.If(mc.ready):
                m.d.sync += state.eq(S.READ_RSP)

        with m.Elif(at(S.READ_RSP)):
            m.d.comb += mr.ready.eq(1)
            with m.If(mr.valid):
                m.d.sync += [reading.eq(1), addr.eq(addr + 1)] + send(mr.payload.data, L)

        with m.Else():                   # SEND: n_byte bytes of obuf, LSB first
            m.d.comb += self.o.valid.eq(1)
            with m.If(self.o.ready):
                m.d.sync += [obuf.eq(obuf >> 8), n_byte.eq(n_byte - 1)]
                with m.If(n_byte == 1):
                    with m.If(reading & left.any()):
                        m.d.sync += [left.eq(left - 1), state.eq(S.READ)]
                    with m.Else():
                        m.d.sync += [reading.eq(0), state.eq(S.IDLE)]
        return m


class BoardTop(wiring.Component):
    """The accelerator with on-chip ext memory and a UART host link.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    clk_hz : int
        Frequency of the ``sync`` clock (sets the UART divisor and the timeout).
    baud : int
        UART bit rate (8N1); ``round(clk_hz / baud)`` ≥ 4 within 2 % (``hw.uart``).
    mem_depth : int
        Ext-memory words of L bytes in block RAM, a power of two, 16…2²⁴ (``memory="bram"``;
        with ``"sdram"`` the chip's size, given by ``sdram``, and ``mem_depth`` must be omitted).
    memory : "bram" or "sdram"
        The ext memory: on-chip :class:`hw.extmem.BlockRamMemory`, or the board's SDRAM
        through :class:`hw.sdram.SdramController` (pins on the ``sdram`` port).
    sdram : dict, optional
        Further :class:`hw.sdram.SdramController` arguments (``cas_latency``, ``rows``,
        ``cols``, ``banks``, ``timing``, ``init_us``, ``init_refresh``).
    timeout_ms : float
        A command whose next byte does not arrive within this time is dropped (docs/board.md,
        *Resynchronization*); 0 disables. Default 50 ms.
    mem_init : sequence of int, optional
        Initial ext-memory words (simulation, or a preloaded bitstream).
    pes, lanes, amem_depth, cmem_depth, bbuf_depth, pbuf_depth, imem_depth, delta :
        The :class:`hw.accelerator.Accelerator` parameters (same defaults).

    Ports
    -----
    rx : In(1, init=1)
        UART line from the host (idle high).
    tx : Out(1, init=1)
        UART line to the host.
    link_error : Out(1)
        One-cycle pulse on a UART framing error or a dropped received byte (for an LED).
    sdram : Out(hw.sdram.sdram_pins_signature(...))
        Only with ``memory="sdram"``: the SDRAM chip's pins.

    Attributes ``accel``, ``memory`` (:class:`hw.extmem.BlockRamMemory`; its ``mem`` is the
    Amaranth ``Memory`` a testbench can read with ``ctx.get(top.memory.mem.data[i])``),
    ``bridge``, ``arbiter``.
    """

    def __init__(self, *, clk_hz, baud=115_200, mem_depth=None, timeout_ms=50, mem_init=(),
                 memory="bram", sdram=None, pes, lanes=DEFAULTS["lanes"], delta=True,
                 **accel_kwargs):
        # Every argument is checked before any subcomponent exists (no half-built design).
        unknown = set(accel_kwargs) - set(DEPTH_LIMITS)
        if unknown:
            raise TypeError(f"unexpected argument(s) {', '.join(sorted(unknown))}")
        check_params(pes=pes, lanes=lanes, **{**{k: DEFAULTS[k] for k in DEPTH_LIMITS}, **accel_kwargs})
        uart_divisor(clk_hz, baud)
        if not isinstance(delta, bool):
            raise TypeError(f"delta must be True or False, not {delta!r}")
        if memory not in ("bram", "sdram"):
            raise ValueError(f"memory must be 'bram' or 'sdram', not {memory!r}")
        if memory == "bram":
            if mem_depth is None:
                raise TypeError("mem_depth is required with memory='bram'")
            check_int("mem_depth", mem_depth, lo=16, hi=1 << 24)
            if mem_depth & (mem_depth - 1):
                raise ValueError(f"mem_depth must be a power of two, not {mem_depth}")
            if sdram is not None:
                raise TypeError("sdram= applies to memory='sdram' only")
        else:
            if mem_depth is not None or tuple(mem_init):
                raise TypeError("memory='sdram' takes its size from the chip: no mem_depth, "
                                "no mem_init")
            if sdram is not None and not isinstance(sdram, dict):
                raise TypeError(f"sdram must be a dict of SdramController arguments, not {sdram!r}")
            ctrl = SdramController(lanes=lanes, clk_hz=clk_hz, **(sdram or {}))
            if ctrl.depth > 1 << 24:
                raise ValueError(f"the SDRAM holds {ctrl.depth} words; the board supports 2**24")
            mem_depth = ctrl.depth
        self._memory_kind = memory
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            raise ValueError(f"timeout_ms must be a non-negative number, not {timeout_ms!r}")
        self._timeout_ms = timeout_ms
        self.accel = Accelerator(pes=pes, lanes=lanes, delta=delta, **accel_kwargs)
        self.rx_uart = UartRx(clk_hz=clk_hz, baud=baud)
        self.tx_uart = UartTx(clk_hz=clk_hz, baud=baud)
        self.memory = (BlockRamMemory(lanes=lanes, depth=mem_depth, init=mem_init)
                       if memory == "bram" else ctrl)
        self.bridge = HostBridge(lanes=lanes, mem_depth=mem_depth,
                                 timeout=round(clk_hz * timeout_ms / 1000))
        # Initiator 0 is the accelerator, 1 the host: the order only decides the first grant.
        # The SDRAM answers a read L/2 + CL + 3 cycles after taking it: more reads in flight.
        self.arbiter = MemArbiter(lanes=lanes, initiators=2,
                                  max_reads=8 if memory == "bram" else 16)
        ports = {"rx": In(1, init=1), "tx": Out(1, init=1), "link_error": Out(1)}
        if memory == "sdram":
            ports["sdram"] = Out(sdram_pins_signature(addr_bits=len(ctrl.sdram.a),
                                                      ba_bits=len(ctrl.sdram.ba)))
        super().__init__(ports)

    clk_hz = property(lambda self: self.rx_uart.clk_hz)
    baud = property(lambda self: self.rx_uart.baud)
    divisor = property(lambda self: self.rx_uart.divisor, doc="Clock cycles per UART bit.")
    mem_depth = property(lambda self: self.memory.depth)
    memory_kind = property(lambda self: self._memory_kind, doc='"bram" or "sdram".')
    timeout_ms = property(lambda self: self._timeout_ms)
    pes = property(lambda self: self.accel.pes)
    lanes = property(lambda self: self.accel.lanes)

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = acc = self.accel
        m.submodules.rx_uart = rxu = self.rx_uart
        m.submodules.tx_uart = txu = self.tx_uart
        m.submodules.memory = mem = self.memory
        m.submodules.bridge = br = self.bridge
        m.submodules.arbiter = arb = self.arbiter
        # A cushion for bytes that arrive while the bridge waits on the memory or the CSR bus.
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=8)

        m.d.comb += [
            rxu.rx.eq(self.rx), self.tx.eq(txu.tx),
            self.link_error.eq(rxu.frame_error | rxu.overrun),
            rx_fifo.w_data.eq(rxu.o.payload), rx_fifo.w_en.eq(rxu.o.valid),
            rxu.o.ready.eq(rx_fifo.w_rdy),
            br.i.payload.eq(rx_fifo.r_data),
        ]
        # No command starts before the memory can take requests (the SDRAM's 200 µs
        # initialization after reset): a MEM_WRITE stalled behind it would overflow the FIFO.
        # The host, waiting for each reply, sends nothing else meanwhile.
        mem_ready = mem.ready if self._memory_kind == "sdram" else 1
        m.d.comb += [br.i.valid.eq(rx_fifo.r_rdy & mem_ready),
                     rx_fifo.r_en.eq(br.i.ready & mem_ready)]
        connect(m, br.o, txu.i)
        connect(m, br.csr, acc.bus)
        connect(m, acc.mem, arb.initiators[0])
        connect(m, br.mem, arb.initiators[1])
        connect(m, arb.target, mem.bus)
        if self._memory_kind == "sdram":
            connect(m, mem.sdram, wiring.flipped(self.sdram))
        return m


class BoardPins(Elaboratable):
    """Puts a :class:`BoardTop` on an ``amaranth_boards`` platform.

    Clock: the board's default clock pin (``platform.default_clk``) drives ``sync`` when
    ``top.clk_hz`` is its frequency; otherwise (ECP5 only) an EHXPLLL (:mod:`hw.pll`) makes
    ``top.clk_hz`` from it, which must be a frequency the PLL makes exactly (to the Hz, as
    ``hw.pll.ecp5_pll(…).fout_hz`` gives it: the UART divisor is computed from it). A
    power-on counter holds ``sync`` in reset for the first 2¹⁰ cycles after the PLL locked
    (the ECP5 platform's own ``sync`` has no reset, which the DSP primitives need; 40–85 µs
    also covers the iCE40 block RAMs reading 0 for ≈ 3 µs after configuration). Pins: UART 0; LED 0 heartbeat
    (≈ 1.5 Hz: clock running, bitstream loaded) and LED 1 (lit ≈ 0.1 s after a UART framing
    error or dropped byte) when the board has them. With ``memory="sdram"``: the ``sdram``
    resource (its clock the inverted system clock through a DDR output).
    """

    #: log₂ of the power-on reset length in clock cycles.
    POR_BITS = 10

    def __init__(self, top):
        if not isinstance(top, BoardTop):
            raise TypeError(f"top must be a BoardTop, not {top!r}")
        self.top = top

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = top = self.top
        clk = platform.request(platform.default_clk, 0)
        m.domains.sync = ClockDomain("sync")
        m.domains.por = ClockDomain("por", reset_less=True)
        fin = int(platform.default_clk_frequency)
        sys_clk, locked = clk.i, Const(1, 1)      # (a Python 1 would make ~locked true)
        if top.clk_hz != fin:
            if getattr(platform, "family", None) != "ecp5":
                raise ValueError(f"clk_hz {top.clk_hz}: only the ECP5 boards have a PLL here; "
                                 f"this board runs at its {fin / 1e6:g} MHz oscillator")
            params = ecp5_pll(fin, top.clk_hz)
            if params.fout_hz != top.clk_hz:
                raise ValueError(f"clk_hz {top.clk_hz}: the PLL makes {params.fout_hz} Hz; "
                                 f"build the BoardTop with that")
            m.submodules.pll = pll = Ecp5Pll(params)
            m.d.comb += pll.clk_in.eq(clk.i)
            sys_clk = pll.clk_out
            lock_s = Signal(2)           # LOCK comes from the PLL asynchronously
            m.d.por += lock_s.eq(Cat(pll.locked, lock_s[0]))
            locked = lock_s[1]
        # Counts up from 0, as every flip-flop starts at 0 after configuration on both families.
        por = Signal(self.POR_BITS + 1)
        with m.If(~locked):
            m.d.por += por.eq(0)
        with m.Elif(~por[-1]):
            m.d.por += por.eq(por + 1)
        m.d.comb += [ClockSignal("sync").eq(sys_clk), ClockSignal("por").eq(sys_clk),
                     ResetSignal("sync").eq(~por[-1])]

        if top.memory_kind == "sdram":
            # The chip's clock is the inverted system clock (a DDR output: 0 then 1), so the chip
            # samples the controller's registered outputs in the middle of their cycle.
            sd = platform.request("sdram", 0, xdr={"clk": 2})
            pins = top.sdram
            m.d.comb += [
                sd.clk.o_clk.eq(ClockSignal("sync")), sd.clk.o0.eq(0), sd.clk.o1.eq(1),
                sd.clk_en.o.eq(pins.clk_en), sd.cs.o.eq(pins.cs), sd.ras.o.eq(pins.ras),
                sd.cas.o.eq(pins.cas), sd.we.o.eq(pins.we), sd.ba.o.eq(pins.ba),
                sd.a.o.eq(pins.a), sd.dqm.o.eq(pins.dqm),
                sd.dq.o.eq(pins.dq_o), sd.dq.oe.eq(pins.dq_oe), pins.dq_i.eq(sd.dq.i),
            ]

        uart = platform.request("uart", 0)
        m.d.comb += [top.rx.eq(uart.rx.i), uart.tx.o.eq(top.tx)]
        leds = []
        for k in range(2):
            try:
                leds.append(platform.request("led", k))
            except ResourceError:       # a board with fewer LEDs
                break
        beat = Signal(max(1, (top.clk_hz // 3).bit_length()))
        m.d.sync += beat.eq(beat + 1)
        if leds:
            m.d.comb += leds[0].o.eq(beat[-1])
        if len(leds) > 1:
            hold = Signal(range(max(2, top.clk_hz // 10)))
            with m.If(top.link_error):
                m.d.sync += hold.eq(max(2, top.clk_hz // 10) - 1)
            with m.Elif(hold.any()):
                m.d.sync += hold.eq(hold - 1)
            m.d.comb += leds[1].o.eq(hold.any())
        return m
