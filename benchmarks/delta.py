"""Delta KWT on real speech: threshold θ → fraction of MACs skipped and top-1 accuracy.

Every clip goes through the wav reader and MFCC front end once; then the float reference, the
dense int8 golden model and, for every θ, the delta golden model (``sim.golden.delta_kwt``,
delta-threshold encoding of the chosen sites' matmul inputs). Reported per θ: the fraction of
MACs skipped (executed / dense, summed over the clips), top-1 accuracy, its difference from
the dense float model in percentage points, and the top-1 agreement with the dense int8
model. Writes ``build/bench/delta.json`` and ``build/bench/delta.png``.

    python benchmarks/delta.py [DIR] [--limit 500] [--thetas 0,2,4,8,16,24,32]
        [--sites qkv,scores,pv,wo,ffn1,ffn2] [--rtl-clips 3] [--rtl-backend interp]

Cycles: for the first ``--rtl-clips`` clips, the whole inference compiled with DMATMUL
(``compile_kwt(delta=…)``, the sites of ``--sites`` the hardware supports: qkv, wo, ffn1,
ffn2; scores and pv stay dense) runs on ``--rtl-backend`` (``interp``: the cost model with the
clip's Δ counts, within a few cycles of the RTL; ``amaranth``/``verilator``: the RTL's CYCLES
counter) at P = 8, L = 16, AMEM 16384, next to the dense program on the same clips: column
``cycles`` is Σ delta CYCLES / Σ dense CYCLES, ``skipped hw`` the MACs skipped at the hardware
sites alone on those clips, ``=golden`` whether every logit equals ``kwt_delta``.
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
    ap.add_argument("--rtl-clips", type=int, default=3, help="clips for the cycles column (0: none)")
    ap.add_argument("--rtl-backend", default="interp", help="interp, amaranth or verilator")
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
    rtl = _Rtl(model, xs, args) if args.rtl_clips else None
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
                     "macs_executed_per_clip": executed / len(items),
                     **(rtl.row(theta) if rtl else {})})
    res = {"n": len(items), "sites": args.sites, "float_accuracy": acc_f,
           "int8_accuracy": float((pq == truth).mean()), "rows": rows,
           "rtl": rtl.info() if rtl else None}
    print(f"{len(items)} clips; float {100 * acc_f:.2f} %, dense int8 "
          f"{100 * res['int8_accuracy']:.2f} %; delta sites: {', '.join(args.sites)}")
    if rtl:
        print(f"cycles: {rtl.info()['clips']} clips on {args.rtl_backend}, sites "
              f"{', '.join(rtl.sites)}, dense program {rtl.info()['dense_cycles_mean']:.0f} "
              f"cycles per clip")
    print(f"{'θ':>4} | {'MACs skipped':>12} | {'top-1':>7} | {'vs float':>8} | {'agree int8':>10}"
          + (f" | {'skipped hw':>10} | {'cycles':>7} | =golden" if rtl else ""))
    for r in rows:
        print(f"{r['theta']:>4} | {100 * r['skipped']:>11.1f} % | {100 * r['accuracy']:>6.2f} % | "
              f"{r['delta_pp_vs_float']:>+7.2f} pp | {100 * r['agreement_int8']:>9.2f} %"
              + (f" | {100 * r['rtl_skipped_hw_sites']:>8.1f} % | {r['cycles_rel_dense']:>7.3f} | "
                 f"{r['rtl_golden_match']}" if rtl else ""))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = OUT_DIR / "delta.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(OUT_DIR / "delta.json")
    _plot(res, OUT_DIR / "delta.png")
    print(OUT_DIR / "delta.json")


class _Rtl:
    """The cycles column: compiled programs (dense and DMATMUL) on the first clips."""

    def __init__(self, model, xs, args):
        from sim.compiler import DELTA_HW_SITES, KwtPrograms, run_compiled
        from sim.program import AccelConfig
        self.run_compiled = run_compiled
        self.model, self.backend = model, args.rtl_backend
        self.x = np.concatenate(xs)[:args.rtl_clips]
        self.sites = [s for s in args.sites if s in DELTA_HW_SITES]
        self.cfg = AccelConfig(pes=8, lanes=16, amem_depth=16384, cmem_depth=4096,
                               bbuf_depth=4096, pbuf_depth=64, imem_depth=256)
        self.KwtPrograms = KwtPrograms
        self.dense = [self._cycles(KwtPrograms(model, self.cfg), x)[0] for x in self.x]

    def _cycles(self, programs, x):
        y, counters, _ = self.run_compiled(programs.job(x), self.backend)
        return int(counters["CYCLES"]), y[0]

    def row(self, theta):
        th = {s: theta for s in self.sites}
        progs = self.KwtPrograms(self.model, self.cfg, delta=th)
        cyc, match, dense, executed = [], True, 0, 0
        for x in self.x:
            c, y = self._cycles(progs, x)
            want, macs = kwt_delta(self.model, x, th)
            match &= bool(np.array_equal(y, want))
            cyc.append(c)
            dense += int(macs["dense"])
            executed += int(macs["executed"])
        return {"cycles_rel_dense": sum(cyc) / sum(self.dense), "rtl_cycles_per_clip": cyc,
                "rtl_skipped_hw_sites": 1 - executed / dense, "rtl_golden_match": match}

    def info(self):
        return {"clips": len(self.x), "backend": self.backend, "sites": self.sites,
                "dense_cycles": self.dense, "dense_cycles_mean": float(np.mean(self.dense)),
                "config": "P=8 L=16 AMEM 16384"}


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
    if res.get("rtl"):
        ax.plot(th, [100 * (1 - r["cycles_rel_dense"]) for r in res["rows"]], "^-", color="C2",
                label=f"cycles saved (%, {res['rtl']['backend']}, {res['rtl']['clips']} clips)")
    ax.set_xlabel("θ (all delta sites)")
    ax.set_ylabel("MACs skipped (%)")
    ax2.set_ylabel("top-1 accuracy (%)")
    fig.legend(loc="lower center", ncol=2, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


if __name__ == "__main__":
    main()
