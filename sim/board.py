"""Host side of the board's UART link (docs/board.md): one protocol implementation for a real
serial port and for the simulated board top.

The protocol code does no I/O. Every command is a :class:`Request` (the bytes to send, the
length of the reply, a function that checks and decodes it), and whole sessions — load an
image, start, poll, read the results — are generators that yield requests and receive the
decoded replies (:func:`run_job_ops`).

Requests may also be :class:`Wait` (pause, then drop stray bytes). Drivers:

* :class:`SerialLink` over any object with pyserial's ``write(bytes)`` / ``read(n) -> bytes``
  (``serial.Serial(port, baud, timeout=1)``; :func:`open_serial` opens one when pyserial is
  installed). Use: ``SerialLink(serial.Serial("/dev/ttyUSB0", 115200, timeout=1)).run_job(job)``.
* :class:`SimLink`, inside an Amaranth testbench of ``hw.board.BoardTop``: it drives the
  ``rx`` pin bit by bit and decodes the ``tx`` pin in a background process
  (:func:`run_on_sim` builds the simulator around it).
* :class:`VerilatorLink`: the board top under Verilator (tb/verilator/board_harness.cpp
  bit-bangs the pins in C++; bytes go through a pipe).

Keyword spotting: :func:`kws_ops` (one inference of a compiled KWT-1 job: the whole image, or
only the input when program and weights are on the board) and :func:`classify` (wav files →
labels and logits, checked against ``sim.golden.kwt``).

Command line: ``python -m sim.board (--port /dev/ttyUSB0 [--baud 115200] | --sim-verilator
[--pes 8 --lanes 16 --memory bram|sdram --sim-clk-hz 4000000]) CMD`` with CMD ``info``,
``matmul [--m 8 --k 32 --n 16 --seed 1]`` (a random int8 matmul checked against
``sim.golden.matmul``) or ``kws WAV... [--json]`` (exit status 1 if a logit differs from the
golden model); errors end with one ``error: …`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hw.board import ACK, INFO_MAGIC, NAK, PROTOCOL_VERSION, HostCmd
from hw.isa import CONFIG_NO_DELTA, Csr

from .errors import InputError, KwsError
from .program import AcceleratorError, Job

__all__ = ["LinkError", "Request", "Wait", "BoardInfo", "info", "csr_read", "csr_write", "mem_read",
           "mem_write", "resync_ops", "write_words_ops", "read_words_ops", "run_job_ops", "drive",
           "drive_async", "SerialLink", "open_serial", "SimLink", "run_on_sim", "VerilatorLink",
           "board_config", "kws_ops", "classify", "main", "MAX_WORDS", "CHUNK_WORDS"]

#: Words one MEM_READ/MEM_WRITE can move (the count field holds count − 1 in 16 bits).
MAX_WORDS = 1 << 16
#: Words per MEM_WRITE in the session helpers: a lost byte then costs one short chunk.
CHUNK_WORDS = 256
#: STATUS bits (docs/isa.md, host interface).
BUSY, HALTED, ERROR = 1, 2, 4


class LinkError(KwsError):
    """The board answered something the protocol does not allow, or not at all."""


@dataclass(frozen=True)
class Request:
    """One command: ``data`` to send, ``reply_len`` bytes to expect, ``parse(reply)`` to check
    and decode them."""
    data: bytes
    reply_len: int
    parse: Callable[[bytes], Any]
    name: str = ""


@dataclass(frozen=True)
class Wait:
    """Send nothing for ``seconds``, then discard whatever the board sent meanwhile (longer
    than the board's command timeout, 50 ms by default, this resynchronizes a link that lost a
    byte: see :func:`resync_ops`)."""
    seconds: float


@dataclass(frozen=True)
class BoardInfo:
    version: int
    lanes: int
    mem_depth: int


def _check_int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise InputError(f"{name} must be an integer in [{lo}, {hi}], not {v!r}")
    return int(v)


def _ack(name):
    def parse(reply):
        if reply != bytes([ACK]):
            raise LinkError(f"{name}: expected ACK {ACK:#04x}, got {reply.hex() or 'nothing'}"
                            + (" (NAK: the board did not know the command)" if reply == bytes([NAK]) else ""))
    return parse


def info():
    """INFO → :class:`BoardInfo` (protocol version, L, ext-memory words)."""
    def parse(reply):
        if reply[0] != INFO_MAGIC:
            raise LinkError(f"INFO: expected magic {INFO_MAGIC:#04x}, got {reply.hex()}"
                            + (" (NAK: the board does not speak this protocol)" if reply[0] == NAK else ""))
        if reply[1] != PROTOCOL_VERSION:
            raise LinkError(f"INFO: protocol version {reply[1]}, this host speaks {PROTOCOL_VERSION}")
        return BoardInfo(version=reply[1], lanes=reply[2], mem_depth=1 << reply[3])
    return Request(bytes([HostCmd.INFO]), 4, parse, "INFO")


def csr_read(adr):
    """CSR_READ of register ``adr`` (``hw.isa.Csr``) → int."""
    adr = _check_int("adr", adr, 0, 255)
    return Request(bytes([HostCmd.CSR_READ, adr]), 4, lambda r: int.from_bytes(r, "little"),
                   f"CSR_READ {adr:#04x}")


def csr_write(adr, value):
    """CSR_WRITE of ``value`` (32 bits) to register ``adr`` → None (after the ACK)."""
    adr = _check_int("adr", adr, 0, 255)
    value = _check_int("value", value, 0, (1 << 32) - 1)
    return Request(bytes([HostCmd.CSR_WRITE, adr]) + value.to_bytes(4, "little"), 1,
                   _ack("CSR_WRITE"), f"CSR_WRITE {adr:#04x}")


def mem_read(addr, count, lanes):
    """MEM_READ of ``count`` words from word address ``addr`` → uint8 array ``(count, lanes)``."""
    addr = _check_int("addr", addr, 0, (1 << 32) - 1)
    count = _check_int("count", count, 1, MAX_WORDS)
    lanes = _check_int("lanes", lanes, 1, 64)
    data = bytes([HostCmd.MEM_READ]) + addr.to_bytes(4, "little") + (count - 1).to_bytes(2, "little")
    return Request(data, count * lanes,
                   lambda r: np.frombuffer(r, dtype=np.uint8).reshape(count, lanes).copy(),
                   f"MEM_READ {addr}+{count}")


def mem_write(addr, words):
    """MEM_WRITE of ``words`` (uint8 ``(count, L)``, 1…65536 words) at word address ``addr``."""
    addr = _check_int("addr", addr, 0, (1 << 32) - 1)
    words = np.asarray(words)
    if words.ndim != 2 or words.dtype != np.uint8 or not 1 <= len(words) <= MAX_WORDS:
        raise InputError(f"words must be a uint8 array of shape (1…{MAX_WORDS}, L), "
                         f"not {words.dtype} {words.shape}")
    data = (bytes([HostCmd.MEM_WRITE]) + addr.to_bytes(4, "little")
            + (len(words) - 1).to_bytes(2, "little") + words.tobytes())
    return Request(data, 1, _ack("MEM_WRITE"), f"MEM_WRITE {addr}+{len(words)}")



# --------------------------------------------------------------------------------------------
# Sessions (generators of requests)

def resync_ops(timeout_s=0.05):
    """Wait out a half-received command (twice the board's timeout), then INFO."""
    yield Wait(2 * timeout_s)
    return (yield info())


def write_words_ops(addr, words, *, chunk=CHUNK_WORDS):
    """Write uint8 ``(n, L)`` words from ``addr`` in MEM_WRITEs of at most ``chunk`` words."""
    words = np.asarray(words, dtype=np.uint8)
    for off in range(0, len(words), chunk):
        yield mem_write(addr + off, words[off:off + chunk])


def read_words_ops(addr, count, lanes, *, chunk=CHUNK_WORDS):
    """Read ``count`` words from ``addr``; returns uint8 ``(count, lanes)``."""
    parts = []
    for off in range(0, count, chunk):
        parts.append((yield mem_read(addr + off, min(chunk, count - off), lanes)))
    return np.concatenate(parts) if parts else np.zeros((0, lanes), np.uint8)


def _runs(mask):
    """(start, stop) of every run of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def run_job_ops(job: Job, *, max_polls=100_000, check=True, regions=None):
    """Run a :class:`sim.program.Job` on the board: check INFO, write the image at word 0 (all
    but the result blocks, which the program overwrites), set PROG_BASE/PROG_LEN, clear, start,
    poll STATUS until not busy, read the counters and the result blocks.

    ``regions``: names of ``job.regions`` to write instead of the whole image, e.g.
    ``["input"]`` when the rest is on the board already (the same compiled program ran
    before: :func:`kws_ops`).

    Returns a dict: ``result`` (the (M, N) matrix, ``job.read`` of the read-back words),
    ``status``, ``pc``, ``cycles``, ``mac_cycles``, ``stall_dma``, ``stall_wb``, ``instret``,
    ``polls``. Raises :class:`sim.program.AcceleratorError` when STATUS.error is set (with
    ``check``), :class:`LinkError` on protocol errors, ``TimeoutError`` after ``max_polls``.
    """
    L = job.config.lanes
    board = yield info()
    if board.lanes != L:
        raise InputError(f"the job is for L = {L}, the board has L = {board.lanes}")
    image = np.asarray(job.image, dtype=np.uint8).reshape(-1, L)
    if len(image) > board.mem_depth:
        raise InputError(f"the image has {len(image)} words, the board's memory {board.mem_depth}")
    # Every word but the result blocks, which the program's STORE_Cs overwrite anyway.
    if regions is None:
        send = np.ones(len(image), dtype=bool)
    else:
        send = np.zeros(len(image), dtype=bool)
        for name in regions:
            if name not in job.regions:
                raise InputError(f"the job has no region {name!r} (it has "
                                 f"{', '.join(job.regions)})")
            r = job.regions[name]
            send[r.addr:r.addr + r.words] = True
    for blk in job.blocks:
        send[blk.ext_addr:blk.ext_addr + blk.rows * blk.tiles * 4] = False
    for start, stop in _runs(send):
        yield from write_words_ops(start, image[start:stop])
    yield csr_write(Csr.CTRL, 2)                        # clear a previous halt/error
    yield csr_write(Csr.PROG_BASE, job.prog_base)
    yield csr_write(Csr.PROG_LEN, job.prog_len)
    yield csr_write(Csr.CTRL, 1)
    for polls in range(1, max_polls + 1):
        status = yield csr_read(Csr.STATUS)
        if not status & BUSY:
            break
    else:
        raise TimeoutError(f"the accelerator is still busy after {max_polls} STATUS polls")
    out = {"status": status, "polls": polls, "pc": (yield csr_read(Csr.PC))}
    for name in ("CYCLES", "MAC_CYCLES", "STALL_DMA", "STALL_WB", "INSTRET"):
        out[name.lower()] = yield csr_read(Csr[name])
    if check and status & ERROR:
        raise AcceleratorError((status >> 8) & 0xFF, out["pc"], backend="board")
    if check and not status & HALTED:
        raise LinkError(f"STATUS {status:#x}: neither busy, halted nor error")
    ext = np.zeros_like(image)
    for blk in job.blocks:
        n = blk.rows * blk.tiles * 4
        ext[blk.ext_addr:blk.ext_addr + n] = yield from read_words_ops(blk.ext_addr, n, L)
    out["result"] = job.read(ext)
    return out


def drive(ops, transact):
    """Run the generator ``ops``, executing each request with ``transact(request) -> value``."""
    try:
        req = next(ops)
        while True:
            req = ops.send(transact(req))
    except StopIteration as stop:
        return stop.value


async def drive_async(ops, transact):
    """:func:`drive` with an ``async`` ``transact`` (Amaranth testbenches)."""
    try:
        req = next(ops)
        while True:
            req = ops.send(await transact(req))
    except StopIteration as stop:
        return stop.value


# --------------------------------------------------------------------------------------------
# Real serial port

class _Link:
    """The session helpers every blocking driver shares; subclasses define ``transact(req)``."""

    def transact(self, req):
        raise NotImplementedError

    def run(self, ops):
        return drive(ops, self.transact)

    def info(self):
        return self.transact(info())

    def csr_read(self, adr):
        return self.transact(csr_read(adr))

    def csr_write(self, adr, value):
        return self.transact(csr_write(adr, value))

    def mem_read(self, addr, count, lanes):
        return self.run(read_words_ops(addr, count, lanes))

    def mem_write(self, addr, words):
        return self.run(write_words_ops(addr, words))

    def run_job(self, job, **kw):
        return self.run(run_job_ops(job, **kw))


class SerialLink(_Link):
    """The protocol over a pyserial-like ``port``: ``write(bytes)``, ``read(n) -> bytes`` that
    returns fewer bytes on its timeout. Open the port with a read timeout (≥ 0.5 s); the link
    never sends a command before the previous reply is complete."""

    def __init__(self, port):
        self.port = port

    def transact(self, req):
        if isinstance(req, Wait):
            time.sleep(req.seconds)
            if hasattr(self.port, "reset_input_buffer"):
                self.port.reset_input_buffer()
            return None
        self.port.write(req.data)
        reply = bytes(self.port.read(req.reply_len))
        if len(reply) != req.reply_len:
            raise LinkError(f"{req.name}: expected {req.reply_len} reply bytes, got {len(reply)} "
                            f"(board not connected, wrong baud rate, or no bitstream loaded?)")
        return req.parse(reply)


def open_serial(device, baud=115_200, timeout=1.0):
    """A :class:`SerialLink` on ``device`` (needs pyserial: ``pip install pyserial``)."""
    try:
        import serial
    except ImportError:
        raise InputError("pyserial is not installed (pip install pyserial)") from None
    try:
        return SerialLink(serial.Serial(device, baud, timeout=timeout))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot open {device}: {e}") from None


# --------------------------------------------------------------------------------------------
# Simulated board (Amaranth testbench)

class SimLink:
    """The protocol on the UART pins of a simulated ``hw.board.BoardTop``.

    Add :meth:`receiver` as a background testbench; then ``await link.transact(ctx, req)`` or
    ``await drive_async(ops, lambda r: link.transact(ctx, r))`` from the main testbench.
    ``slack`` is how many cycles a reply may take beyond its own transmission time before
    ``TimeoutError`` (the watchdog of every transaction).
    """

    def __init__(self, top, *, slack=20_000):
        self.top = top
        self.divisor = top.divisor
        self.slack = slack
        self.received = deque()
        self.bytes_sent = 0

    async def receiver(self, ctx):
        """Decode the ``tx`` pin into :attr:`received`, forever (a background process)."""
        div, tx = self.divisor, self.top.tx
        while True:
            if ctx.get(tx):
                await ctx.negedge(tx)                   # no Python per cycle while idle
            await ctx.tick().repeat(div // 2)           # the middle of the start bit
            if ctx.get(tx):
                continue                                # a glitch
            byte = 0
            for k in range(8):
                await ctx.tick().repeat(div)
                byte |= ctx.get(tx) << k
            await ctx.tick().repeat(div)
            if not ctx.get(tx):
                raise LinkError("framing error on the board's tx line")
            self.received.append(byte)

    async def send(self, ctx, data):
        """Bit-bang ``data`` onto the ``rx`` pin (8N1)."""
        div, rx = self.divisor, self.top.rx
        for byte in data:
            for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                ctx.set(rx, bit)
                await ctx.tick().repeat(div)
        self.bytes_sent += len(data)

    async def transact(self, ctx, req):
        if isinstance(req, Wait):
            await ctx.tick().repeat(max(1, round(req.seconds * self.top.clk_hz)))
            self.received.clear()
            return None
        if self.received:
            raise LinkError(f"{len(self.received)} unexpected bytes from the board before {req.name}")
        await self.send(ctx, req.data)
        limit = req.reply_len * 10 * self.divisor + self.slack
        waited = 0
        while len(self.received) < req.reply_len:
            if waited > limit:
                raise TimeoutError(f"{req.name}: {len(self.received)} of {req.reply_len} reply bytes "
                                   f"after {waited} cycles")
            await ctx.tick().repeat(self.divisor)
            waited += self.divisor
        reply = bytes(self.received.popleft() for _ in range(req.reply_len))
        return req.parse(reply)


def run_on_sim(top, ops, *, max_cycles=None, vcd=None, slack=20_000, background=()):
    """Simulate ``top`` (a ``hw.board.BoardTop``) executing the request generator ``ops``;
    return ``(value, cycles)``: what ``ops`` returns and the clock cycles it took. Watchdogs:
    every reply must arrive within its transmission time plus ``slack`` cycles, and the whole
    run within ``max_cycles`` (``TimeoutError``). ``background``: more background testbenches
    (e.g. ``tb.sdram_model.SdramModel(...).process`` for a board top with SDRAM)."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    link = SimLink(top, slack=slack)
    box = {}

    async def bench(ctx):
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(4)
        t0 = ctx.get(cycles)
        box["value"] = await drive_async(ops, lambda r: link.transact(ctx, r))
        box["cycles"] = ctx.get(cycles) - t0

    # A free-running cycle counter read by the testbench (cheaper than counting in Python).
    cycles = Signal(64)
    m = Module()
    m.submodules.top = top
    m.d.sync += cycles.eq(cycles + 1)
    sim = Simulator(m)
    sim.add_clock(1 / top.clk_hz)
    sim.add_testbench(link.receiver, background=True)
    for process in background:
        sim.add_testbench(process, background=True)
    if max_cycles is not None:
        async def watchdog(ctx):
            await ctx.delay(max_cycles / top.clk_hz)
            raise TimeoutError(f"the simulated session ran past {max_cycles} cycles")
        sim.add_testbench(watchdog, background=True)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return box["value"], box["cycles"]


# --------------------------------------------------------------------------------------------
# Simulated board (Verilator, tb/verilator/board_harness.cpp)

class VerilatorLink(_Link):
    """The protocol on the UART pins of a ``hw.board.BoardTop`` simulated by Verilator.

    The board top is built once per configuration (``sim.backends.build_board_harness``, cached
    in ``build/verilator/board_<hash>/``) and runs as a child process: this link sends each
    request's bytes to it, the C++ harness bit-bangs them onto ``rx`` at the UART divisor and
    decodes ``tx`` (no Python per cycle), and the reply comes back through a pipe. Everything
    else — requests, sessions, checks — is the code :class:`SerialLink` runs on a real board.

    Keyword arguments are ``BoardTop``'s (``clk_hz`` default 4 MHz and ``baud`` 1 Mbaud: 4
    cycles per bit; ``mem_depth`` default 2¹⁶ words, enough for the whole KWT-1 image at
    L = 16; ``memory="sdram"``: the SDRAM controller on the C++ SDRAM model of
    tb/verilator/sdram_model.h, which checks the chip's timing rules); ``slack``: cycles a reply may take beyond its own transmission time (watchdog per
    request); ``max_cycles``: watchdog over the whole run (0: none); ``trace``: a VCD file.
    Use as a context manager (or call :meth:`close`). :attr:`cycles` is the simulated time.
    """

    def __init__(self, *, pes, lanes=16, clk_hz=4_000_000, baud=1_000_000, mem_depth=None,
                 slack=20_000, max_cycles=0, trace=None, **top_kwargs):
        import subprocess
        import tempfile

        from hw.uart import uart_divisor

        from .backends import build_board_harness

        if mem_depth is None and top_kwargs.get("memory", "bram") == "bram":
            mem_depth = 1 << 16
        if mem_depth is not None:
            top_kwargs["mem_depth"] = mem_depth
        self.top_kwargs = dict(clk_hz=clk_hz, baud=baud, pes=pes, lanes=lanes, **top_kwargs)
        self.clk_hz = clk_hz
        self.divisor = uart_divisor(clk_hz, baud)
        self.slack = _check_int("slack", slack, 0, 1 << 62)
        exe = build_board_harness(trace=bool(trace), **self.top_kwargs)
        cmd = [str(exe), "--max-cycles", str(_check_int("max_cycles", max_cycles, 0, 1 << 62))]
        if trace:
            cmd += ["--trace", str(trace)]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        self.cycles = 0
        self.bytes_sent = 0

    def _read(self, n):
        data = self.proc.stdout.read(n) if n else b""
        if len(data) != n:
            from .program import SimulationError
            self.proc.wait()
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace").strip().splitlines()
            raise SimulationError(f"the board harness stopped (exit {self.proc.returncode})"
                                  + (f": {err[-1].removeprefix('error: ')}" if err else ""))
        return data

    def _send(self, frame):
        try:
            self.proc.stdin.write(frame)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._read(1)                  # raises with the harness's message

    def transact(self, req):
        if isinstance(req, Wait):
            cycles = max(1, round(req.seconds * self.clk_hz))
            self._send(b"W" + cycles.to_bytes(8, "little"))
            self._read(1)
            self.cycles = int.from_bytes(self._read(8), "little")
            return None
        limit = req.reply_len * 10 * self.divisor + self.slack
        self._send(b"T" + len(req.data).to_bytes(4, "little") + req.data
                   + req.reply_len.to_bytes(4, "little") + limit.to_bytes(8, "little"))
        status = self._read(1)[0]
        self.cycles = int.from_bytes(self._read(8), "little")
        reply = self._read(int.from_bytes(self._read(4), "little"))
        self.bytes_sent += len(req.data)
        if status == 3:
            raise LinkError(f"{len(reply)} unexpected bytes from the board before {req.name}")
        if status == 2:
            raise LinkError("framing error on the board's tx line")
        if status == 1:
            raise TimeoutError(f"{req.name}: {len(reply)} of {req.reply_len} reply bytes after "
                               f"{limit} cycles")
        return req.parse(reply)

    def close(self):
        """End the simulation (idempotent)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"Q")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Keyword spotting on the board

def board_config(link, *, depths=None):
    """The :class:`sim.program.AccelConfig` of the board behind ``link``: P, L and the AMEM and
    BBUF depths and whether it has the delta datapath (bit 31 clear) from its CONFIG register,
    the other depths from ``depths`` (default the ULX3S build's, ``sim.kws.HW_DEPTHS``: CONFIG
    does not carry them)."""
    from .kws import HW_DEPTHS
    from .program import AccelConfig
    cfg = link.csr_read(Csr.CONFIG)
    return AccelConfig(**{**HW_DEPTHS, **(depths or {}),
                          "pes": cfg & 0xFF, "lanes": (cfg >> 8) & 0xFF,
                          "amem_depth": 1 << ((cfg >> 16) & 0xFF),
                          "bbuf_depth": 1 << ((cfg >> 24) & 0x7F),
                          "delta": not cfg & CONFIG_NO_DELTA})


def kws_ops(job, *, loaded=False, **kw):
    """One keyword inference of a compiled KWT-1 job (``sim.compiler.KwtPrograms.job``): write
    the image (``loaded``: only the ``input`` region, the program and weights being on the
    board from an earlier clip of the same compiled program), start, poll, read the logits.
    Returns :func:`run_job_ops`'s dict plus ``logits_int`` (int16 logits, one per class)."""
    out = yield from run_job_ops(job, regions=["input"] if loaded else None, **kw)
    out["logits_int"] = out["result"][0].astype(np.int64)
    return out


def classify(link, wavs, *, model=None, config=None, progress=None):
    """Keyword inference of each wav file on the board behind ``link`` (any driver). The first
    clip loads program and weights (the whole image, ≈ 0.7 MB at L = 16); later clips with the
    same program send only their input. Each result: ``file``, ``label``, ``logits`` (dequantized),
    ``logits_int``, ``golden`` (``sim.golden.kwt`` on the same input: equal bit for bit when the
    board is right), ``cycles`` (CYCLES CSR), ``bytes_sent`` and ``link_cycles`` where the link
    counts them."""
    from .compiler import KwtPrograms
    from .golden import kwt
    from .kws import DEFAULT_MODEL
    from .mfcc import mfcc
    from .paths import labels
    from .qmodel import load_qmodel
    from .wav import read_wav

    qm = load_qmodel(model or DEFAULT_MODEL)
    config = config or board_config(link)
    programs = KwtPrograms(qm, config)
    names = labels()
    scale = float(qm.scales.get("logits", 1.0))
    loaded = None
    results = []
    for path in wavs:
        x9 = qm.quantize_input(mfcc(read_wav(path))[None])[0]
        job = programs.job(x9)
        key = job.info["input_parts"]
        sent0, cyc0 = getattr(link, "bytes_sent", None), getattr(link, "cycles", None)
        out = link.run(kws_ops(job, loaded=loaded == key))
        loaded = key
        row = out["logits_int"]
        gold = np.asarray(kwt(qm, x9[None])[0], dtype=np.int64)
        res = {"file": str(path), "label": names[int(np.argmax(row))],
               "logits": (row * scale).tolist(), "logits_int": row.tolist(),
               "golden": gold.tolist(), "equal_golden": bool(np.array_equal(row, gold)),
               "golden_label": names[int(np.argmax(gold))], "cycles": out["cycles"],
               "mac_cycles": out["mac_cycles"], "stall_dma": out["stall_dma"],
               "instret": out["instret"], "pes": config.pes, "lanes": config.lanes}
        if sent0 is not None:
            res["bytes_sent"] = link.bytes_sent - sent0
        if cyc0 is not None:
            res["link_cycles"] = link.cycles - cyc0
        results.append(res)
        if progress:
            progress(res)
    return results


# --------------------------------------------------------------------------------------------
# Command line (real board)

def _demo_matmul(link, args):
    from .golden import matmul as golden_matmul
    from .program import matmul_program
    cfg = board_config(link)
    rng = np.random.default_rng(args.seed)
    a = rng.integers(-128, 128, (args.m, args.k))
    b = rng.integers(-128, 128, (args.k, args.n))
    job = matmul_program(a, b, config=cfg)
    out = link.run_job(job)
    ok = np.array_equal(out["result"], golden_matmul(a, b))
    print(f"{args.m}x{args.k}x{args.n} on P={cfg.pes} L={cfg.lanes}: "
          f"{'matches' if ok else 'DIFFERS FROM'} sim.golden.matmul; {out['cycles']} cycles")
    return 0 if ok else 1


def _demo_kws(link, args):
    def show(r):
        if args.json:
            return
        match = "equal to" if r["equal_golden"] else "DIFFERENT FROM"
        print(f"{r['file']}: {r['label']}  (logits {match} sim.golden.kwt"
              + ("" if r["equal_golden"] else f", which says {r['golden_label']}") + ")")
        print("  logits: " + " ".join(f"{v:.3f}" for v in r["logits"]))
        extra = ""
        if "link_cycles" in r:
            extra = (f"; {r['bytes_sent']} bytes to the board, {r['link_cycles']} simulated "
                     f"cycles for the whole session")
        print(f"  {r['cycles']} accelerator cycles at P={r['pes']} L={r['lanes']}{extra}",
              flush=True)

    results = classify(link, args.wav, model=args.model, progress=show)
    if args.json:
        import json
        print(json.dumps(results))
    return 0 if all(r["equal_golden"] for r in results) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.board", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device of a real board, e.g. /dev/ttyUSB0")
    where.add_argument("--sim-verilator", action="store_true",
                       help="the board top simulated by Verilator, through its UART pins "
                       "(4 cycles per bit)")
    ap.add_argument("--baud", type=int, default=115_200, help="--port: bit rate (default 115200)")
    ap.add_argument("--pes", type=int, default=8, help="--sim-verilator: P (default 8)")
    ap.add_argument("--lanes", type=int, default=16, help="--sim-verilator: L (default 16)")
    ap.add_argument("--memory", choices=("bram", "sdram"), default="bram",
                    help="--sim-verilator: the ext memory of the simulated board (default bram)")
    ap.add_argument("--sim-clk-hz", type=int, default=4_000_000,
                    help="--sim-verilator: the board's clock (default 4 MHz; the UART runs at a "
                    "quarter of it, 4 cycles per bit; the SDRAM timing follows the clock, "
                    "25000000 is the ULX3S's)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="protocol version, L, memory words, ID and CONFIG")
    mm = sub.add_parser("matmul", help="a random int8 matmul, checked against the golden model")
    for name, dflt in (("--m", 8), ("--k", 32), ("--n", 16), ("--seed", 1)):
        mm.add_argument(name, type=int, default=dflt)
    kw = sub.add_parser("kws", help="keyword inference of wav files on the board (KWT-1), "
                        "checked against sim.golden.kwt")
    kw.add_argument("wav", nargs="+")
    kw.add_argument("--model", default=None, help="int8 model file (default data/kwt1_int8.npz)")
    kw.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    link = None
    try:
        if args.sim_verilator:
            from .kws import HW_DEPTHS
            kwargs = dict(HW_DEPTHS) if (args.pes, args.lanes) == (8, 16) else {}
            if args.memory != "bram":
                kwargs["memory"] = args.memory
            link = VerilatorLink(pes=args.pes, lanes=args.lanes, clk_hz=args.sim_clk_hz,
                                 baud=round(args.sim_clk_hz / 4), **kwargs)
        else:
            link = open_serial(args.port, args.baud)
        if args.cmd == "info":
            b = link.info()
            print(f"protocol {b.version}, L = {b.lanes}, memory {b.mem_depth} words, "
                  f"ID {link.csr_read(Csr.ID):#010x}, CONFIG {link.csr_read(Csr.CONFIG):#010x}")
            return 0
        if args.cmd == "kws":
            return _demo_kws(link, args)
        return _demo_matmul(link, args)
    except (KwsError, TimeoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        if isinstance(link, VerilatorLink):
            link.close()


if __name__ == "__main__":
    sys.exit(main())
