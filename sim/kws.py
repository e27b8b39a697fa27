"""Keyword spotting from the command line: ``predict`` on wav files, ``eval`` over a folder.

    python -m sim.kws predict WAV... [--backend B] [--pes 8] [--lanes 16] [--json]
    python -m sim.kws eval DIR [--backend B] [--float] [--limit N] [--json]
        [--delta-threshold θ | site=θ,... | recommended]

Backends: ``golden`` (the bit-exact numpy model of the accelerator, fast); ``interp`` (the
compiled program, sim/compiler.py, on the functional ISA interpreter); ``amaranth`` and
``verilator`` (the compiled program on the simulated hardware, through
:func:`sim.backends.run_job`). ``--float`` runs the float reference instead.

Every result carries the label, the logits, and the accelerator's figures for the clip at
``--pes``/``--lanes``: ``cycles`` (the hardware's CYCLES counter on amaranth/verilator; the
cost model, :class:`sim.program.CostModel`, on golden/interp — ``cycles_source`` says
which), ``mac_ops`` (useful multiply-accumulates), ``mac_utilization`` = mac_ops / (cycles·P·L)
and ``layer_cycles`` (embed, layer0…, head). The hardware's counters are read only at the end
of a run, so the per-layer breakdown always comes from the cost model's timeline of the same
program (docs/compiler.md). Errors (bad wav, missing model, a model that does not fit the
accelerator, ...) print one ``error:`` line and exit 2; a failed simulation exits 1.

``--delta-threshold`` runs Delta KWT (docs/delta.md, :func:`sim.golden.delta_kwt.kwt_delta`):
one θ for every matmul-input site but the MFCC input, per-site values (``qkv=24,ffn1=24,...``;
unnamed sites stay dense), or ``recommended`` (the documented operating point,
:data:`RECOMMENDED_DELTA`). Each result then carries ``macs_dense`` and ``macs_executed``; on
the golden backend instead of the cycle figures, on ``interp``/``amaranth``/``verilator`` next
to them: the compiled program uses DMATMUL at the sites the hardware supports (``qkv``, ``wo``,
``ffn1``, ``ffn2``; the others stay dense, listed in ``delta_sites_dense``), and
``golden_match`` says whether its logits equal the golden model's with the same thresholds.
Delta mode holds the weight slices in AMEM: KWT-1 at P = 8 needs ``--amem-depth 16384``.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import InputError, KwsError
from .mfcc import mfcc
from .paths import labels, repo_root
from .wav import list_dataset, read_wav

__all__ = ["main", "load_backend", "DEFAULT_MODEL"]

DEFAULT_MODEL = repo_root() / "data" / "kwt1_int8.npz"
FLOAT_MODEL = repo_root() / "data" / "kwt1_float.npz"
BACKENDS = ("golden", "interp", "amaranth", "verilator")
BATCH = 64
#: Delta KWT operating point (docs/delta.md, benchmarks/delta.py).
RECOMMENDED_DELTA = {"qkv": 16, "scores": 16, "pv": 16, "wo": 16, "ffn1": 16, "ffn2": 16}
# the hardware top's default depths (docs/architecture.md)
HW_DEPTHS = dict(amem_depth=8192, cmem_depth=4096, bbuf_depth=4096, pbuf_depth=64,
                 imem_depth=256)


class _Accel:
    """The int8 model: on the numpy golden model (``golden``) or as the compiled program on a
    backend; logits dequantized with the model's scale, plus the accelerator's figures."""

    def __init__(self, name, model_path, config, **compile_kw):
        from .compiler import KwtPrograms
        from .qmodel import load_qmodel
        self.name = name
        self.model = load_qmodel(model_path)
        self.scale = float(self.model.scales.get("logits", 1.0))
        self.config = config
        self.programs = KwtPrograms(self.model, config, **compile_kw)
        self.backend = None
        self.waves = None          # per clip: the wave file the next run writes (or None)
        if name in ("amaranth", "verilator"):
            from .backends import get_backend
            self.backend = get_backend(name)

    def _figures(self, job, counters=None):
        sections, model_counters = self.programs.stats(job)
        P, L = self.config.pes, self.config.lanes
        cycles = int((counters or model_counters)["CYCLES"])
        return {"cycles": cycles,
                "cycles_source": "cost model" if counters is None or self.backend is None
                else f"{self.name} CYCLES counter",
                "mac_ops": int(job.mac_ops),
                "mac_utilization": job.mac_ops / (cycles * P * L) if cycles else None,
                "layer_cycles": sections, "layer_cycles_source": "cost model",
                "instructions": job.prog_len, "pes": P, "lanes": L}

    def run(self, feats):
        from .compiler import run_compiled
        from .golden import kwt
        x9 = self.model.quantize_input(feats)
        out = []
        if self.name == "golden":
            q = kwt(self.model, x9)
        for n, x in enumerate(x9):
            job = self.programs.job(x, patch=self.name != "golden")
            waves = self._wave_path()
            if self.name == "golden":
                row, counters = q[n], None
            else:
                res, counters, _ = run_compiled(job, self.backend or "interp")
                row = res[0]
            out.append({"logits": (row * self.scale).tolist(), "logits_int": row.tolist(),
                        **self._figures(job, counters)})
            if waves:
                out[-1]["waves"] = str(waves)
        return out

    def _wave_path(self):
        """Point the backend at the next clip's wave file (``self.waves``: paths still to
        write, one per clip); return the file it will write."""
        if self.backend is None or not self.waves:
            return None
        path = Path(self.waves.pop(0))
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.name == "verilator":
            from .backends import fst_available
            path = path.with_suffix(".fst" if fst_available() else ".vcd")
            self.backend.trace = path
        else:
            path = path.with_suffix(".vcd")
            self.backend.vcd = path
        return path


class _Delta:
    """Delta KWT on the golden model: logits plus dense and executed MAC counts per clip."""

    def __init__(self, model_path, theta):
        from .qmodel import load_qmodel
        self.model = load_qmodel(model_path)
        self.scale = float(self.model.scales.get("logits", 1.0))
        self.theta = theta

    def run(self, feats):
        from .golden.delta_kwt import kwt_delta
        q, macs = kwt_delta(self.model, self.model.quantize_input(feats), self.theta)
        return [{"logits": (row * self.scale).tolist(), "logits_int": row.tolist(),
                 "macs_dense": int(d), "macs_executed": int(e), "delta_threshold": self.theta}
                for row, d, e in zip(q, macs["dense"], macs["executed"])]


class _DeltaAccel(_Accel):
    """Delta KWT as the compiled program with DMATMUL (``interp``, ``amaranth``,
    ``verilator``): the sites the hardware supports (sim.compiler.DELTA_HW_SITES; the others
    stay dense and are listed in ``delta_sites_dense``); each result carries the cycles (the
    backend's CYCLES counter, or the cost model with the clip's Δ counts on interp), the
    golden MAC counts of the same thresholds and whether the logits equal the golden
    :func:`sim.golden.delta_kwt.kwt_delta`."""

    def __init__(self, name, model_path, config, theta):
        from .compiler import DELTA_HW_SITES
        self.theta = {s: t for s, t in theta.items() if s in DELTA_HW_SITES}
        self.dense_sites = sorted(set(theta) - set(self.theta))
        if not self.theta:
            raise InputError(f"--delta-threshold names no site the accelerator supports "
                             f"({', '.join(DELTA_HW_SITES)})")
        super().__init__(name, model_path, config, delta=self.theta)

    def _figures(self, job, counters=None):
        fig = super()._figures(job, counters)
        # the per-layer timeline replays the program without data: every DMATMUL as if each
        # token changed in all K features
        fig["layer_cycles_source"] = "cost model, DMATMUL taken as dense (nnz = K)"
        return fig

    def run(self, feats):
        from .golden.delta_kwt import kwt_delta
        out = super().run(feats)
        q, macs = kwt_delta(self.model, self.model.quantize_input(feats), self.theta)
        for r, row, d, e in zip(out, q, macs["dense"], macs["executed"]):
            r.update(macs_dense=int(d), macs_executed=int(e), delta_threshold=self.theta,
                     delta_sites_dense=self.dense_sites,
                     golden_match=bool(np.array_equal(r["logits_int"], row)))
        return out


def parse_delta_threshold(text):
    """``θ`` (every site but the MFCC input), ``site=θ,...`` or ``recommended`` → site dict."""
    from .golden.delta_kwt import SITES, normalize_thresholds
    text = text.strip()
    if text == "recommended":
        return dict(RECOMMENDED_DELTA)
    try:
        if "=" in text:
            out = {}
            for part in text.split(","):
                site, _, value = part.partition("=")
                out[site.strip()] = int(value)
        else:
            out = {s: int(text) for s in SITES if s != "embed"}
        th = normalize_thresholds(out)
    except ValueError as e:
        raise InputError(f"bad --delta-threshold {text!r}: {e}; give θ (0..255), "
                         f"site=θ,... (sites {', '.join(SITES)}) or 'recommended'") from None
    return {k: v for k, v in th.items() if v is not None}


class _Float:
    """The float64 reference: weights from a TFLite file, or the shipped copy of the release's."""

    def __init__(self, tflite_path):
        from .tflite_import import load_float_npz, read_kwt_weights
        self.weights = read_kwt_weights(tflite_path) if tflite_path else load_float_npz(FLOAT_MODEL)

    def run(self, feats):
        from .kwt_float import kwt_forward
        return [{"logits": row.tolist()} for row in kwt_forward(self.weights, feats)]


def load_backend(name, *, model=None, use_float=False, tflite=None, config=None, delta=None):
    """``config``: the accelerator (an :class:`sim.program.AccelConfig`; default P = 8, L = 16
    with the hardware's default depths); ``delta``: per-site thresholds (Delta KWT, golden
    backend only)."""
    if use_float:
        if delta is not None:
            raise InputError("--delta-threshold applies to the int8 model, not to --float")
        return _Float(tflite)
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    if delta is not None and name == "golden":
        return _Delta(model or DEFAULT_MODEL, delta)
    if config is None:
        from .program import AccelConfig
        config = AccelConfig(pes=8, lanes=16, **HW_DEPTHS)
    if delta is not None:
        return _DeltaAccel(name, model or DEFAULT_MODEL, config, delta)
    return _Accel(name, model or DEFAULT_MODEL, config)


def _features(paths):
    return np.stack([mfcc(read_wav(p)) for p in paths])


def _is_simulated(backend):
    return getattr(backend, "backend", None) is not None


def _run_all(backend, paths, progress):
    results = []
    bar = tqdm(total=len(paths), unit="clip", disable=not progress, file=sys.stderr)
    step = 1 if _is_simulated(backend) else BATCH   # simulated hardware: seconds per clip
    for i in range(0, len(paths), step):
        chunk = paths[i:i + step]
        results += backend.run(_features(chunk))
        bar.update(len(chunk))
    bar.close()
    names = labels()
    for r in results:
        r["label"] = names[int(np.argmax(r["logits"]))]
    return results


def _select(items, limit, seed=0):
    """``limit`` clips in a fixed pseudo-random order (so a small limit still mixes classes)."""
    if limit is None or limit >= len(items):
        return items
    idx = np.random.default_rng(seed).permutation(len(items))[:limit]
    return [items[i] for i in sorted(idx)]


def cmd_predict(args, backend):
    paths = [Path(p) for p in args.wav]
    if args.waves is not None:
        if getattr(backend, "backend", None) is None:
            raise InputError("--waves needs a hardware backend (amaranth or verilator)")
        folder = Path(args.waves or repo_root() / "build" / "waves")
        # one file per clip, numbered so that equal file names in different folders differ
        backend.waves = [folder / f"kws_{i}_{p.stem}" for i, p in enumerate(paths)]
    # a simulated-hardware run takes seconds per clip: show progress from two clips on
    results = _run_all(backend, paths,
                       progress=len(paths) > (1 if _is_simulated(backend) else BATCH))
    out = [{"file": str(p), **r} for p, r in zip(paths, results)]
    if args.json:
        print(json.dumps(out))
    else:
        for o in out:
            print(f"{o['file']}: {o['label']}  (top logit {max(o['logits']):.3f})")
            print("  logits: " + " ".join(f"{v:.3f}" for v in o["logits"]))
            if "macs_dense" in o:
                print(f"  delta: {o['macs_executed']} of {o['macs_dense']} MACs executed")
            if "golden_match" in o:
                print(f"  delta sites {o['delta_threshold']} on DMATMUL (dense: "
                      f"{', '.join(o['delta_sites_dense']) or 'none'}); logits "
                      f"{'equal' if o['golden_match'] else 'DIFFER FROM'} golden kwt_delta")
            if "cycles" in o:
                print(f"  {o['cycles']} cycles ({o['cycles_source']}) at P={o['pes']} "
                      f"L={o['lanes']}, {o['mac_ops']} MACs, MAC utilization "
                      f"{100 * o['mac_utilization']:.1f} %")
                print(f"  per layer ({o['layer_cycles_source']}): " + ", ".join(
                    f"{k} {v}" for k, v in o["layer_cycles"].items()))


def cmd_eval(args, backend):
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    items = _select(list_dataset(args.dir), args.limit)
    if not items:
        raise InputError(f"{args.dir} holds no clips")
    results = _run_all(backend, [p for p, _ in items], progress=not args.no_progress)
    per = {}
    for (_, truth), r in zip(items, results):
        n, c = per.get(truth, (0, 0))
        per[truth] = (n + 1, c + (r["label"] == truth))
    n = len(items)
    correct = sum(c for _, c in per.values())
    summary = {"n": n, "accuracy": correct / n,
               "per_class": {k: {"n": v[0], "accuracy": v[1] / v[0]} for k, v in sorted(per.items())},
               "backend": "float" if args.float else args.backend}
    if results and "macs_dense" in results[0]:
        dense = sum(r["macs_dense"] for r in results)
        executed = sum(r["macs_executed"] for r in results)
        summary.update(delta_threshold=results[0]["delta_threshold"],
                       macs_dense=dense / n, macs_executed=executed / n,
                       macs_skipped=1 - executed / dense)
        if "golden_match" in results[0]:
            summary.update(golden_match=all(r["golden_match"] for r in results),
                           delta_sites_dense=results[0]["delta_sites_dense"])
    if results and "cycles" in results[0]:
        cyc = np.array([r["cycles"] for r in results], dtype=np.float64)
        summary.update(
            pes=results[0]["pes"], lanes=results[0]["lanes"],
            cycles_mean=float(cyc.mean()), cycles_max=int(cyc.max()),
            cycles_source=results[0]["cycles_source"],
            mac_ops_mean=float(np.mean([r["mac_ops"] for r in results])),
            mac_utilization_mean=float(np.mean([r["mac_utilization"] for r in results])),
            layer_cycles_mean={k: float(np.mean([r["layer_cycles"][k] for r in results]))
                               for k in results[0]["layer_cycles"]})
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['backend']}: top-1 {100 * summary['accuracy']:.2f} % on {n} clips")
        for k, v in summary["per_class"].items():
            print(f"  {k:10s} {100 * v['accuracy']:6.2f} %  ({v['n']})")
        if "macs_dense" in summary:
            print(f"  delta {summary['delta_threshold']}: {100 * summary['macs_skipped']:.1f} % "
                  f"of the MACs skipped ({summary['macs_executed']:.0f} of "
                  f"{summary['macs_dense']:.0f} per clip)")
        if "golden_match" in summary:
            print(f"  logits {'equal' if summary['golden_match'] else 'DIFFER FROM'} golden "
                  f"kwt_delta on every clip (dense sites: "
                  f"{', '.join(summary['delta_sites_dense']) or 'none'})")
        if "cycles_mean" in summary:
            print(f"  {summary['cycles_mean']:.0f} cycles per clip ({summary['cycles_source']}) "
                  f"at P={summary['pes']} L={summary['lanes']}, MAC utilization "
                  f"{100 * summary['mac_utilization_mean']:.1f} %")
            print("  per layer (cost model): " + ", ".join(
                f"{k} {v:.0f}" for k, v in summary["layer_cycles_mean"].items()))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.kws", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", default="golden", help=f"one of: {', '.join(BACKENDS)} (default golden)")
    common.add_argument("--pes", type=int, default=8, help="processing elements P (default 8)")
    common.add_argument("--lanes", type=int, default=16, help="lanes per PE L (default 16)")
    common.add_argument("--amem-depth", type=int, default=HW_DEPTHS["amem_depth"],
                        help=f"AMEM elements per PE (default {HW_DEPTHS['amem_depth']})")
    common.add_argument("--imem-depth", type=int, default=HW_DEPTHS["imem_depth"],
                        help=f"IMEM instructions (default {HW_DEPTHS['imem_depth']})")
    common.add_argument("--model", default=None, help=f"int8 model file (default {DEFAULT_MODEL.relative_to(repo_root())})")
    common.add_argument("--float", action="store_true", help="run the float reference (needs the TFLite release)")
    common.add_argument("--tflite", default=None, help="TFLite model for --float (default: data/kwt1_float.npz, "
                        "the release's weights)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_argument("--delta-threshold", default=None, metavar="θ",
                        help="Delta KWT: θ (0..255) for every matmul input but the MFCC input, "
                        "site=θ,... per site (sites: embed, qkv, scores, pv, wo, ffn1, ffn2), or "
                        "'recommended'; on interp/amaranth/verilator DMATMUL at qkv, wo, ffn1, "
                        "ffn2 (needs --amem-depth 16384 for KWT-1 at P = 8)")
    p = sub.add_parser("predict", parents=[common], help="label and logits for each wav file")
    p.add_argument("wav", nargs="+")
    p.add_argument("--waves", nargs="?", const="", default=None, metavar="DIR",
                   help="write the waves of each clip's run into DIR (default build/waves): "
                   "kws_<n>_<name>.fst (verilator; VCD without lz4) or .vcd (amaranth); a whole "
                   "KWT-1 inference is ≈ 0.67 M cycles of the whole design: expect large files")
    e = sub.add_parser("eval", parents=[common], help="top-1 accuracy over a folder with one subfolder per label")
    e.add_argument("dir")
    e.add_argument("--limit", type=int, default=None, help="evaluate N clips (fixed pseudo-random choice)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        config = None
        if not args.float:
            from .program import AccelConfig
            config = AccelConfig(pes=args.pes, lanes=args.lanes,
                                 **{**HW_DEPTHS, "amem_depth": args.amem_depth,
                                    "imem_depth": args.imem_depth})
        delta = None if args.delta_threshold is None else parse_delta_threshold(args.delta_threshold)
        backend = load_backend(args.backend, model=args.model, use_float=args.float,
                               tflite=args.tflite, config=config, delta=delta)
        (cmd_predict if args.cmd == "predict" else cmd_eval)(args, backend)
    except KwsError as e:
        from .program import AcceleratorError, SimulationError
        ap.exit(1 if isinstance(e, (AcceleratorError, SimulationError)) else 2, f"error: {e}\n")
    except OSError as e:
        ap.exit(2, f"error: {e.filename or ''}: {e.strerror or e}\n")


if __name__ == "__main__":
    main()
