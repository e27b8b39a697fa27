"""Per-site Delta KWT thresholds: a greedy search on a tuning split, judged on held-out clips.

One θ for every site (benchmarks/delta.py) spends accuracy where it buys few MACs: the sites
differ in MAC share (Q/K/V 19.8 %, q·kᵀ 10.2 %, P·V 10.2 %, Wo 6.6 %, W1 26.4 %, W2 26.4 %)
and in how much their inputs move from token to token. This script searches per-site θ on the
golden model (``sim.golden.delta_kwt.kwt_delta``, bit-exact with the hardware's numbers):

1. Split the clips of ``DIR`` (a fixed shuffle) into a tuning part (``--tune`` clips, the
   model's calibration clips first) and the held-out rest.
2. Start from θ = ``--start`` at every site. At every step try raising each site's θ to its
   next value in ``--grid``; among the candidates whose top-1 agreement with the dense int8
   model on the tuning clips stays ≥ ``--min-agree``, take the one that skips the most MACs
   per agreement lost. Stop when no candidate qualifies or ``--target`` skipped is reached
   (then refine: try every further single-site raise that keeps the bound).
3. Report every step's thresholds, MACs skipped and accuracy on the tuning and held-out clips
   against the dense float and int8 models; write ``build/bench/delta_search.json`` and
   ``build/bench/delta_search.png`` (MACs skipped vs accuracy, tuning and held-out).

    python benchmarks/delta_search.py [DIR] [--tune 1200] [--min-agree 0.99]
        [--grid 0,4,8,12,16,20,24,32,40,48,64] [--target 0.85]

Agreement with the dense int8 model is the search criterion because it is far less noisy than
accuracy on a few hundred clips; accuracy is what is reported.
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
BATCH = 128
DELTA_SITES = [s for s in SITES if s != "embed"]


def _csv_ints(text):
    try:
        return sorted({int(v) for v in text.split(",") if v})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")


class Evaluator:
    """Delta KWT on fixed int8 inputs: predictions and MAC counts for a threshold dict."""

    def __init__(self, model, xs):
        self.model, self.xs = model, xs
        self.cache = {}

    def __call__(self, th):
        key = tuple(th[s] for s in DELTA_SITES)
        if key not in self.cache:
            pred, dense, executed = [], 0, 0
            for x in self.xs:
                logits, macs = kwt_delta(self.model, x, th)
                pred.append(logits.argmax(1))
                dense += int(macs["dense"].sum())
                executed += int(macs["executed"].sum())
            self.cache[key] = (np.concatenate(pred), 1 - executed / dense)
        return self.cache[key]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default=str(speech_commands_dir()))
    ap.add_argument("--tune", type=int, default=1200, help="tuning clips (rest: held out)")
    ap.add_argument("--grid", type=_csv_ints, default=[0, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64])
    ap.add_argument("--start", type=int, default=0, help="θ at every site to start from")
    ap.add_argument("--min-agree", type=float, default=0.99,
                    help="least top-1 agreement with dense int8 on the tuning clips")
    ap.add_argument("--target", type=float, default=0.85, help="stop at this fraction skipped")
    args = ap.parse_args(argv)
    if args.start not in args.grid:
        ap.error(f"--start {args.start} is not in --grid")
    if not 0 < args.min_agree <= 1:
        ap.error("--min-agree must be in (0, 1]")
    items = list_dataset(args.dir)
    if not items:
        ap.error(f"{args.dir} holds no clips")
    model, weights = load_qmodel(DEFAULT_MODEL), load_float_npz(FLOAT_MODEL)
    calib = set(model.scales.get("calibration", []))
    order = np.random.default_rng(1).permutation(len(items))
    is_cal = np.array([f"{lab}/{p.name}" in calib for p, lab in items])
    order = np.concatenate([order[is_cal[order]], order[~is_cal[order]]])
    if not 0 < args.tune < len(items):
        ap.error(f"--tune must be between 1 and {len(items) - 1}")
    parts = {"tune": order[:args.tune], "held": order[args.tune:]}
    names = labels()
    data = {}
    for part, idx in parts.items():
        sel = [items[i] for i in sorted(idx)]
        truth = np.array([names.index(lab) for _, lab in sel])
        feats = [np.stack([mfcc(read_wav(p)) for p, _ in sel[i:i + BATCH]])
                 for i in tqdm(range(0, len(sel), BATCH), desc=f"mfcc {part}", unit="batch",
                               file=sys.stderr)]
        xs = [model.quantize_input(f) for f in feats]
        pf = np.concatenate([kwt_forward(weights, f).argmax(1) for f in feats])
        pq = np.concatenate([kwt(model, x).argmax(1) for x in xs])
        data[part] = dict(truth=truth, pf=pf, pq=pq, ev=Evaluator(model, xs))

    def score(part, th):
        d = data[part]
        pred, skipped = d["ev"](th)
        return {"skipped": skipped, "accuracy": float((pred == d["truth"]).mean()),
                "agree_int8": float((pred == d["pq"]).mean())}

    th = dict.fromkeys(DELTA_SITES, args.start)
    steps = [{"thresholds": dict(th), "tune": score("tune", th)}]
    bar = tqdm(desc="search", unit="step", file=sys.stderr)
    while True:
        cur = steps[-1]["tune"]
        best = None
        for s in DELTA_SITES:
            nxt = [g for g in args.grid if g > th[s]]
            if not nxt:
                continue
            cand = dict(th, **{s: nxt[0]})
            sc = score("tune", cand)
            if sc["agree_int8"] < args.min_agree or sc["skipped"] <= cur["skipped"]:
                continue
            gain = (sc["skipped"] - cur["skipped"]) / max(cur["agree_int8"] - sc["agree_int8"], 1e-4)
            if best is None or gain > best[0]:
                best = (gain, cand, sc)
        bar.update()
        if best is None:
            break
        th = best[1]
        steps.append({"thresholds": dict(th), "tune": best[2]})
        if best[2]["skipped"] >= args.target:
            break
    bar.close()
    for st in steps:
        st["held"] = score("held", st["thresholds"])
    res = {"tune_clips": len(parts["tune"]), "held_clips": len(parts["held"]),
           "min_agree": args.min_agree, "grid": args.grid,
           "float_accuracy": {p: float((d["pf"] == d["truth"]).mean()) for p, d in data.items()},
           "int8_accuracy": {p: float((d["pq"] == d["truth"]).mean()) for p, d in data.items()},
           "steps": steps}
    fa, qa = res["float_accuracy"], res["int8_accuracy"]
    print(f"tuning {res['tune_clips']} clips (float {100 * fa['tune']:.2f} %, int8 "
          f"{100 * qa['tune']:.2f} %), held out {res['held_clips']} (float "
          f"{100 * fa['held']:.2f} %, int8 {100 * qa['held']:.2f} %); bound: agreement with "
          f"int8 ≥ {100 * args.min_agree:.1f} % on the tuning clips")
    print(" | ".join(f"{s:>6}" for s in DELTA_SITES) + " | skipped (held) | top-1 held | vs float")
    for st in steps:
        h = st["held"]
        print(" | ".join(f"{st['thresholds'][s]:>6}" for s in DELTA_SITES)
              + f" | {100 * h['skipped']:>12.1f} % | {100 * h['accuracy']:>8.2f} % | "
              f"{100 * (h['accuracy'] - fa['held']):>+6.2f} pp")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = OUT_DIR / "delta_search.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(OUT_DIR / "delta_search.json")
    _plot(res, OUT_DIR / "delta_search.png")
    print(OUT_DIR / "delta_search.json")


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for part, style in (("tune", "o-"), ("held", "s-")):
        ax.plot([100 * s[part]["skipped"] for s in res["steps"]],
                [100 * s[part]["accuracy"] for s in res["steps"]], style,
                label=f"{part} ({res[part + '_clips']} clips)")
        ax.axhline(100 * res["float_accuracy"][part], ls=":", color="C0" if part == "tune" else "C1")
    ax.set_xlabel("MACs skipped (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("greedy per-site θ search (dotted: dense float)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


if __name__ == "__main__":
    main()
