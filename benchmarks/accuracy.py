"""Top-1 accuracy of the float KWT-1 reference and of the int8 golden model on real speech.

One pass over a folder laid out like ``../shared/data/speech_commands`` (one subfolder per
label): every clip goes through the wav reader and the MFCC front end once, then through both
models. Prints overall and per-class accuracy, the difference in percentage points, the top-1
agreement, and the same figures on the clips that were not used for calibration; writes
``build/bench/accuracy.json``.

    python benchmarks/accuracy.py [DIR] [--limit N] [--json]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sim.golden import kwt  # noqa: E402
from sim.kws import DEFAULT_MODEL, FLOAT_MODEL  # noqa: E402
from sim.kwt_float import kwt_forward  # noqa: E402
from sim.mfcc import mfcc  # noqa: E402
from sim.paths import labels, repo_root, speech_commands_dir  # noqa: E402
from sim.qmodel import load_qmodel  # noqa: E402
from sim.tflite_import import load_float_npz  # noqa: E402
from sim.wav import list_dataset, read_wav  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default=str(speech_commands_dir()))
    ap.add_argument("--limit", type=int, default=None, help="first N clips of a fixed shuffle")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    items = list_dataset(args.dir)
    if args.limit:
        idx = np.random.default_rng(0).permutation(len(items))[:args.limit]
        items = [items[i] for i in sorted(idx)]
    model, weights = load_qmodel(DEFAULT_MODEL), load_float_npz(FLOAT_MODEL)
    names = labels()
    truth = np.array([names.index(lab) for _, lab in items])
    pf, pq = [], []
    for i in tqdm(range(0, len(items), 64), desc="clips", unit="batch", file=sys.stderr):
        feats = np.stack([mfcc(read_wav(p)) for p, _ in items[i:i + 64]])
        pf.append(kwt_forward(weights, feats).argmax(1))
        pq.append(kwt(model, model.quantize_input(feats)).argmax(1))
    pf, pq = np.concatenate(pf), np.concatenate(pq)
    calib = set(model.scales.get("calibration", []))
    held = np.array([f"{lab}/{p.name}" not in calib for p, lab in items])

    def acc(pred, sel):
        return float((pred[sel] == truth[sel]).mean()) if sel.any() else float("nan")

    every = np.ones(len(items), bool)
    res = {"n": len(items), "float": acc(pf, every), "int8": acc(pq, every),
           "agreement": float((pf == pq).mean()), "n_held_out": int(held.sum()),
           "float_held_out": acc(pf, held), "int8_held_out": acc(pq, held),
           "per_class": {c: {"n": int((truth == k).sum()), "float": acc(pf, truth == k), "int8": acc(pq, truth == k)}
                         for k, c in enumerate(names)}}
    res["delta_pp"] = 100 * (res["int8"] - res["float"])
    out = repo_root() / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(res, indent=1))
    if args.json:
        print(json.dumps(res))
        return
    print(f"{'clips':24s} {res['n']}")
    print(f"{'float top-1':24s} {100 * res['float']:.2f} %")
    print(f"{'int8 golden top-1':24s} {100 * res['int8']:.2f} %  ({res['delta_pp']:+.2f} pp)")
    print(f"{'top-1 agreement':24s} {100 * res['agreement']:.2f} %")
    print(f"{'held-out clips':24s} {res['n_held_out']}: float {100 * res['float_held_out']:.2f} %, "
          f"int8 {100 * res['int8_held_out']:.2f} %")
    print("per class (float / int8):")
    for c, v in res["per_class"].items():
        print(f"  {c:10s} {v['n']:4d}  {100 * v['float']:6.2f} / {100 * v['int8']:6.2f}")


if __name__ == "__main__":
    main()
