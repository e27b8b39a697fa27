"""Keyword spotting from the command line: ``predict`` on wav files, ``eval`` over a folder.

    python -m sim.kws predict WAV... [--backend golden] [--json]
    python -m sim.kws eval DIR [--backend golden] [--float] [--limit N] [--json]

Backends: ``golden`` (the bit-exact numpy model of the accelerator); ``--float`` runs the float
reference instead. Errors (bad wav, missing model, ...) print one ``error:`` line and exit 2.
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
BACKENDS = ("golden",)
BATCH = 64


class _Golden:
    """The int8 model on the numpy golden model; logits dequantized with the model's scale."""

    def __init__(self, model_path):
        from .qmodel import load_qmodel
        self.model = load_qmodel(model_path)
        self.scale = float(self.model.scales.get("logits", 1.0))

    def run(self, feats):
        from .golden import kwt
        q = kwt(self.model, self.model.quantize_input(feats))
        return [{"logits": (row * self.scale).tolist(), "logits_int": row.tolist()} for row in q]


class _Float:
    """The float64 reference: weights from a TFLite file, or the shipped copy of the release's."""

    def __init__(self, tflite_path):
        from .tflite_import import load_float_npz, read_kwt_weights
        self.weights = read_kwt_weights(tflite_path) if tflite_path else load_float_npz(FLOAT_MODEL)

    def run(self, feats):
        from .kwt_float import kwt_forward
        return [{"logits": row.tolist()} for row in kwt_forward(self.weights, feats)]


def load_backend(name, *, model=None, use_float=False, tflite=None):
    if use_float:
        return _Float(tflite)
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return _Golden(model or DEFAULT_MODEL)


def _features(paths):
    return np.stack([mfcc(read_wav(p)) for p in paths])


def _run_all(backend, paths, progress):
    results = []
    bar = tqdm(total=len(paths), unit="clip", disable=not progress, file=sys.stderr)
    for i in range(0, len(paths), BATCH):
        chunk = paths[i:i + BATCH]
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
    results = _run_all(backend, paths, progress=len(paths) > BATCH)
    out = [{"file": str(p), **r} for p, r in zip(paths, results)]
    if args.json:
        print(json.dumps(out))
    else:
        for o in out:
            print(f"{o['file']}: {o['label']}  (top logit {max(o['logits']):.3f})")


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
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['backend']}: top-1 {100 * summary['accuracy']:.2f} % on {n} clips")
        for k, v in summary["per_class"].items():
            print(f"  {k:10s} {100 * v['accuracy']:6.2f} %  ({v['n']})")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.kws", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", default="golden", help=f"one of: {', '.join(BACKENDS)} (default golden)")
    common.add_argument("--model", default=None, help=f"int8 model file (default {DEFAULT_MODEL.relative_to(repo_root())})")
    common.add_argument("--float", action="store_true", help="run the float reference (needs the TFLite release)")
    common.add_argument("--tflite", default=None, help="TFLite model for --float (default: data/kwt1_float.npz, "
                        "the release's weights)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    p = sub.add_parser("predict", parents=[common], help="label and logits for each wav file")
    p.add_argument("wav", nargs="+")
    e = sub.add_parser("eval", parents=[common], help="top-1 accuracy over a folder with one subfolder per label")
    e.add_argument("dir")
    e.add_argument("--limit", type=int, default=None, help="evaluate N clips (fixed pseudo-random choice)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        backend = load_backend(args.backend, model=args.model, use_float=args.float, tflite=args.tflite)
        (cmd_predict if args.cmd == "predict" else cmd_eval)(args, backend)
    except KwsError as e:
        ap.exit(2, f"error: {e}\n")
    except OSError as e:
        ap.exit(2, f"error: {e.filename or ''}: {e.strerror or e}\n")


if __name__ == "__main__":
    main()
