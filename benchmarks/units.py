"""Synthesize every hardware unit on its own and tabulate resources and Fmax.

    /work/venv/bin/python benchmarks/units.py [--family ecp5|ice40] [--freq 150] [--units Exp,Divide]

Each unit that exists in ``hw/`` (units being written elsewhere are skipped with a note) is
built with its default parameters through :func:`hw.synth.synthesize` (out-of-context on ECP5,
fixed nextpnr seed). Writes ``build/bench/units.json`` and ``build/bench/units.png`` (Fmax per
unit against the goal line).
"""
import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

import hw  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from hw.synth import synthesize  # noqa: E402

UNITS = ["Exp", "Divide", "Rsqrt", "MAC", "Lane", "Reduce", "DeltaEncoder", "Activation"]
# Where each unit is expected; any other hw module defining the class is found by the scan below.
HOMES = {"Exp": "exp", "Divide": "div", "Rsqrt": "rsqrt", "MAC": "mac", "Lane": "lane", "Reduce": "reduce",
         "DeltaEncoder": "delta", "Activation": "activation"}
OUT_DIR = ROOT / "build" / "bench"


def find_unit(name):
    """Return ``(class, None)`` or ``(None, reason)`` for unit ``name``."""
    errors = []
    modules = [HOMES.get(name)] + [m.name for m in pkgutil.iter_modules(hw.__path__) if m.name != HOMES.get(name)]
    for mod in modules:
        if mod is None or mod == "synth":
            continue
        try:
            module = importlib.import_module(f"hw.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"hw.{mod}":
                errors.append(f"hw.{mod}: {e}")
            continue
        except Exception as e:  # a colleague's module in progress
            errors.append(f"hw.{mod}: {type(e).__name__}: {e}")
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, wiring.Component):
            return cls, None
    return None, "not in hw/ yet" + (f" ({'; '.join(errors)})" if errors else "")


def run(units, family, freq, seed):
    results, notes = [], []
    for name in (bar := tqdm(units, unit="unit")):
        bar.set_description(name)
        cls, why = find_unit(name)
        if cls is None:
            notes.append(f"{name}: skipped, {why}")
            continue
        try:
            dut = cls()
        except Exception as e:
            notes.append(f"{name}: skipped, no default parameters ({type(e).__name__}: {e})")
            continue
        try:
            r = synthesize(dut, name=name.lower(), family=family, freq_mhz=freq, seed=seed)
        except Exception as e:
            notes.append(f"{name}: synthesis failed ({type(e).__name__}: {str(e).splitlines()[0]})")
            continue
        r["unit"] = name
        r["module"] = cls.__module__
        notes += [f"{name}: {n}" for n in r["notes"]]
        r["latency"] = getattr(dut, "LATENCY", None) or getattr(dut, "latency", None)
        results.append(r)
    return results, notes


def table(results, goal):
    head = ("| unit | latency | LUT | FF | DSP | BRAM | Fmax MHz | critical path |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|\n")
    rows = []
    for r in results:
        mark = "" if r["fmax_mhz"] >= goal else " (below goal)"
        lat = r.get("latency")
        rows.append(f"| {r['unit']} | {'—' if lat is None else lat} | {r['luts']} | {r['ffs']} | {r['dsps']} | "
                    f"{r['brams']} | {r['fmax_mhz']:.1f}{mark} | {r['critical_path']} |")
    return head + "\n".join(rows)


def plot(results, goal, family, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["unit"] for r in results]
    fmax = [r["fmax_mhz"] for r in results]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names) + 1.5), 3.6))
    colors = ["tab:green" if f >= goal else "tab:red" for f in fmax]
    bars = ax.bar(names, fmax, color=colors)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(goal, color="black", linestyle="--", linewidth=1, label=f"goal {goal:g} MHz")
    ax.set_ylabel("Fmax (MHz)")
    ax.set_title(f"Units on their own, {family.upper()} ({results[0]['device'] if results else ''})")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, max(fmax + [goal]) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("ecp5", "ice40"), default="ecp5")
    ap.add_argument("--freq", type=float, default=150.0, help="target and goal clock in MHz")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placer seed")
    ap.add_argument("--units", default=",".join(UNITS), help="comma-separated subset of " + ",".join(UNITS))
    args = ap.parse_args(argv)
    units = [u for u in args.units.split(",") if u]
    bad = [u for u in units if u not in UNITS]
    if bad:
        ap.error(f"unknown unit(s): {', '.join(bad)}")

    t0 = time.monotonic()
    results, notes = run(units, args.family, args.freq, args.seed)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.family == "ecp5" else f"_{args.family}"
    (OUT_DIR / f"units{suffix}.json").write_text(json.dumps(
        {"family": args.family, "goal_mhz": args.freq, "seed": args.seed, "units": results, "notes": notes},
        indent=2))
    if results:
        plot(results, args.freq, args.family, OUT_DIR / f"units{suffix}.png")
    print(table(results, args.freq))
    for n in notes:
        print(f"note: {n}")
    print(f"({time.monotonic() - t0:.0f} s; {OUT_DIR / f'units{suffix}.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
