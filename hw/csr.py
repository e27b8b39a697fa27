"""Control/status registers behind a Wishbone-classic subset bus (docs/isa.md, host interface)."""
from amaranth.hdl import Array, Module, Mux, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .isa import ID_MAGIC, Csr
from .params import check_int
from .pe import is_zero

__all__ = ["csr_bus_signature", "CsrRegs"]


def csr_bus_signature():
    """The bus seen from its initiator (the host): ``cyc``, ``stb``, ``we``, ``adr`` (8),
    ``dat_w`` (32) out; ``dat_r`` (32), ``ack`` in."""
    return wiring.Signature({
        "cyc": Out(1), "stb": Out(1), "we": Out(1), "adr": Out(8), "dat_w": Out(32),
        "dat_r": In(32), "ack": In(1),
    })


class CsrRegs(wiring.Component):
    """The register file of docs/isa.md.

    Ports
    -----
    bus : In(csr_bus_signature())
        ``ack`` rises one cycle after ``cyc & stb`` for one cycle, with ``dat_r`` (reads) or
        after the write took effect; an initiator holding ``stb`` after ``ack`` starts the next
        access. Unknown addresses read 0, writes to read-only registers are ignored.
    start, clear : Out(1)
        One-cycle pulses from a write to CTRL (bit 0, bit 1).
    prog_base, prog_len : Out(32)
        PROG_BASE and PROG_LEN.
    busy, halted, error, code, pc, cycles, mac_cycles, stall_dma, stall_wb, instret,
    array_cycles : In
        Status and counters (from the controller).
    """

    def __init__(self, *, config):
        self._config = check_int("config", config, lo=0, hi=(1 << 32) - 1)
        super().__init__({
            "bus": In(csr_bus_signature()),
            "start": Out(1), "clear": Out(1),
            "prog_base": Out(32), "prog_len": Out(32),
            "busy": In(1), "halted": In(1), "error": In(1), "code": In(8), "pc": In(16),
            "cycles": In(32), "mac_cycles": In(32), "stall_dma": In(32), "stall_wb": In(32),
            "instret": In(32), "array_cycles": In(32),
        })

    config = property(lambda self: self._config)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        access = bus.cyc & bus.stb & ~bus.ack
        m.d.sync += [bus.ack.eq(access), self.start.eq(0), self.clear.eq(0)]
        regs = {
            Csr.ID: ID_MAGIC,
            Csr.CONFIG: self._config,
            Csr.STATUS: self.busy | (self.halted << 1) | (self.error << 2) | (self.code << 8),
            Csr.PC: self.pc,
            Csr.PROG_BASE: self.prog_base,
            Csr.PROG_LEN: self.prog_len,
            Csr.CYCLES: self.cycles,
            Csr.MAC_CYCLES: self.mac_cycles,
            Csr.STALL_DMA: self.stall_dma,
            Csr.STALL_WB: self.stall_wb,
            Csr.INSTRET: self.instret,
            Csr.ARRAY_CYCLES: self.array_cycles,
        }
        with m.If(access):
            # A 16-entry table (a complete case statement, as Verilator's lint wants; If/Elif
            # chains for the writes below for the same reason).
            table = Array(Value.cast(regs.get(a, 0)) for a in range(16))
            m.d.sync += bus.dat_r.eq(Mux(is_zero(bus.adr[4:]), table[bus.adr[:4]], 0))
            with m.If(bus.we):
                with m.If(bus.adr == Csr.CTRL):
                    m.d.sync += [self.start.eq(bus.dat_w[0]), self.clear.eq(bus.dat_w[1])]
                with m.Elif(bus.adr == Csr.PROG_BASE):
                    m.d.sync += self.prog_base.eq(bus.dat_w)
                with m.Elif(bus.adr == Csr.PROG_LEN):
                    m.d.sync += self.prog_len.eq(bus.dat_w)
        return m
