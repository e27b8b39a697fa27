"""Delta KWT on real speech: threshold θ → fraction of MACs skipped and top-1 accuracy.

Every clip goes through the wav reader and MFCC front end once; then the float reference, the
dense int8 golden model and, for every θ, the delta golden model (``sim.golden.delta_kwt``,
delta-threshold encoding of the chosen sites' matmul inputs). Reported per θ: the fraction of
MACs skipped (executed / dense, summed over the clips), top-1 accuracy, its difference from
the dense float model in percentage points, and the top-1 agreement with the dense int8
model. Writes ``build/bench/delta.json`` and ``build/bench/delta.png``.

    python benchmarks/delta.py [DIR] [--limit 500] [--thetas 0,2,4,8,16,24,32]
        [--sites qkv,scores,pv,wo,ffn1,ffn2]

RTL cycles are not in this table: the column-partitioned delta dataflow that turns skipped
MACs into skipped cycles (docs/architecture.md, *Delta mode*) is not built yet.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sim.golden import kwt  # noqa: E402
from sim.golden.delta_kwt import SITES, kwt_delta  # noqa: E402
from sim.kws import DEFAULT_MODEL, FLOAT_MODEL  # noqa: E402
from sim.kwt_float import kwt_forward  # noqa: E402
from sim.mfcc import mfcc  # noqa: E402
from sim.paths import labels, speech_commands_dir  # noqa: E402
from sim.qmodel import load_qmodel  # noqa: E402
from sim.tflite_import import load_float_npz  # noqa: E402
from sim.wav import list_dataset, read_wav  # noqa: E402

OUT_DIR = ROOT / "build" / "bench"
BATCH = 64


def _csv(kind, parse):
    def f(text):
        try:
            return [parse(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {kind}: {text!r}")
    return f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default=str(speech_commands_dir()))
    ap.add_argument("--limit", type=int, default=500, help="clips of a fixed shuffle (0 = all)")
    ap.add_argument("--thetas", type=_csv("integers", int), default=[0, 2, 4, 8, 16, 24, 32])
    ap.add_argument("--sites", type=_csv("sites", str), default=[s for s in SITES if s != "embed"])
    args = ap.parse_args(argv)
    bad = set(args.sites) - set(SITES)
    if bad:
        ap.error(f"unknown sites {sorted(bad)}; sites are {', '.join(SITES)}")
    items = list_dataset(args.dir)
    if args.limit:
        idx = np.random.default_rng(0).permutation(len(items))[:args.limit]
        items = [items[i] for i in sorted(idx)]
    model, weights = load_qmodel(DEFAULT_MODEL), load_float_npz(FLOAT_MODEL)
    names = labels()
    truth = np.array([names.index(lab) for _, lab in items])
    batches = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
    feats = [np.stack([mfcc(read_wav(p)) for p, _ in b])
             for b in tqdm(batches, desc="mfcc", unit="batch", file=sys.stderr)]
    xs = [model.quantize_input(f) for f in feats]
    pf = np.concatenate([kwt_forward(weights, f).argmax(1) for f in feats])
    pq = np.concatenate([kwt(model, x).argmax(1) for x in xs])
    acc_f = float((pf == truth).mean())
    rows = []
    for theta in tqdm(args.thetas, desc="θ", unit="θ", file=sys.stderr):
        th = {s: theta for s in args.sites}
        pred, dense, executed = [], 0, 0
        for x in xs:
            logits, macs = kwt_delta(model, x, th)
            pred.append(logits.argmax(1))
            dense += int(macs["dense"].sum())
            executed += int(macs["executed"].sum())
        pred = np.concatenate(pred)
        acc = float((pred == truth).mean())
        rows.append({"theta": theta, "skipped": 1 - executed / dense, "accuracy": acc,
                     "delta_pp_vs_float": 100 * (acc - acc_f),
                     "agreement_int8": float((pred == pq).mean()),
                     "macs_dense_per_clip": dense / len(items),
                     "macs_executed_per_clip": executed / len(items)})
    res = {"n": len(items), "sites": args.sites, "float_accuracy": acc_f,
           "int8_accuracy": float((pq == truth).mean()), "rows": rows}
    print(f"{len(items)} clips; float {100 * acc_f:.2f} %, dense int8 "
          f"{100 * res['int8_accuracy']:.2f} %; delta sites: {', '.join(args.sites)}")
    print(f"{'θ':>4} | {'MACs skipped':>12} | {'top-1':>7} | {'vs float':>8} | {'agree int8':>10}")
    for r in rows:
        print(f"{r['theta']:>4} | {100 * r['skipped']:>11.1f} % | {100 * r['accuracy']:>6.2f} % | "
              f"{r['delta_pp_vs_float']:>+7.2f} pp | {100 * r['agreement_int8']:>9.2f} %")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = OUT_DIR / "delta.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(OUT_DIR / "delta.json")
    _plot(res, OUT_DIR / "delta.png")
    print(OUT_DIR / "delta.json")


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    th = [r["theta"] for r in res["rows"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(th, [100 * r["skipped"] for r in res["rows"]], "o-", label="MACs skipped (%)")
    ax2 = ax.twinx()
    ax2.plot(th, [100 * r["accuracy"] for r in res["rows"]], "s-", color="C1", label="top-1 (%)")
    ax2.axhline(100 * res["float_accuracy"], color="C1", ls=":", label="float top-1")
    ax.set_xlabel("θ (all delta sites)")
    ax.set_ylabel("MACs skipped (%)")
    ax2.set_ylabel("top-1 accuracy (%)")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


if __name__ == "__main__":
    main()
