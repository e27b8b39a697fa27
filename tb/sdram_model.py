"""Behavioural SDR SDRAM (16-bit) for Amaranth testbenches of ``hw.sdram.SdramController``.

It watches the controller's pins every clock edge and behaves as the chip would: the
initialization (power-up pause, PRECHARGE ALL, AUTO REFRESHes, MODE REGISTER SET), banks with
one open row each, READ data on ``dq_i`` CAS latency cycles after the command (the latency the
mode register set), WRITEs with DQM byte masks. Every rule of the data sheet that the
controller relies on is checked and a violation raises :class:`SdramViolation` naming the rule,
the edge and the command: command before the pause or the init sequence, ACTIVE on an open bank,
READ/WRITE on a closed bank, tRCD, tRP, tRAS, tRC, tRRD, tRFC, tWR, tMRD, refresh falling
behind tREFI, bus contention on DQ, unsupported commands or mode settings. The timing is the
controller's own (``timing_cycles``), so the model is as strict as the part at that clock.

Edge convention (the board's: the chip's clock is the inverted system clock): the controller
registers its pins at a system clock edge, the chip samples them half a cycle later; the model
sees them at the next system edge t. READ data comes CL − ½ cycles after the chip's edge, and the
controller samples it at system edge t + CL − 1: the model drives it on ``dq_i`` from just after
edge t + CL − 2. A WRITE while read data is still due would truncate the READ (and collide on
DQ): the model raises.
"""
from collections import deque

__all__ = ["SdramViolation", "SdramModel"]

NOP, ACTIVE, READ, WRITE, PRECHARGE, REFRESH, MODE = "NOP ACTIVE READ WRITE PRECHARGE REFRESH MODE".split()
_DECODE = {(0, 0, 0): NOP, (1, 0, 0): ACTIVE, (0, 1, 0): READ, (0, 1, 1): WRITE,
           (1, 0, 1): PRECHARGE, (1, 1, 0): REFRESH, (1, 1, 1): MODE}


class SdramViolation(AssertionError):
    """The controller broke an SDRAM rule."""


class SdramModel:
    """Model of the chip behind ``ctrl.sdram`` (``ctrl``: a ``hw.sdram.SdramController``;
    geometry and timing are taken from it), or behind ``pins`` (the same signature, e.g. the
    ``sdram`` port of a ``hw.board.BoardTop``). Add :meth:`process` as a background testbench.

    ``words(addr, n)`` reads back words as the controller maps them (for checks);
    ``stats`` counts commands; ``log`` keeps the last commands (for error messages).
    """

    def __init__(self, ctrl, *, pins=None, check_refresh=True):
        self.c = ctrl
        self.t = ctrl.timing_cycles
        self.pins = ctrl.sdram if pins is None else pins
        self.cells = {}                       # (bank, row, col) → 16-bit value
        self.open = {}                        # bank → row
        self.last = {}                        # (event, bank or None) → edge
        self.cl = None
        self.refreshes = 0
        self.init_refreshes = 0
        self.mode_edge = None
        self.check_refresh = check_refresh
        self.stats = {k: 0 for k in _DECODE.values()}
        self.edge = 0
        self.log = deque(maxlen=12)
        self._drive = {}                      # edge → value the chip drives on DQ at that edge
        self._drove_last = False

    # -------------------------------------------------------------- checks
    def _fail(self, rule, cmd):
        raise SdramViolation(f"edge {self.edge}: {cmd}: {rule} (last commands: {list(self.log)})")

    def _since(self, event, bank=None):
        e = self.last.get((event, bank))
        return None if e is None else self.edge - e

    def _need(self, event, bank, cycles, rule, cmd):
        d = self._since(event, bank)
        if d is not None and d < cycles:
            self._fail(f"{rule}: {d} cycles after {event}{'' if bank is None else f' (bank {bank})'},"
                       f" needs {cycles}", cmd)

    # -------------------------------------------------------------- one edge
    def step(self, cs, ras, cas, we, ba, a, dqm, dq_o, dq_oe, clk_en):
        self.edge += 1
        t = self.t
        if not clk_en:
            self._fail("CKE low (power-down/self refresh are not modelled)", "CKE")
        chip_drives = self._drive.pop(self.edge, None) is not None
        # The chip drives DQ half a cycle around that edge: the controller's data of this edge
        # and of the next one overlap it.
        if dq_oe and (chip_drives or self._drove_last):
            self._fail("bus contention: the controller drives DQ while read data is due", "DQ")
        self._drove_last = chip_drives
        cmd = _DECODE[(ras, cas, we)] if cs else NOP
        if cmd != NOP:
            self.log.append((self.edge, cmd, ba, a))
            self.stats[cmd] += 1
        if cmd == NOP:
            pass
        elif self.edge <= self.c.init_cycles:
            self._fail(f"command during the power-up pause ({self.c.init_cycles} cycles)", cmd)
        elif self.cl is None and cmd in (ACTIVE, READ, WRITE):
            self._fail("before the initialization (MODE REGISTER SET) is complete", cmd)
        elif cmd == MODE:
            self._mode(a, cmd)
        elif cmd == REFRESH:
            if self.open:
                self._fail(f"REFRESH with banks {sorted(self.open)} open", cmd)
            self._need(PRECHARGE, None, t["tRP"], "tRP", cmd)
            self._need(REFRESH, None, t["tRFC"], "tRFC", cmd)
            for b in range(self.c.banks):
                self._need(ACTIVE, b, t["tRC"], "tRC (ACTIVE to REFRESH)", cmd)
            self.last[(REFRESH, None)] = self.edge
            if self.cl is None:
                self.init_refreshes += 1
            else:
                self.refreshes += 1
        elif cmd == PRECHARGE:
            banks = range(self.c.banks) if a >> 10 & 1 else [ba]
            if self.cl is None and not a >> 10 & 1:
                self._fail("the initialization starts with PRECHARGE ALL", cmd)
            for b in banks:
                if b in self.open:
                    self._need(ACTIVE, b, t["tRAS"], "tRAS", cmd)
                    self._need(WRITE, b, t["tWR"], "tWR", cmd)
                    del self.open[b]
                    self.last[(PRECHARGE, b)] = self.edge
            self.last[(PRECHARGE, None)] = self.edge
        elif cmd == ACTIVE:
            if ba in self.open:
                self._fail(f"ACTIVE on bank {ba}, which has row {self.open[ba]} open", cmd)
            if a >= self.c.rows:
                self._fail(f"row {a} beyond {self.c.rows}", cmd)
            self._need(PRECHARGE, ba, t["tRP"], "tRP", cmd)
            self._need(ACTIVE, ba, t["tRC"], "tRC", cmd)
            self._need(ACTIVE, None, t["tRRD"], "tRRD", cmd)
            self._need(REFRESH, None, t["tRFC"], "tRFC", cmd)
            self._need(MODE, None, t["tMRD"], "tMRD", cmd)
            self.open[ba] = a
            self.last[(ACTIVE, ba)] = self.last[(ACTIVE, None)] = self.edge
        else:                                   # READ / WRITE
            if ba not in self.open:
                self._fail(f"bank {ba} has no open row", cmd)
            if a >> 10 & 1:
                self._fail("auto precharge is not expected", cmd)
            col = a & 0x3FF
            if col >= self.c.cols:
                self._fail(f"column {col} beyond {self.c.cols}", cmd)
            self._need(ACTIVE, ba, t["tRCD"], "tRCD", cmd)
            key = (ba, self.open[ba], col)
            if cmd == WRITE:
                if any(d >= self.edge for d in self._drive):
                    self._fail("WRITE while read data is due (it would truncate the READ)", cmd)
                if not dq_oe:
                    self._fail("WRITE without data driven on DQ", cmd)
                old = self.cells.get(key, 0)
                keep = (0xFF if dqm & 1 else 0) | (0xFF00 if dqm & 2 else 0)
                self.cells[key] = (old & keep) | (dq_o & ~keep & 0xFFFF)
                self.last[(WRITE, ba)] = self.edge
            else:
                if dqm:
                    self._fail("READ with DQM set (the controller reads whole words)", cmd)
                due = self.edge + self.cl - 1
                if due in self._drive:
                    self._fail("two reads due at the same edge", cmd)
                self._drive[due] = self.cells.get(key, 0)
        if self.check_refresh and self.mode_edge is not None:
            behind = (self.edge - self.mode_edge) // self.c.refresh_interval - 1 - self.refreshes
            if behind > 0:
                self._fail(f"refresh fell behind: {self.refreshes} AUTO REFRESHes in "
                           f"{self.edge - self.mode_edge} cycles at tREFI = "
                           f"{self.c.refresh_interval}", "REFRESH")
        # What the chip drives for the next edge (set right after this one).
        return self._drive.get(self.edge + 1)

    def _mode(self, a, cmd):
        if self.open:
            self._fail("MODE REGISTER SET with open banks", cmd)
        if self.init_refreshes < self.c.init_refresh:
            self._fail(f"MODE REGISTER SET after {self.init_refreshes} of "
                       f"{self.c.init_refresh} initial AUTO REFRESHes", cmd)
        self._need(PRECHARGE, None, self.t["tRP"], "tRP", cmd)
        self._need(REFRESH, None, self.t["tRFC"], "tRFC", cmd)
        if a & 7:
            self._fail(f"burst length code {a & 7}: the controller's words need burst length 1", cmd)
        if a >> 3 & 1 or a >> 7 & 3 or a >> 9 & 1:
            self._fail(f"mode {a:#x}: unsupported burst type, test mode or write burst mode", cmd)
        cl = a >> 4 & 7
        if cl not in (2, 3):
            self._fail(f"CAS latency code {cl}", cmd)
        self.cl = cl
        self.mode_edge = self.edge
        self.last[(MODE, None)] = self.edge

    # -------------------------------------------------------------- testbench glue
    async def process(self, ctx):
        p = self.pins
        sigs = (p.cs, p.ras, p.cas, p.we, p.ba, p.a, p.dqm, p.dq_o, p.dq_oe, p.clk_en)
        async for _clk, rst, *vals in ctx.tick().sample(*sigs):
            if rst:
                continue
            out = self.step(*vals)
            ctx.set(p.dq_i, 0 if out is None else out)

    def words(self, addr, n):
        """``n`` ext words from word address ``addr`` as stored in the cells."""
        out = []
        for w in range(addr, addr + n):
            bank, row, col = self.c.split(w)
            v = 0
            for k in range(self.c.lanes // 2):
                v |= self.cells.get((bank, row, col + k), 0) << (16 * k)
            out.append(v)
        return out
