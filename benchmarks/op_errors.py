"""Float-level error of every transformer operation: the int8 golden model (what the RTL
computes bit for bit) against the float64 operation, on random inputs of KWT-1 sizes.

    python benchmarks/op_errors.py [--seeds 5] [--tokens 99] [--dim 64] [--mlp 256]

Each operation goes through ``sim.ops.prepare`` exactly as ``python -m sim.run OP`` does
(quantize with scales calibrated on the input itself, golden integer result, dequantize) and is
compared with its float64 reference: relative RMS error ‖y − ref‖ / ‖ref‖ and the largest
absolute error relative to max |ref|, each the worst over the seeds. Inputs: N(0, 1) activations
(scores N(0, 3)), weights N(0, 1/fan_in), LayerNorm γ = 1 + N(0, 0.1). Writes
``build/bench/op_errors.json`` and ``build/bench/op_errors.png``.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from sim.ops import prepare  # noqa: E402

OUT = ROOT / "build" / "bench"


def inputs(rng, N, D, F):
    def w(*s, sc=1.0):
        return rng.normal(0, sc, s)
    att = dict(wq=w(D, D, sc=D ** -.5), wk=w(D, D, sc=D ** -.5), wv=w(D, D, sc=D ** -.5),
               wo=w(D, D, sc=D ** -.5), bo=w(D, sc=.1))
    ff = dict(w1=w(F, D, sc=D ** -.5), b1=w(F, sc=.1), w2=w(D, F, sc=F ** -.5), b2=w(D, sc=.1))
    ln = dict(gamma1=1 + w(D, sc=.1), beta1=w(D, sc=.1), gamma2=1 + w(D, sc=.1),
              beta2=w(D, sc=.1))
    return [
        ("softmax", "softmax", dict(x=w(N, N, sc=3))),
        ("layernorm", "layernorm", dict(x=w(N, D, sc=2) + 1, gamma=1 + w(D, sc=.1),
                                        beta=w(D, sc=.1))),
        ("attention", "attention", dict(q=w(N, D), k=w(N, D), v=w(N, D))),
        ("linear_attention", "linear_attention", dict(q=w(N, D), k=w(N, D), v=w(N, D))),
        ("mhsa", "mhsa", dict(x=w(N, D), **att)),
        ("mhsa (linear)", "mhsa", dict(x=w(N, D), **att, linear=1)),
        ("ffn", "ffn", dict(x=w(N, D), **ff)),
        ("encoder", "encoder", dict(x=w(N, D), **att, **ff, **ln)),
        ("encoder (linear)", "encoder", dict(x=w(N, D), **att, **ff, **ln, linear=1)),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=99)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--mlp", type=int, default=256)
    args = ap.parse_args(argv)
    rows = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        for name, op, arrays in inputs(rng, args.tokens, args.dim, args.mlp):
            pr = prepare(op, arrays, pes=8, lanes=16)
            y, ref = pr.dequantize(pr.golden), np.asarray(pr.reference, dtype=np.float64)
            rms = float(np.sqrt(((y - ref) ** 2).mean() / (ref ** 2).mean()))
            mx = float(np.abs(y - ref).max() / np.abs(ref).max())
            r = rows.setdefault(name, {"op": op, "rel_rms": [], "max_abs_rel": []})
            r["rel_rms"].append(rms)
            r["max_abs_rel"].append(mx)
    print(f"int8 golden vs float64, N = {args.tokens}, D = {args.dim}, F = {args.mlp}, "
          f"{args.seeds} seeds (worst / mean)")
    print(f"{'operation':>18} {'rel RMS worst':>14} {'mean':>8} {'max|err|/max|ref|':>18}")
    for name, r in rows.items():
        print(f"{name:>18} {100 * max(r['rel_rms']):13.2f}% {100 * np.mean(r['rel_rms']):7.2f}% "
              f"{100 * max(r['max_abs_rel']):17.2f}%")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "op_errors.json").write_text(json.dumps(
        {"tokens": args.tokens, "dim": args.dim, "mlp": args.mlp, "seeds": args.seeds,
         "operations": rows}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(rows)
    ax.bar(range(len(names)), [100 * max(rows[n]["rel_rms"]) for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("relative RMS error (%)")
    ax.set_title("int8 operations vs float64 (worst of %d seeds)" % args.seeds)
    fig.tight_layout()
    fig.savefig(OUT / "op_errors.png", dpi=120)
    print(f"wrote {OUT / 'op_errors.json'}, {OUT / 'op_errors.png'}")


if __name__ == "__main__":
    main()
