"""The ext-memory side of a board: an arbiter that shares one memory between several initiators
of the accelerator's ``mem`` protocol, and an on-chip block-RAM memory that answers it.

Everything speaks the accelerator's ext-memory protocol (``hw.dma.mem_signature``: a request
stream ``cmd`` of ``{addr, we, data, mask}`` and a response stream ``rsp`` of ``{data}``, one
response per read, in order, any latency). So the block RAM is one possible *target*: an SDRAM
controller that answers the same two streams replaces it without touching the arbiter, the
accelerator or the host bridge (docs/board.md, *Memory system*).
"""
from amaranth.hdl import Array, Cat, ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dma import mem_signature
from .params import check_int
from .pe import LANE_CHOICES, _log2, is_zero

__all__ = ["MemArbiter", "BlockRamMemory", "SPRAM_COUNT", "SPRAM_WORDS"]

#: iCE40 UltraPlus SPRAM: blocks on an UP5K, and 16-bit words per block.
SPRAM_COUNT = 4
SPRAM_WORDS = 16384


def _eq(sig, k):
    """``sig == k``; for k = 0 written so that Verilator's lint does not see ``!sig``."""
    return is_zero(sig) if k == 0 else sig == k


def _check_pow2(name, value, lo, hi):
    check_int(name, value, lo=lo, hi=hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value}")
    return value


class MemArbiter(wiring.Component):
    """Round-robin arbiter of ``initiators`` ext-memory ports onto one ``target`` port.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    lanes : 4, 8, 16 or 32
        Word width in bytes (the accelerator's L).
    initiators : int
        Number of initiator ports, 2…8.
    max_reads : int
        Reads that may be outstanding at the target (a power of two, 2…256): the depth of the
        FIFO that remembers which initiator each response belongs to. Full throughput needs at
        least the target's read latency plus one.

    Ports
    -----
    initiators : In(mem_signature(lanes)).array(initiators)
        The ports of the accelerator, the host bridge, …: requests in, responses out.
    target : Out(mem_signature(lanes))
        The memory (block RAM today, an SDRAM controller later).

    Each cycle the first initiator with a valid request after the one granted last wins
    (round robin: no initiator waits for more than ``initiators − 1`` others); the grant moves
    only when a request is taken, so a waiting request stays on ``target.cmd`` unchanged, as
    streams require. A read is forwarded only when the tag FIFO has room; the target's responses
    are handed back in order to the initiator at the head of that FIFO, and ``target.rsp.ready``
    is that initiator's ``rsp.ready`` (an initiator that holds its responses back holds
    everybody's: the target answers in order). The target must answer a read at the earliest in
    the cycle after it took it (any registered memory does).
    """

    def __init__(self, *, lanes, initiators=2, max_reads=8):
        if lanes not in LANE_CHOICES:
            raise ValueError(f"lanes must be one of {', '.join(map(str, LANE_CHOICES))}; not {lanes!r}")
        self._lanes = lanes
        self._n = check_int("initiators", initiators, lo=2, hi=8)
        self._max_reads = _check_pow2("max_reads", max_reads, 2, 256)
        super().__init__({
            "initiators": In(mem_signature(lanes)).array(initiators),
            "target": Out(mem_signature(lanes)),
        })

    lanes = property(lambda self: self._lanes)
    n_initiators = property(lambda self: self._n, doc="Number of initiator ports.")
    max_reads = property(lambda self: self._max_reads)

    def elaborate(self, platform):
        m = Module()
        n = self._n
        ins = self.initiators
        tgt = self.target
        m.submodules.tags = tags = fifo.SyncFIFO(width=(n - 1).bit_length(), depth=self._max_reads)

        last = Signal(range(n), init=n - 1)
        # A request offered but not yet taken keeps its grant: streams may not change a payload
        # under valid.
        held = Signal(range(n))
        holding = Signal()
        grant = Signal(range(n))
        with m.If(holding):
            m.d.comb += grant.eq(held)
        with m.Else():
            # Round robin: of last+1, last+2, …, last+n the first valid initiator wins (the
            # If written last has priority).
            for rot in range(n):
                with m.If(_eq(last, rot)):
                    for k in reversed(range(1, n + 1)):
                        with m.If(ins[(rot + k) % n].cmd.valid):
                            m.d.comb += grant.eq((rot + k) % n)

        sel_valid, sel_payload = Signal(), Signal.like(tgt.cmd.payload)
        # If/Elif with the last initiator as Else: no incomplete case statement (Verilator lint).
        for k in range(n):
            with (m.If(_eq(grant, k)) if k == 0 else m.Elif(_eq(grant, k)) if k < n - 1 else m.Else()):
                m.d.comb += [sel_valid.eq(ins[k].cmd.valid), sel_payload.eq(ins[k].cmd.payload)]
        room = sel_payload.we | tags.w_rdy
        m.d.comb += [
            tgt.cmd.valid.eq(sel_valid & room),
            tgt.cmd.payload.eq(sel_payload),
        ]
        for k in range(n):
            m.d.comb += ins[k].cmd.ready.eq(_eq(grant, k) & tgt.cmd.ready & room)
        take = tgt.cmd.valid & tgt.cmd.ready
        m.d.sync += [holding.eq(tgt.cmd.valid & ~tgt.cmd.ready), held.eq(grant)]
        with m.If(take):
            m.d.sync += last.eq(grant)
        m.d.comb += [tags.w_en.eq(take & ~sel_payload.we), tags.w_data.eq(grant)]

        # Responses go back in order to the owner of the oldest outstanding read.
        owner = tags.r_data
        rsp_ready = Signal()
        for k in range(n):
            m.d.comb += [
                ins[k].rsp.valid.eq(tgt.rsp.valid & tags.r_rdy & _eq(owner, k)),
                ins[k].rsp.payload.eq(tgt.rsp.payload),
            ]
            with m.If(_eq(owner, k)):
                m.d.comb += rsp_ready.eq(ins[k].rsp.ready)
        m.d.comb += [
            tgt.rsp.ready.eq(tags.r_rdy & rsp_ready),
            tags.r_en.eq(tgt.rsp.valid & tgt.rsp.ready),
        ]
        return m


class BlockRamMemory(wiring.Component):
    """On-chip memory of ``depth`` words of L bytes answering the ext-memory protocol.

    Parameters (keyword-only, checked; read-only properties)
    --------------------------------------------------------
    lanes : 4, 8, 16 or 32
        Word width in bytes.
    depth : int
        Words, a power of two, 16…2²⁴. Addresses wrap (the high address bits are ignored).
    init : sequence of int, optional
        Initial words (8L bits each, byte b in bits 8b…8b+7); the rest is 0.

    Ports
    -----
    bus : In(mem_signature(lanes))
        Requests in (``cmd``), read responses out (``rsp``). A read is answered three cycles
        after it was taken (the request is registered, then read); one request per cycle while
        ``rsp`` is taken; a write stores the bytes whose mask bit is 1 and is not answered.

    The block RAM (ECP5 DP16KD, iCE40 EBR) is read into a response FIFO of
    :attr:`RSP_DEPTH` words; a request is taken only while the FIFO has room for every read in
    flight, so ``cmd.ready`` depends on registers only (no combinational path from a
    requester's ``rsp.ready`` to the block RAM's enables: measured 15.7 ns on the ULX3S before).

    On an iCE40 UltraPlus platform (``platform.device`` ``iCE40UP…``) with L = 4 or 8, no
    ``init``, and a ``depth`` the four SPRAMs hold (32 K words at L = 4, 16 K at L = 8), the
    memory is built from ``SB_SPRAM256KA`` instances instead (16 bits × 16 K each, L/2 side by
    side, two banks at L = 4; nibble write masks from the byte mask): yosys 0.70 finds no SPRAM
    mapping for this separate read and write port, and picks EBRs by itself. This variant is
    not covered by simulation (the Amaranth simulator cannot run the primitive);
    ``tests/test_extmem.py`` checks that it synthesizes and places.
    """

    #: Words of the response FIFO (4: one request per cycle with rsp.ready high).
    RSP_DEPTH = 4

    def __init__(self, *, lanes, depth, init=()):
        if lanes not in LANE_CHOICES:
            raise ValueError(f"lanes must be one of {', '.join(map(str, LANE_CHOICES))}; not {lanes!r}")
        self._lanes = lanes
        self._depth = _check_pow2("depth", depth, 16, 1 << 24)
        init = [int(x) for x in init]
        if len(init) > depth:
            raise ValueError(f"init has {len(init)} words, more than depth {depth}")
        self._init = init
        self._mem = None
        super().__init__({"bus": In(mem_signature(lanes))})

    lanes = property(lambda self: self._lanes)
    depth = property(lambda self: self._depth)

    @property
    def mem(self):
        """The Amaranth ``Memory`` (made on first use; not part of the SPRAM variant): a
        testbench reads it with ``ctx.get(memory.mem.data[i])``."""
        if self._mem is None:
            self._mem = Memory(shape=unsigned(8 * self._lanes), depth=self._depth, init=self._init)
        return self._mem

    def uses_spram(self, platform):
        """True if :meth:`elaborate` builds this memory from iCE40 SPRAMs for ``platform``."""
        up = str(getattr(platform, "device", "")).startswith("iCE40UP")
        return (up and self._lanes in (4, 8) and not self._init
                and self._depth <= SPRAM_COUNT * SPRAM_WORDS * 2 // self._lanes)

    def elaborate(self, platform):
        m = Module()
        cmd, rsp = self.bus.cmd, self.bus.rsp
        m.submodules.rsp_fifo = q = fifo.SyncFIFO(width=8 * self._lanes, depth=self.RSP_DEPTH)
        # Credits: a read is taken only if its answer will find room in the FIFO, counting the
        # ones in the request register and on the RAM output. cmd.ready comes from registers
        # only, so no path runs from an initiator's rsp.ready through the arbiter to the RAM's
        # enables.
        # The request taken is registered before it reaches the RAM: the arbiter's grant and
        # payload multiplexers then end in flip-flops, not at the block RAM's pins (the ULX3S
        # P = 1 critical path, docs/board.md). It costs one cycle of read latency.
        req = Signal.like(cmd.payload)
        req_go = Signal()                 # req holds a request taken last cycle
        req_rd = req_go & ~req.we         # … and it is a read
        pend = Signal()                   # a read issued to the RAM last cycle: its data is out
        credit = Signal()
        m.d.comb += credit.eq(q.level + pend + req_rd < self.RSP_DEPTH)
        take = cmd.valid & credit
        m.d.sync += [req_go.eq(take), pend.eq(req_rd)]
        with m.If(take):
            m.d.sync += req.eq(cmd.payload)
        m.d.comb += [
            cmd.ready.eq(credit),
            q.w_en.eq(pend),
            rsp.valid.eq(q.r_rdy), rsp.payload.data.eq(q.r_data), q.r_en.eq(rsp.ready),
        ]
        if self.uses_spram(platform):
            m.d.comb += q.w_data.eq(self._spram(m, req, req_go))
            return m
        m.submodules.mem = mem = self.mem
        abits = _log2(self._depth)
        wr = mem.write_port(granularity=8)
        rd = mem.read_port(transparent_for=())
        m.d.comb += [
            rd.addr.eq(req.addr[:abits]),
            rd.en.eq(req_rd),
            wr.addr.eq(req.addr[:abits]),
            wr.data.eq(req.data),
            wr.en.eq(Mux(req_go & req.we, req.mask, 0)),
            q.w_data.eq(rd.data),
        ]
        return m

    def _spram(self, m, req, go):
        """SB_SPRAM256KA instances serving the registered request ``req`` (when ``go``);
        returns the read data, valid the cycle after."""
        L = self._lanes
        wide = L // 2                                     # 16-bit SPRAMs per word
        banks = max(1, self._depth // SPRAM_WORDS)
        bank_bits = _log2(banks)
        bank = req.addr[14:14 + bank_bits] if bank_bits else 0
        outs = []
        for b in range(banks):
            dout = Signal(8 * L, name=f"dout{b}")
            outs.append(dout)
            for j in range(wide):
                mask = req.mask
                m.submodules[f"spram{b}_{j}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=req.addr[:14],
                    i_DATAIN=req.data[16 * j:16 * j + 16],
                    # MASKWREN bit k enables DATAIN[4k+3:4k]: two bits per byte.
                    i_MASKWREN=Cat(mask[2 * j], mask[2 * j], mask[2 * j + 1], mask[2 * j + 1]),
                    i_WREN=req.we,
                    i_CHIPSELECT=go & (bank == b if bank_bits else 1),
                    i_CLOCK=ClockSignal("sync"),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,       # POWEROFF is active low
                    o_DATAOUT=dout[16 * j:16 * j + 16],
                )
        if banks == 1:
            return outs[0]
        rd_bank = Signal(bank_bits)
        with m.If(go & ~req.we):
            m.d.sync += rd_bank.eq(bank)
        return Array(outs)[rd_bank]
