"""Write the Verilog of the whole accelerator: ``python -m hw.generate --pes 8 [options]``.

One file holds the top module and all its submodules; it is written atomically (the whole
file or nothing) and its path is the last line printed. Bad parameters end with one
``error: …`` line and exit status 2.
"""
import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from .accelerator import DEFAULTS, DEPTH_LIMITS, Accelerator, check_params

__all__ = ["main", "generate"]

REPO = Path(__file__).resolve().parent.parent


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit 2 (argparse prints usage as well)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser():
    p = _Parser(
        prog="python -m hw.generate",
        description="Emit the Verilog of the PE-array accelerator (docs/architecture.md): "
                    "one file, module NAME, ports clk, rst, bus__*, mem__cmd__*, mem__rsp__*.")
    p.add_argument("--pes", required=True, metavar="P",
                   help="processing elements, 1…64 (required)")
    p.add_argument("--lanes", default=str(DEFAULTS["lanes"]), metavar="L",
                   help="lanes per PE and ext-memory word bytes: 4, 8, 16 or 32 "
                        f"(default {DEFAULTS['lanes']})")
    for name in DEPTH_LIMITS:
        what = {"amem_depth": "int9 A elements per PE, 2L…65536",
                "cmem_depth": "int32 results per PE, L…65536",
                "bbuf_depth": "BBUF words of L bytes, 16…65536",
                "pbuf_depth": "PBUF column tiles, 1…16384",
                "imem_depth": "instructions, 2…65536"}[name]
        p.add_argument("--" + name.replace("_", "-"), default=str(DEFAULTS[name]), metavar="N",
                       help=f"{what}, a power of two (default {DEFAULTS[name]})")
    p.add_argument("--no-delta", action="store_true",
                   help="leave out the delta datapath (DMATMUL then raises ILLEGAL_OPCODE; "
                        "CONFIG bit 31 set): a smaller design")
    p.add_argument("--name", default=None,
                   help="Verilog module name (default accel_p{P}_l{L}, with _nodelta)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="output file (default build/NAME.v in the repository)")
    return p


def _int(name, text):
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer, not {text!r}") from None


def generate(params, *, name=None, out=None):
    """Emit the accelerator with ``params`` (Accelerator keyword arguments) to ``out``;
    return the path. Raises ``ValueError``/``TypeError``/``OSError`` on bad input."""
    from amaranth.back import verilog

    check_params(**{**DEFAULTS, **params})
    name = name or (f"accel_p{params['pes']}_l{params.get('lanes', DEFAULTS['lanes'])}"
                    + ("" if params.get("delta", True) else "_nodelta"))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"--name must be a Verilog identifier, not {name!r}")
    path = Path(out) if out else REPO / "build" / f"{name}.v"
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    top = Accelerator(**params)
    try:
        text = verilog.convert(top, name=name, emit_src=False)
    except BaseException:
        top._MustUse__used = True   # it was used; no "never used" warning on top of the error
        raise
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        params = {"pes": _int("pes", args.pes), "lanes": _int("lanes", args.lanes)}
        for name in DEPTH_LIMITS:
            params[name] = _int(name, getattr(args, name))
        if args.no_delta:
            params["delta"] = False
        path = generate(params, name=args.name, out=args.out)
    except (ValueError, TypeError, OSError) as e:
        msg = str(e)
        for name in ("pes", "lanes", *DEPTH_LIMITS):   # name the option as typed
            msg = re.sub(rf"^{name}\b", "--" + name.replace("_", "-"), msg)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(f"P={params['pes']} L={params['lanes']} "
          + " ".join(f"{k}={params[k]}" for k in DEPTH_LIMITS)
          + (" no-delta" if args.no_delta else ""))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
