"""Cycles and MAC utilization of the KWT matmul tiles on the accelerator RTL.

    /work/venv/bin/python benchmarks/matmul.py [--pes 1,2,4,8,16] [--lanes 16]
        [--backend verilator|amaranth|golden] [--latency 4] [--seed 0]

For every shape (KWT-1: QKV / out projections, scores, P·V, FFN up and down) and every P, one
``sim.program.matmul_program`` runs on the backend (default: Verilator, one harness build per
P, reused while the Verilog is unchanged); each result is checked bit for bit against
``sim.golden.matmul``. Reported per run: the hardware's CYCLES, MAC_CYCLES and ARRAY_CYCLES
counters, utilization = M·K·N / (CYCLES·P·L) (the whole program: program load, transfers,
compute), the MATMUL-only utilization M·K·N / (ARRAY_CYCLES·P·L) (cycles with a MATMUL in the
array), the ideal ``⌈M/P⌉·⌈N/L⌉·K``, the cost model's estimate and Verilator's simulated cycles
per second. Writes ``build/bench/matmul.json`` and ``build/bench/matmul.png``.

Without a hardware top (``hw.accelerator``) it falls back to the cost model and says so loudly:
those cycles are estimates, not measurements.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sim.backends import build_harness, get_backend, hardware_status, run_job  # noqa: E402
from sim.golden import matmul  # noqa: E402
from sim.program import AccelConfig, CostModel, matmul_program  # noqa: E402

SHAPES = [(99, 64, 192), (99, 64, 99), (99, 99, 64), (99, 64, 256), (99, 256, 64)]
NAMES = {(99, 64, 192): "QKV projection", (99, 64, 99): "scores q·kᵀ", (99, 99, 64): "P·V",
         (99, 64, 256): "FFN up", (99, 256, 64): "FFN down"}
OUT_DIR = ROOT / "build" / "bench"


def run(pes_list, lanes, backend_name, latency, seed):
    rng = np.random.default_rng(seed)
    operands = {s: (rng.integers(-128, 128, (s[0], s[1])).astype(np.int8),
                    rng.integers(-128, 128, (s[1], s[2])).astype(np.int8)) for s in SHAPES}
    backend = get_backend(backend_name)
    rows, builds = [], {}
    total = len(pes_list) * len(SHAPES)
    with tqdm(total=total, unit="run") as bar:
        for P in pes_list:
            cfg = AccelConfig(pes=P, lanes=lanes, mem_latency=latency)
            if backend_name == "verilator":
                bar.set_description(f"build P={P}")
                t0 = time.perf_counter()
                build_harness(cfg)
                builds[P] = round(time.perf_counter() - t0, 1)
            for shape in SHAPES:
                M, K, N = shape
                bar.set_description(f"P={P} {M}×{K}·{K}×{N}")
                a, b = operands[shape]
                job = matmul_program(a, b, config=cfg)
                c, res = run_job(job, backend)
                if not np.array_equal(c, matmul(a, b)):
                    raise SystemExit(f"MISMATCH against golden: P={P} shape {shape}")
                cyc = int(res.counters["CYCLES"])
                est = CostModel(mem_latency=latency).run(job.program, cfg)["CYCLES"]
                ideal = -(-M // P) * -(-N // lanes) * K
                rows.append({
                    "shape": f"{M}x{K}x{N}", "name": NAMES[shape], "M": M, "K": K, "N": N,
                    "pes": P, "lanes": lanes, "cycles": cyc,
                    "mac_cycles": int(res.counters["MAC_CYCLES"]),
                    "array_cycles": int(res.counters.get("ARRAY_CYCLES", 0)),
                    "stall_dma": int(res.counters["STALL_DMA"]),
                    "stall_wb": int(res.counters["STALL_WB"]),
                    "instret": int(res.counters["INSTRET"]),
                    "ideal_cycles": ideal, "model_cycles": est,
                    "mac_ops": M * K * N,
                    "utilization": M * K * N / (cyc * P * lanes),
                    "array_utilization": (M * K * N / (int(res.counters["ARRAY_CYCLES"]) * P * lanes)
                                          if res.counters.get("ARRAY_CYCLES") else None),
                    "ideal_utilization": M * K * N / (ideal * P * lanes),
                    "sim_cycles_per_s": res.info.get("sim_cycles_per_s"),
                    "wall_s": round(res.wall_s, 4),
                })
                bar.update(1)
    return rows, builds


def table(rows, source):
    head = (f"{'shape':>12} {'op':<15} {'P':>3} {'cycles':>8} {'MAC cyc':>8} {'array':>8} "
            f"{'ideal':>7} {'model':>8} {'util %':>7} {'MM %':>6} {'ideal %':>7} {'sim cyc/s':>10}")
    lines = [f"cycles from: {source}; util = M·K·N/(cycles·P·L), MM = M·K·N/(array·P·L) "
             f"(array: ARRAY_CYCLES, a MATMUL in flight)", head, "-" * len(head)]
    for r in rows:
        cps = f"{r['sim_cycles_per_s']:,.0f}" if r["sim_cycles_per_s"] else "-"
        mm = f"{100 * r['array_utilization']:.1f}" if r["array_utilization"] else "-"
        lines.append(f"{r['shape']:>12} {r['name']:<15} {r['pes']:>3} {r['cycles']:>8} "
                     f"{r['mac_cycles']:>8} {r['array_cycles'] or '-':>8} {r['ideal_cycles']:>7} "
                     f"{r['model_cycles']:>8} {100 * r['utilization']:>7.1f} {mm:>6} "
                     f"{100 * r['ideal_utilization']:>7.1f} {cps:>10}")
    return "\n".join(lines)


def plot(rows, path, source):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for shape in SHAPES:
        key = f"{shape[0]}x{shape[1]}x{shape[2]}"
        rs = [r for r in rows if r["shape"] == key]
        ps = [r["pes"] for r in rs]
        ax1.plot(ps, [100 * r["utilization"] for r in rs], "o-", label=f"{key} ({NAMES[shape]})")
        ax2.plot(ps, [r["cycles"] for r in rs], "o-", label=key)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["pes"] for r in rows}))
        ax.set_xticklabels(sorted({r["pes"] for r in rows}))
        ax.set_xlabel("PEs (P), L = 16")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("MAC utilization, % (M·K·N / (cycles·P·L))")
    ax1.set_ylim(0, 100)
    ax2.set_yscale("log")
    ax2.set_ylabel("cycles")
    ax1.legend(fontsize=7)
    fig.suptitle(f"KWT matmul tiles — {source}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pes", default="1,2,4,8,16")
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--backend", default="verilator", choices=("verilator", "amaranth", "golden"))
    ap.add_argument("--latency", type=int, default=4, help="ext-memory read latency (cycles)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pes_list = [int(p) for p in args.pes.split(",")]
    backend = args.backend
    note = None
    if backend != "golden":
        ok, why = hardware_status()
        if not ok:
            note = (f"!!! THE RTL IS NOT AVAILABLE ({why}): FALLING BACK TO THE COST MODEL. "
                    f"THESE CYCLES ARE ESTIMATES, NOT MEASUREMENTS. !!!")
            print("\n" + "!" * len(note) + "\n" + note + "\n" + "!" * len(note) + "\n",
                  file=sys.stderr)
            backend = "golden"
    source = {"verilator": "RTL CYCLES counter (Verilator)", "amaranth": "RTL CYCLES counter "
              "(Amaranth simulator)", "golden": "COST MODEL ESTIMATE (no RTL)"}[backend]
    rows, builds = run(pes_list, args.lanes, backend, args.latency, args.seed)
    print(table(rows, source))
    cps = [r["sim_cycles_per_s"] for r in rows if r["sim_cycles_per_s"]]
    if cps:
        print(f"\nVerilator simulated cycles per second: median {np.median(cps):,.0f} "
              f"(min {min(cps):,.0f}, max {max(cps):,.0f}); harness builds (s): {builds}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    doc = {"source": source, "backend": backend, "lanes": args.lanes,
           "mem_latency": args.latency, "note": note, "builds_s": builds, "runs": rows,
           "command": "python benchmarks/matmul.py " + " ".join(argv or sys.argv[1:])}
    tmp = OUT_DIR / "matmul.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(OUT_DIR / "matmul.json")
    plot(rows, OUT_DIR / "matmul.png", source)
    print(f"wrote {OUT_DIR / 'matmul.json'} and {OUT_DIR / 'matmul.png'}")
    if note:
        print("\n" + note, file=sys.stderr)


if __name__ == "__main__":
    main()
