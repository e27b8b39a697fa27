"""Run one operation on the accelerator (or its golden model) from the command line.

    python -m sim.run matmul --backend {golden,amaranth,verilator} --pes P --lanes L \\
        --a A.npy --b B.npy --out C.npy [--bias BIAS.npy] [--stats stats.json] [--waves [FILE]]

``matmul``: C = A·B (+ bias) exactly, int32; A int8 M×K, B int8 K×N (any integer dtype whose
values fit int8), bias int32 of N. M, K, N need not be multiples of P or L. ``--stats`` writes
{"cycles", "mac_ops", "utilization" = M·K·N / (cycles·P·L), the counters, ...}; on the golden
backend the cycles come from the cost model. ``--waves`` writes an FST (verilator) or VCD
(amaranth) file, by default ``build/waves/matmul_<backend>.{fst,vcd}``.

Transformer operations (sim/ops.py quantizes the float inputs with the helpers of
sim/quantize.py, calibrated on the inputs themselves; sim/compiler.py builds the program)::

    python -m sim.run {softmax,layernorm,attention,linear_attention,mhsa,ffn,encoder} --backend B --pes P \
        [--lanes L] --inputs IN.npz --out OUT.npz [--stats stats.json]

``IN.npz`` holds float arrays: softmax ``x`` [``scale``]; layernorm ``x``, ``gamma``, ``beta``
[``eps``]; attention ``q``, ``k``, ``v`` [``scale``]; mhsa ``x``, ``wq``, ``wk``, ``wv``, ``wo``
[``bo``, ``heads``, ``scale``]; ffn ``x``, ``w1``, ``w2`` [``b1``, ``b2``]; encoder the mhsa
keys plus ``gamma1``, ``beta1``, ``w1``, ``w2``, ``gamma2``, ``beta2`` [``b1``, ``b2``, ``eps``]
(weights ``[out, in]``; docs/compiler.md). ``OUT.npz`` gets ``y`` (dequantized), ``y_int``
(the accelerator's integers), ``scale`` (per column, ``y = y_int·scale``) and ``reference``
(the float64 operation). ``--stats``: cycles, mac_ops, utilization, the counters, whether the
result is bit-exact with the golden model and its error against float. ``golden`` runs the
program on the ISA interpreter (cycles from the cost model). A result that differs from the
golden model is written, then reported with exit 1.

Outputs are written whole or not at all. Bad input prints one ``error:`` line and exits 2; an
accelerator error (STATUS.error) or a simulation failure prints one ``error:`` line and exits 1.
"""
import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError, KwsError
from .golden.fixed import INT8, INT32
from .program import AccelConfig, AcceleratorError, SimulationError, matmul_program

__all__ = ["main", "load_matrix", "write_outputs"]

ROOT = Path(__file__).resolve().parent.parent
BACKEND_NAMES = ("golden", "amaranth", "verilator")


def load_matrix(path, name, lo, hi, *, ndim=2):
    """Load ``path`` (.npy) as an int64 array with integer dtype, ``ndim`` dimensions and values
    in [lo, hi]; anything else is an :class:`InputError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{name}: {p}: no such file")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{name}: {p}: not a .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{name}: {p}: not a single .npy array")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: {p}: contains NaN or infinity")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name}: {p}: dtype {arr.dtype} is not an integer type")
    if arr.ndim != ndim:
        raise InputError(f"{name}: {p}: expected {ndim} dimension(s), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{name}: {p}: empty array (shape {arr.shape})")
    if arr.min() < lo or arr.max() > hi:
        raise InputError(f"{name}: {p}: values must lie in [{lo}, {hi}], found "
                         f"[{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def write_outputs(files):
    """Write ``{path: bytes}`` atomically as a set: every file to a temporary name first, then
    all renamed; on any failure nothing is left behind."""
    tmps = []
    try:
        for path, data in files.items():
            path = Path(path)
            if path.parent and not path.parent.exists():
                raise InputError(f"{path}: folder {path.parent} does not exist")
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, path in tmps:
            os.replace(tmp, path)
        tmps = []
    finally:
        for tmp, _ in tmps:
            Path(tmp).unlink(missing_ok=True)


def _npy_bytes(arr):
    import io
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _config(args):
    return AccelConfig(pes=args.pes, lanes=args.lanes, amem_depth=args.amem_depth,
                       cmem_depth=args.cmem_depth, bbuf_depth=args.bbuf_depth,
                       pbuf_depth=args.pbuf_depth, imem_depth=args.imem_depth,
                       mem_latency=args.latency)


def _backend(args, op):
    from .backends import get_backend
    kw = {}
    if args.waves is not None:
        if args.backend == "golden":
            raise InputError("--waves needs a hardware backend (amaranth or verilator)")
        ext = "fst" if args.backend == "verilator" else "vcd"
        path = Path(args.waves or ROOT / "build" / "waves" / f"{op}_{args.backend}.{ext}")
        path.parent.mkdir(parents=True, exist_ok=True)
        kw["trace" if args.backend == "verilator" else "vcd"] = path
    return get_backend(args.backend, **kw)


def cmd_matmul(args):
    if not args.out.endswith(".npy"):
        raise InputError(f"--out {args.out}: the output must be a .npy file")
    cfg = _config(args)
    a = load_matrix(args.a, "--a", *INT8)
    b = load_matrix(args.b, "--b", *INT8)
    if a.shape[1] != b.shape[0]:
        raise InputError(f"A is {a.shape[0]}×{a.shape[1]} and B is {b.shape[0]}×{b.shape[1]}: "
                         f"K differs")
    bias = None
    if args.bias:
        bias = load_matrix(args.bias, "--bias", *INT32, ndim=1)
        if bias.shape != (b.shape[1],):
            raise InputError(f"--bias: {args.bias}: expected {b.shape[1]} values, got {bias.shape[0]}")
    job = matmul_program(a, b, config=cfg, bias=bias)
    backend = _backend(args, "matmul")
    from .backends import run_job
    c, res = run_job(job, backend)
    M, K = a.shape
    N = b.shape[1]
    cycles = int(res.counters["CYCLES"])
    stats = {
        "op": "matmul", "backend": args.backend, "pes": cfg.pes, "lanes": cfg.lanes,
        "M": M, "K": K, "N": N,
        "cycles": cycles, "mac_ops": M * K * N,
        "utilization": M * K * N / (cycles * cfg.pes * cfg.lanes) if cycles else None,
        "mac_cycles": int(res.counters["MAC_CYCLES"]),
        "counters": {k: int(v) for k, v in res.counters.items()},
        "cycles_source": "cost model" if args.backend == "golden" else "hardware CYCLES counter",
        "instructions": len(job.program), "wall_s": round(res.wall_s, 6),
        "config": {"amem_depth": cfg.amem_depth, "cmem_depth": cfg.cmem_depth,
                   "bbuf_depth": cfg.bbuf_depth, "pbuf_depth": cfg.pbuf_depth,
                   "imem_depth": cfg.imem_depth, "mem_latency": cfg.mem_latency},
    }
    if "sim_cycles_per_s" in res.info:
        stats["sim_cycles_per_s"] = res.info["sim_cycles_per_s"]
    if job.notes:
        stats["notes"] = job.notes
    files = {args.out: _npy_bytes(c.astype(np.int32))}
    if args.stats:
        files[args.stats] = (json.dumps(stats, indent=1) + "\n").encode()
    write_outputs(files)
    if not args.quiet:
        util = stats["utilization"]
        print(f"matmul {M}×{K}·{K}×{N} on {args.backend} P={cfg.pes} L={cfg.lanes}: "
              f"{cycles} cycles, utilization {100 * util:.1f} %"
              + (" (cost model)" if args.backend == "golden" else ""))
    if args.waves is not None:
        print(f"waves: {res.info.get('trace') or backend.vcd}")


def cmd_op(args):
    from .ops import cmd_op as run_op
    cfg = _config(args)
    backend = _backend(args, args.cmd)
    stats = run_op(args, cfg, None if args.backend == "golden" else backend)
    if args.waves is not None:
        print(f"waves: {getattr(backend, 'trace', None) or getattr(backend, 'vcd', None)}")
    if not stats["bit_exact_vs_golden"]:
        raise SimulationError(f"{args.cmd} on {args.backend}: the result differs from the golden "
                              f"model (outputs written to {args.out})")


def _positive(text):
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {v}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(2, f"error: {message}\n")


def main(argv=None):
    ap = _Parser(prog="python -m sim.run", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--backend", choices=BACKEND_NAMES, default="golden")
    common.add_argument("--pes", type=_positive, required=True, help="processing elements P")
    common.add_argument("--lanes", type=_positive, default=16, help="lanes per PE L (default 16)")
    common.add_argument("--amem-depth", type=_positive, default=4096)
    common.add_argument("--cmem-depth", type=_positive, default=4096)
    common.add_argument("--bbuf-depth", type=_positive, default=4096)
    common.add_argument("--pbuf-depth", type=_positive, default=64)
    common.add_argument("--imem-depth", type=_positive, default=256)
    common.add_argument("--latency", type=_positive, default=4, help="ext-memory read latency")
    common.add_argument("--stats", default=None, help="write statistics JSON here")
    common.add_argument("--waves", nargs="?", const="", default=None,
                        help="write waves (FST for verilator, VCD for amaranth)")
    common.add_argument("-q", "--quiet", action="store_true")
    mm = sub.add_parser("matmul", parents=[common], help="C = A·B (+ bias), int32")
    mm.add_argument("--a", required=True, help="A, int8 M×K (.npy)")
    mm.add_argument("--b", required=True, help="B, int8 K×N (.npy)")
    mm.add_argument("--bias", default=None, help="bias, int32 N (.npy), optional")
    mm.add_argument("--out", required=True, help="C, int32 M×N (.npy)")
    from .ops import OP_HELP, OPS, inputs_help
    for op in OPS:
        sp = sub.add_parser(op, parents=[common], help=OP_HELP[op],
                            description=f"{OP_HELP[op]}. Inputs: {inputs_help(op)}.")
        sp.add_argument("--inputs", required=True, help=inputs_help(op))
        sp.add_argument("--out", required=True,
                        help="output .npz: y (dequantized), y_int, scale, reference")
    args = ap.parse_args(argv)
    commands = {"matmul": cmd_matmul, **{op: cmd_op for op in OPS}}
    try:
        commands[args.cmd](args)
    except (AcceleratorError, SimulationError) as e:
        ap.exit(1, f"error: {e}\n")
    except KwsError as e:
        ap.exit(2, f"error: {e}\n")
    except OSError as e:
        ap.exit(2, f"error: {e.filename or ''}: {e.strerror or e}\n")


if __name__ == "__main__":
    main()
