"""A stand-in for the accelerator's host interface, for testing the harness and the backends
(sim/backends.py) without the real top: same ports as ``hw.accelerator.Accelerator``
(docs/architecture.md), same CSRs, same program fetch — but it executes only NOP and HALT.

* NOP with ``ext_addr ≠ 0`` writes ``imm`` (repeated over the word's bytes, byte mask ``count``
  or all ones when 0) to ext word ``ext_addr`` — the write path.
* Every other opcode stops with ILLEGAL_OPCODE at its PC; PROG_LEN 0 or > IMEM, or running past
  the program, with PROGRAM_RANGE.

``MockSimSystem`` mirrors ``hw.accelerator.SimSystem``: the mock plus an initialised ext Memory
answering with a fixed latency; only ``bus`` is outside.
"""
from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.isa import ID_MAGIC, INSTR_LAYOUT, Csr, ErrorCode, Op, instr_words, mem_cmd_layout, \
    mem_rsp_layout

__all__ = ["BusSignature", "MockAccelerator", "MockSimSystem"]

# seen from the initiator (the host); the accelerator has ``In(BusSignature)``
BusSignature = wiring.Signature({
    "cyc": Out(1), "stb": Out(1), "we": Out(1), "adr": Out(8), "dat_w": Out(32),
    "dat_r": In(32), "ack": In(1),
})


class MockAccelerator(wiring.Component):
    def __init__(self, *, pes, lanes=16, amem_depth=4096, cmem_depth=4096, bbuf_depth=4096,
                 pbuf_depth=64, imem_depth=256):
        self.pes, self.lanes, self.imem_depth = pes, lanes, imem_depth
        self.amem_depth, self.cmem_depth, self.bbuf_depth = amem_depth, cmem_depth, bbuf_depth
        self.pbuf_depth = pbuf_depth
        super().__init__({
            "bus": In(BusSignature),
            "mem": Out(wiring.Signature({
                "cmd": Out(stream.Signature(mem_cmd_layout(lanes))),
                "rsp": In(stream.Signature(mem_rsp_layout(lanes))),
            })),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        W = instr_words(L)
        prog_base, prog_len = Signal(32), Signal(32)
        busy, halted, error = Signal(), Signal(), Signal()
        code = Signal(8)
        pc = Signal(32)
        cycles, instret = Signal(32), Signal(32)
        instr = Signal(256)
        sent, got = Signal(range(W + 1)), Signal(range(W + 1))
        fields = data.View(INSTR_LAYOUT, instr)

        # CSR bus: ack one cycle after cyc & stb, for one cycle
        ack = Signal()
        start, clear = Signal(), Signal()
        m.d.sync += ack.eq(self.bus.cyc & self.bus.stb & ~ack)
        m.d.comb += self.bus.ack.eq(ack)
        rd = Signal(32)
        with m.Switch(self.bus.adr):
            with m.Case(Csr.ID):
                m.d.comb += rd.eq(ID_MAGIC)
            with m.Case(Csr.CONFIG):
                m.d.comb += rd.eq(self.pes | L << 8 | (self.amem_depth.bit_length() - 1) << 16
                                  | (self.bbuf_depth.bit_length() - 1) << 24)
            with m.Case(Csr.STATUS):
                m.d.comb += rd.eq(busy | halted << 1 | error << 2 | code << 8)
            with m.Case(Csr.PC):
                m.d.comb += rd.eq(pc)
            with m.Case(Csr.PROG_BASE):
                m.d.comb += rd.eq(prog_base)
            with m.Case(Csr.PROG_LEN):
                m.d.comb += rd.eq(prog_len)
            with m.Case(Csr.CYCLES):
                m.d.comb += rd.eq(cycles)
            with m.Case(Csr.INSTRET):
                m.d.comb += rd.eq(instret)
        with m.If(self.bus.cyc & self.bus.stb & ~ack):
            m.d.sync += self.bus.dat_r.eq(rd)
            with m.If(self.bus.we):
                with m.Switch(self.bus.adr):
                    with m.Case(Csr.PROG_BASE):
                        m.d.sync += prog_base.eq(self.bus.dat_w)
                    with m.Case(Csr.PROG_LEN):
                        m.d.sync += prog_len.eq(self.bus.dat_w)
                    with m.Case(Csr.CTRL):
                        m.d.comb += [start.eq(self.bus.dat_w[0]), clear.eq(self.bus.dat_w[1])]

        cmd, rsp = self.mem.cmd, self.mem.rsp
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(clear):
            m.d.sync += [halted.eq(0), error.eq(0), code.eq(0), cycles.eq(0), instret.eq(0)]

        def fail(c):
            m.d.sync += [busy.eq(0), error.eq(1), code.eq(c)]
            m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [pc.eq(0), busy.eq(1), halted.eq(0), error.eq(0), code.eq(0),
                                 cycles.eq(0), instret.eq(0)]
                    with m.If((prog_len == 0) | (prog_len > self.imem_depth)):
                        fail(ErrorCode.PROGRAM_RANGE)
                    with m.Else():
                        m.d.sync += [sent.eq(0), got.eq(0)]
                        m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(pc >= prog_len):
                    fail(ErrorCode.PROGRAM_RANGE)
                with m.Else():
                    m.d.comb += [cmd.valid.eq(sent < W),
                                 cmd.payload.addr.eq(prog_base + pc * W + sent),
                                 cmd.payload.we.eq(0), rsp.ready.eq(1)]
                    with m.If(cmd.valid & cmd.ready):
                        m.d.sync += sent.eq(sent + 1)
                    with m.If(rsp.valid):
                        m.d.sync += [instr.eq((instr >> (8 * L)) | (rsp.payload.data << (256 - 8 * L))),
                                     got.eq(got + 1)]
                        with m.If(got == W - 1):
                            m.next = "EXEC"
            with m.State("EXEC"):
                with m.If(fields.op == Op.HALT):
                    m.d.sync += [busy.eq(0), halted.eq(1), instret.eq(instret + 1)]
                    m.next = "IDLE"
                with m.Elif(fields.op == Op.NOP):
                    with m.If(fields.ext_addr != 0):
                        m.next = "WRITE"
                    with m.Else():
                        m.d.sync += [pc.eq(pc + 1), instret.eq(instret + 1), sent.eq(0), got.eq(0)]
                        m.next = "FETCH"
                with m.Else():
                    fail(ErrorCode.ILLEGAL_OPCODE)
            with m.State("WRITE"):
                byte = fields.imm[:8]
                m.d.comb += [cmd.valid.eq(1), cmd.payload.addr.eq(fields.ext_addr),
                             cmd.payload.we.eq(1),
                             cmd.payload.data.eq(Const(int("01" * L, 16), 8 * L) * byte),
                             cmd.payload.mask.eq(((fields.count == 0).replicate(L))
                                                 | fields.count[:L])]
                with m.If(cmd.ready):
                    m.d.sync += [pc.eq(pc + 1), instret.eq(instret + 1), sent.eq(0), got.eq(0)]
                    m.next = "FETCH"
        return m


class MockSimSystem(wiring.Component):
    """``MockAccelerator`` + ext ``Memory`` (fixed read latency, in-order responses)."""

    def __init__(self, *, ext_depth, ext_init=(), latency=3, stall=0, **kwargs):
        self.accel = MockAccelerator(**kwargs)
        L = self.accel.lanes
        self.latency = latency
        self.ext = Memory(shape=unsigned(8 * L), depth=ext_depth, init=list(ext_init))
        super().__init__({"bus": In(BusSignature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = acc = self.accel
        m.submodules.ext = ext = self.ext
        L = acc.lanes
        wiring.connect(m, wiring.flipped(self.bus), acc.bus)
        cmd, rsp = acc.mem.cmd, acc.mem.rsp
        rp = ext.read_port()
        wp = ext.write_port(granularity=8)
        # responses go through a delay line of `latency` stages; the mock always takes them,
        # so no back-pressure handling is needed here
        m.d.comb += [cmd.ready.eq(1), rp.addr.eq(cmd.payload.addr), rp.en.eq(1),
                     wp.addr.eq(cmd.payload.addr), wp.data.eq(cmd.payload.data)]
        with m.If(cmd.valid & cmd.payload.we):
            m.d.comb += wp.en.eq(cmd.payload.mask)
        valid = Signal(self.latency)
        datas = [Signal(8 * L, name=f"d{i}") for i in range(self.latency)]
        m.d.sync += valid.eq((valid << 1) | (cmd.valid & ~cmd.payload.we))
        m.d.comb += datas[0].eq(rp.data)
        for i in range(1, self.latency):
            m.d.sync += datas[i].eq(datas[i - 1])
        m.d.comb += [rsp.valid.eq(valid[-1]), rsp.payload.data.eq(datas[-1])]
        return m

MockSimSystem.accelerator_class = MockAccelerator
