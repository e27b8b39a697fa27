"""Whole-model benchmark: KWT-1 on one real clip, compiled to one program, on the accelerator RTL.

    /work/venv/bin/python benchmarks/kwt.py [--backend verilator|amaranth|interp]
        [--pes 1,2,4,8,16] [--lanes 16] [--detail 8] [--clip WAV] [--clips N] [--cold-build]

For every P of ``--pes`` the int8 KWT-1 (``data/kwt1_int8.npz``) is compiled for one clip
(``sim.compiler.compile_kwt``) and run on the backend; the logits are checked bit for bit
against ``sim.golden.kwt`` (exit status 1 on any mismatch or failed run, after the report is
written).

What is measured and what is modelled:

* **measured** (amaranth/verilator): the hardware's counters at HALT — CYCLES (the total, used
  for every utilization and latency figure), MAC_CYCLES, ARRAY_CYCLES, STALL_DMA, STALL_WB,
  INSTRET — and the wall times (compile, Verilog emission + Verilator build, one simulated
  inference) and Verilator's simulated cycles per second;
* **modelled**: the split of the cycles over sections (embedding, layer 0 … 11, head) and
  over operations (Q/K/V projections, scores, softmax, P·V, Wo, residual adds, LayerNorms, FFN
  W1 + GELU, FFN W2, waits). The hardware only exposes totals, so the split comes from the
  cost model's timeline of the same program (``sim.compiler.section_cycles``,
  ``sim.program.CostModel``): a compute instruction is charged the time from the end of the
  previous compute instruction to its own end (the part before it starts goes to "wait":
  program load, loads it waits for, dispatch), the tail after the last one (STORE_C, HALT) to
  "store+halt". The charges add up to the cost model's total, which is printed beside the
  measured CYCLES with its error.

MAC utilization = MACs / (CYCLES·P·L), with MACs either the dense count of the KWT-1 network
(every product of every matmul of the float model: 73.7 M) or the useful count of the program
(what it computes: the last layer runs only the class token's row after K and V).
``--clips N`` runs N clips of the Speech Commands folder (a fixed shuffle, as
benchmarks/accuracy.py) at the detail P and compares the predictions and logits with the
golden model. The latency uses the Fmax of a ``python -m hw.build`` report
(``build/board/*/report.json`` or ``build/*report*.json``, key ``fmax_mhz``) for the same P
and L, if one exists. Writes ``build/bench/kwt.json``, ``build/bench/kwt_layers.png`` (cycles
per layer stacked by operation) and ``build/bench/kwt_pes.png`` (cycles vs P) (``--name``
changes the ``kwt`` prefix).
"""
import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hw.isa import Dst, Flag, Op  # noqa: E402
from sim.compiler import KwtPrograms, compile_kwt, run_compiled, section_cycles  # noqa: E402
from sim.errors import InputError, KwsError  # noqa: E402
from sim.golden import kwt  # noqa: E402
from sim.kws import DEFAULT_MODEL, HW_DEPTHS  # noqa: E402
from sim.mfcc import mfcc  # noqa: E402
from sim.paths import labels, shipped_clips_dir, speech_commands_dir  # noqa: E402
from sim.program import AccelConfig, CostModel  # noqa: E402
from sim.qmodel import load_qmodel  # noqa: E402
from sim.wav import list_dataset, read_wav  # noqa: E402

OUT_DIR = ROOT / "build" / "bench"
DEFAULT_CLIP = shipped_clips_dir() / "yes" / "022cd682_nohash_0.wav"
BACKENDS = ("verilator", "amaranth", "interp")
# operation categories, in the order of a layer (plot colours and table columns)
OPS = ("embed", "Q proj", "K proj", "V proj", "scores", "softmax", "P·V", "Wo", "add+LN",
       "FFN W1+GELU", "FFN W2", "head", "wait", "store+halt")
ROW_OPS = (Op.SOFTMAX, Op.LAYERNORM, Op.RADD)


# --------------------------------------------------------------------------------------------
# MAC counts

def dense_macs(model):
    """Every multiply-accumulate of the float KWT's matmuls on one clip: the input projection of
    the frames (the class token is concatenated, not projected), per layer Q/K/V, q·kᵀ and P·V
    per head, Wo, the two FFN matrices, and the head on the class token."""
    c = model.config
    D, F, H, N, layers = c["dim"], c["mlp_dim"], c["heads"], c["tokens"], c["num_layers"]
    n_in, classes = model.embed_w.shape[1], model.head_w.shape[0]
    d = D // H
    parts = {"embed": (N - 1) * n_in * D,
             "layer": 3 * N * D * D + 2 * H * N * N * d + N * D * D + 2 * N * D * F,
             "head": D * classes}
    return parts["embed"] + layers * parts["layer"] + parts["head"], parts


def instr_macs(i):
    """Useful multiply-accumulates of a MATMUL instruction: rows · K · N (``count`` = N)."""
    return int(i["rows"]) * int(i["k"]) * int(i["count"]) if i["op"] == Op.MATMUL else 0


# --------------------------------------------------------------------------------------------
# Per-operation breakdown from the cost model's timeline

def classify(i, section, seen_act):
    """The operation category of a compute instruction of a compiled KWT (sim/compiler.py's
    lowering: the fields tell the steps apart)."""
    op = i["op"]
    if section == "embed":
        return "embed"
    if section == "head":
        return "head"
    if op == Op.SOFTMAX:
        return "softmax"
    if op in (Op.LAYERNORM, Op.RADD):
        return "add+LN"
    flags, dst = Flag(i["flags"]), Dst(i["dst"])
    if dst == Dst.BBUF_T:
        return "K proj"
    if dst == Dst.BBUF_ROWS:
        return "V proj"
    if flags & Flag.RSCALE:
        return "P·V"
    if flags & Flag.ACT:
        return "FFN W1+GELU"
    if dst == Dst.AMEM:
        return "Q proj"
    if dst == Dst.CMEM and not flags & (Flag.BIAS | Flag.ACCUM | Flag.REQ):
        return "scores"
    return "FFN W2" if seen_act else "Wo"


def op_breakdown(job, cost=None):
    """Cost-model cycles of ``job`` per section and operation category.

    Returns ``(per_section, model_counters)``: ``per_section[name][category]`` cycles, summing
    to ``section_cycles(job)`` per section and to the model's CYCLES overall."""
    cost = cost or CostModel(mem_latency=job.config.mem_latency)
    times = []
    counters = cost.run(job.program, job.config, timeline=times)
    instrs = job.program.instrs
    sec_of = {}
    for name, lo, hi in job.sections:
        for pc in range(lo, hi):
            sec_of[pc] = name
    out = {name: {} for name, _, _ in job.sections}
    prev, seen_act, cur = 0, False, None
    macs = {name: {} for name, _, _ in job.sections}
    for pc, (start, end) in enumerate(times):
        i = instrs[pc]
        if i["op"] != Op.MATMUL and i["op"] not in ROW_OPS:
            continue
        sec = sec_of[pc]
        if sec != cur:
            cur, seen_act = sec, False
        cat = classify(i, sec, seen_act)
        seen_act = seen_act or cat == "FFN W1+GELU"
        charge = max(0, end - prev)
        wait = min(charge, max(0, start - prev))
        d = out[sec]
        d["wait"] = d.get("wait", 0) + wait
        d[cat] = d.get(cat, 0) + charge - wait
        macs[sec][cat] = macs[sec].get(cat, 0) + instr_macs(i)
        prev = max(prev, end)
    last = job.sections[-1][0]
    out[last]["store+halt"] = out[last].get("store+halt", 0) + counters["CYCLES"] - prev
    # the embedding's useful MACs use K = 40 (its input is split into int8 parts)
    macs["embed"]["embed"] = job.section_macs.get("embed", 0)
    return out, counters, macs


# --------------------------------------------------------------------------------------------
# Configuration, Fmax

def fit_config(model, x, P, L, latency):
    """The hardware's default depths, each memory grown to the next power of two the compiler
    asks for (KWT-1 at P < 4 needs larger AMEM/CMEM); returns ``(config, job)``."""
    depths = dict(HW_DEPTHS)
    for _ in range(10):
        cfg = AccelConfig(pes=P, lanes=L, mem_latency=latency, **depths)
        try:
            return cfg, compile_kwt(model, x, config=cfg)
        except InputError as e:
            msg = str(e)
            m = re.search(r"(AMEM|CMEM) needs (\d+)", msg)
            if m:
                key = m.group(1).lower() + "_depth"
                depths[key] = 1 << (int(m.group(2)) - 1).bit_length()
                continue
            m = re.search(r"--imem-depth (\d+)", msg)
            if m:
                depths["imem_depth"] = int(m.group(1))
                continue
            raise
    raise InputError(f"no memory sizes found for P={P}, L={L}")


def find_fmax(P, L):
    """``(fmax_mhz, clock_mhz, report path, stale)`` of a ``hw.build`` report for P and L, the
    newest one; ``stale``: the report is older than a file of hw/. None if there is none."""
    found = []
    for path in list((ROOT / "build").glob("*report*.json")) + \
            list((ROOT / "build" / "board").glob("*/report.json")):
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        params = rep.get("params", {})
        if rep.get("fmax_mhz") and params.get("pes") == P and params.get("lanes", 16) == L:
            found.append((path.stat().st_mtime, path, rep))
    if not found:
        return None
    mtime, path, rep = max(found, key=lambda f: f[0])
    hw_newest = max(p.stat().st_mtime for p in (ROOT / "hw").glob("*.py"))
    return {"fmax_mhz": float(rep["fmax_mhz"]), "clock_mhz": rep.get("clock_mhz"),
            "report": str(path.relative_to(ROOT)), "stale": mtime < hw_newest}


# --------------------------------------------------------------------------------------------
# Runs

class Runner:
    def __init__(self, backend_name):
        self.name = backend_name
        self.backend = None
        if backend_name != "interp":
            from sim.backends import get_backend
            self.backend = get_backend(backend_name)

    def build_and_run(self, job, cold=False):
        """Verilator: build (or reuse) the harness, timing it, then run ``job``; ``cold``: build
        into a fresh temporary folder (the whole build is measured; the cache is left alone)
        and run that binary. Returns ``(build info, run result)``."""
        import sim.backends as sb
        cfg = job.config
        saved = sb.BUILD_ROOT
        tmp = None
        if cold:
            tmp = tempfile.TemporaryDirectory(prefix="kwt_cold_", dir=ROOT / "build")
            sb.BUILD_ROOT = Path(tmp.name)
        try:
            t0 = time.perf_counter()
            sb.emit_verilog(cfg)
            t1 = time.perf_counter()
            exe = sb.build_harness(cfg)
            t2 = time.perf_counter()
            rec = exe.parent / "build_time.txt"
            recorded = float(rec.read_text()) if rec.exists() else None
            info = {"emit_s": round(t1 - t0, 2), "build_s": round(t2 - t1, 2),
                    "recorded_verilator_s": recorded, "cold": cold,
                    "cached": not cold and (t2 - t0) < 5, "binary": str(exe)}
            return info, self.run(job)
        finally:
            sb.BUILD_ROOT = saved
            if tmp is not None:
                tmp.cleanup()

    def run(self, job):
        if self.backend is None:
            y, counters, wall = run_compiled(job, "interp")
            return y, counters, wall, {}
        res = self.backend.run(job.image, job.program, job.config, prog_base=job.prog_base)
        info = dict(res.info)
        if self.name == "amaranth":
            info["sim_cycles_per_s"] = res.counters["CYCLES"] / res.wall_s if res.wall_s else None
        return job.read(res.ext), res.counters, res.wall_s, info


def bench_one(runner, model, x, gold, P, L, latency, cold):
    t0 = time.perf_counter()
    cfg, job = fit_config(model, x, P, L, latency)
    compile_s = time.perf_counter() - t0
    sections, model_counters, sec_macs = op_breakdown(job)
    row = {"pes": P, "lanes": L, "config": cfg.key(),
           "depths": {k: getattr(cfg, k) for k in HW_DEPTHS},
           "defaults": all(getattr(cfg, k) == v for k, v in HW_DEPTHS.items()),
           "instructions": job.prog_len, "input_parts": job.info["input_parts"],
           "useful_macs": int(job.mac_ops), "compile_s": round(compile_s, 3),
           "model_counters": {k: int(v) for k, v in model_counters.items()},
           "model_sections": sections, "section_macs": sec_macs,
           "model_section_cycles": section_cycles(job)[0]}
    if runner.name == "verilator":
        row["build"], (y, counters, wall, info) = runner.build_and_run(job, cold)
    else:
        y, counters, wall, info = runner.run(job)
    logits = np.asarray(y)[0]
    row.update(counters={k: int(v) for k, v in counters.items()},
               cycles=int(counters["CYCLES"]), run_wall_s=round(wall, 3),
               sim_wall_s=info.get("wall_s"), sim_cycles_per_s=info.get("sim_cycles_per_s"),
               logits=logits.tolist(), bit_exact=bool(np.array_equal(logits, gold)))
    return row, job


def run_clips(runner, model, cfg, n, data_dir):
    items = list_dataset(data_dir)
    idx = np.random.default_rng(0).permutation(len(items))[:n]
    items = [items[i] for i in sorted(idx)]
    feats = np.stack([mfcc(read_wav(p)) for p, _ in items])
    x9 = model.quantize_input(feats)
    gold = kwt(model, x9)
    programs = KwtPrograms(model, cfg)
    names = labels()
    if runner.name == "verilator":
        from sim.backends import build_harness
        build_harness(cfg)          # not inside the first clip's time
    out = []
    for (path, truth), x, g in tqdm(list(zip(items, x9, gold)), desc=f"clips on {runner.name}",
                                    unit="clip", file=sys.stderr):
        job = programs.job(x)
        rec = {"file": f"{truth}/{path.name}", "truth": truth,
               "golden": names[int(np.argmax(g))]}
        try:
            y, counters, wall, _ = runner.run(job)
            y = np.asarray(y)[0]
            rec.update(rtl=names[int(np.argmax(y))], bit_exact=bool(np.array_equal(y, g)),
                       cycles=int(counters["CYCLES"]), wall_s=round(wall, 3),
                       input_parts=job.info["input_parts"])
        except KwsError as e:
            rec.update(rtl=None, bit_exact=False, error=str(e))
        out.append(rec)
    ok = [r for r in out if r.get("rtl") is not None]
    cyc = [r["cycles"] for r in ok]
    summary = {
        "n": len(out), "data": str(data_dir), "pes": cfg.pes, "lanes": cfg.lanes,
        "predictions_equal": sum(r["rtl"] == r["golden"] for r in ok),
        "logits_bit_exact": sum(r["bit_exact"] for r in out),
        "mismatches": [r for r in out if not r["bit_exact"]],
        "accuracy_rtl": sum(r["rtl"] == r["truth"] for r in ok) / len(out) if out else None,
        "accuracy_golden": sum(r["golden"] == r["truth"] for r in out) / len(out) if out else None,
        "cycles_min": min(cyc) if cyc else None, "cycles_max": max(cyc) if cyc else None,
        "wall_s_mean": float(np.mean([r["wall_s"] for r in ok])) if ok else None,
    }
    return summary, out


# --------------------------------------------------------------------------------------------
# Report

def fmt_k(v):
    return f"{v / 1000:.1f}k"


def lat(r):
    f = r.get("fmax")
    if not f:
        return "n/a"
    return f"{r['latency_ms']:.2f}" + ("*" if f["stale"] else "")


def tables(doc):
    det = doc["detail"]
    P, L = det["pes"], det["lanes"]
    src = doc["cycles_source"]
    lines = []
    hw = doc["backend"] != "interp"
    lines.append(f"KWT-1 on {doc['clip']} — backend {doc['backend']}; total cycles: {src}")
    lines.append(f"dense MACs {doc['dense_macs']:,} (= {doc['dense_macs'] / 1e6:.1f} M); "
                 f"useful MACs of the program {det['useful_macs']:,}")
    lines.append("")
    # P sweep
    head = (f"{'P':>3} {'L':>3} {'depths (A/C)':>13} {'cycles':>10} {'model':>10} {'err %':>6} "
            f"{'util dense %':>12} {'util useful %':>13} {'speedup':>7} {'run s':>7} "
            f"{'sim cyc/s':>10} {'bit-exact':>9} {'ms @Fmax':>9}")
    lines += [f"total cycles vs P (L = {L}): cycles = {src}; model = cost model; "
              f"util = MACs/(cycles·P·L)", head, "-" * len(head)]
    base = next((r for r in doc["runs"] if r.get("cycles") and r["pes"] == 1), None)
    for r in doc["runs"]:
        if "error" in r:
            lines.append(f"{r['pes']:>3} {r['lanes']:>3}  FAILED: {r['error']}")
            continue
        cyc, mc = r["cycles"], r["model_counters"]["CYCLES"]
        dep = f"{r['depths']['amem_depth']}/{r['depths']['cmem_depth']}"
        cps = f"{r['sim_cycles_per_s']:,.0f}" if r.get("sim_cycles_per_s") else "-"
        sp = f"{base['cycles'] / cyc:.2f}" if base else "-"
        lines.append(f"{r['pes']:>3} {r['lanes']:>3} {dep:>13} {cyc:>10,} {mc:>10,} "
                     f"{100 * (mc - cyc) / cyc:>6.2f} {100 * r['util_dense']:>12.1f} "
                     f"{100 * r['util_useful']:>13.1f} {sp:>7} {r['run_wall_s']:>7.2f} {cps:>10} "
                     f"{'yes' if r['bit_exact'] else 'NO':>9} {lat(r):>9}")
    if any(r.get("fmax") for r in doc["runs"]):
        lines.append("(ms @Fmax: CYCLES at the Fmax of the hw.build report for that P; * = the "
                     "report is older than hw/, i.e. of an earlier design)")
    if any(not r.get("defaults", True) for r in doc["runs"] if "error" not in r):
        lines.append("(depths A/C: AMEM/CMEM elements per PE; P < 4 needs more than the "
                     f"hardware defaults {HW_DEPTHS['amem_depth']}/{HW_DEPTHS['cmem_depth']})")
    if "error" in det:
        return "\n".join(lines)
    # detail: counters
    lines += ["", f"P = {P}, L = {L}: counters (measured: {src}; model: cost model)"]
    head = f"{'counter':>13} {'measured':>10} {'model':>10}"
    lines += [head, "-" * len(head)]
    for k in ("CYCLES", "MAC_CYCLES", "ARRAY_CYCLES", "STALL_DMA", "STALL_WB", "INSTRET"):
        m = det["counters"].get(k)
        lines.append(f"{k:>13} {m if m is not None else '-':>10} {det['model_counters'][k]:>10}")
    lines.append("(ARRAY_CYCLES: docs/isa.md and the RTL count MATMULs and row operations; the "
                 "cost model counts MATMULs only)")
    # per layer by operation (model)
    secs = list(det["model_sections"])
    cats = [c for c in OPS if any(det["model_sections"][s].get(c) for s in secs)]
    head = f"{'section':>8} " + " ".join(f"{c:>{max(6, len(c))}}" for c in cats) + \
        f" {'total':>8} {'MACs':>10} {'util %':>6}"
    lines += ["", f"P = {P}: cycles per section and operation (MODELLED: cost-model timeline of "
              f"the same program; model total {det['model_counters']['CYCLES']:,}, measured "
              f"{det['cycles']:,})", head, "-" * len(head)]
    for s in secs:
        d = det["model_sections"][s]
        tot = sum(d.values())
        macs = sum(det["section_macs"][s].values())
        lines.append(f"{s:>8} " + " ".join(f"{d.get(c, 0):>{max(6, len(c))}}" for c in cats)
                     + f" {tot:>8} {macs:>10,} {100 * macs / (tot * P * L) if tot else 0:>6.1f}")
    # per operation (all layers)
    tot = det["model_counters"]["CYCLES"]
    head = f"{'operation':>12} {'cycles':>9} {'% total':>7} {'MACs':>11} {'util %':>6}"
    lines += ["", f"P = {P}: per operation over the whole model (MODELLED cycles; useful MACs)",
              head, "-" * len(head)]
    for c in cats:
        cyc = sum(det["model_sections"][s].get(c, 0) for s in secs)
        macs = sum(det["section_macs"][s].get(c, 0) for s in secs)
        u = f"{100 * macs / (cyc * P * L):.1f}" if cyc and macs else "-"
        lines.append(f"{c:>12} {cyc:>9,} {100 * cyc / tot:>7.1f} {macs:>11,} {u:>6}")
    # headline
    lines += ["", f"P = {P}, L = {L} headline:"]
    lines.append(f"  total cycles                 {det['cycles']:,} ({src})")
    lines.append(f"  MAC utilization (dense)      {100 * det['util_dense']:.1f} %  "
                 f"({doc['dense_macs'] / 1e6:.2f} M / (cycles·{P}·{L}))")
    lines.append(f"  MAC utilization (useful)     {100 * det['util_useful']:.1f} %  "
                 f"({det['useful_macs'] / 1e6:.2f} M / (cycles·{P}·{L}))")
    w = det.get("wall", {})
    if hw:
        lines.append(f"  one inference, wall          {w.get('run_s')} s simulation"
                     + (f" (harness-internal {w['sim_s']:.2f} s)" if w.get("sim_s") else "")
                     + f" + compile {w.get('compile_s')} s")
    if doc["backend"] == "verilator":
        b = det.get("build", {})
        if b.get("cold"):
            how = f"measured cold build: Verilog {b['emit_s']} s + Verilator/C++ {b['build_s']} s"
        elif b.get("cached"):
            how = (f"cached binary; its recorded Verilator/C++ build took "
                   f"{b.get('recorded_verilator_s')} s (Verilog emission not recorded; "
                   f"--cold-build measures both)")
        else:
            how = f"built now: Verilog {b['emit_s']} s + Verilator/C++ {b['build_s']} s"
        lines.append(f"  incl. the Verilator build    {w.get('with_build_s')} s  ({how})")
        if det.get("sim_cycles_per_s"):
            lines.append(f"  Verilator speed              {det['sim_cycles_per_s']:,.0f} "
                         f"simulated cycles/s")
    elif doc["backend"] == "amaranth" and det.get("sim_cycles_per_s"):
        lines.append(f"  Amaranth simulator speed     {det['sim_cycles_per_s']:,.0f} cycles/s")
    f = det.get("fmax")
    if f:
        lines.append(f"  latency at Fmax {f['fmax_mhz']:.1f} MHz     {det['latency_ms']:.2f} ms "
                     f"({f['report']}{', STALE: older than hw/' if f['stale'] else ''}; "
                     f"at the board clock {f['clock_mhz']} MHz: {det['latency_board_ms']:.2f} ms)")
    else:
        lines.append(f"  latency at Fmax              n/a (no hw.build report for P={P}, L={L}; "
                     f"run python -m hw.build --pes {P}); at 100 MHz it would be "
                     f"{det['cycles'] / 1e5:.2f} ms")
    c = doc.get("clips")
    if c:
        lines += ["", f"{c['n']} Speech Commands clips on {doc['backend']} at P = {c['pes']}: "
                  f"predictions equal to golden {c['predictions_equal']}/{c['n']}, logits "
                  f"bit-exact {c['logits_bit_exact']}/{c['n']}, mismatches "
                  f"{len(c['mismatches'])}; top-1 {100 * c['accuracy_rtl']:.1f} % (golden "
                  f"{100 * c['accuracy_golden']:.1f} %); cycles {c['cycles_min']}…"
                  f"{c['cycles_max']}"]
        for m in c["mismatches"][:10]:
            lines.append(f"  MISMATCH {m['file']}: golden {m['golden']}, rtl {m.get('rtl')}"
                         + (f" ({m['error']})" if m.get("error") else ""))
    return "\n".join(lines)


def plots(doc, out_dir, name="kwt"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    det = doc["detail"]
    if "model_sections" in det:
        secs = list(det["model_sections"])
        fig, ax = plt.subplots(figsize=(12, 4.5))
        bottom = np.zeros(len(secs))
        cmap = plt.get_cmap("tab20")
        for k, c in enumerate(OPS):
            v = np.array([det["model_sections"][s].get(c, 0) for s in secs], dtype=float)
            if v.any():
                ax.bar(secs, v, bottom=bottom, label=c, color=cmap(k))
                bottom += v
        ax.set_ylabel("cycles (cost-model split)")
        ax.set_title(f"KWT-1 cycles per section by operation, P = {det['pes']}, L = "
                     f"{det['lanes']} — total {det['cycles']:,} ({doc['cycles_source']}), "
                     f"split modelled", fontsize=9)
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / f"{name}_layers.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    runs = [r for r in doc["runs"] if "error" not in r]
    if runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        ps = [r["pes"] for r in runs]
        ax1.plot(ps, [r["cycles"] for r in runs], "o-", label=f"CYCLES ({doc['cycles_source']})")
        ax1.plot(ps, [r["model_counters"]["CYCLES"] for r in runs], "x--", label="cost model")
        ax1.plot(ps, [doc["dense_macs"] / (p * r["lanes"]) for p, r in zip(ps, runs)], ":",
                 color="gray", label="dense MACs / (P·L) (100 %)")
        ax1.set_yscale("log")
        ax1.set_ylabel("cycles per inference")
        ax2.plot(ps, [100 * r["util_dense"] for r in runs], "o-", label="dense MACs")
        ax2.plot(ps, [100 * r["util_useful"] for r in runs], "s-", label="useful MACs")
        ax2.set_ylabel("MAC utilization, %")
        ax2.set_ylim(0, 100)
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ps)
            ax.set_xticklabels(ps)
            ax.set_xlabel(f"PEs (P), L = {runs[0]['lanes']}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"KWT-1 on one clip — backend {doc['backend']}")
        fig.tight_layout()
        paths.append(out_dir / f"{name}_pes.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="verilator", choices=BACKENDS,
                    help="verilator (default), amaranth (very slow for the whole model), interp "
                    "(the ISA interpreter; cycles from the cost model)")
    ap.add_argument("--pes", default="1,2,4,8,16", help="comma-separated P values")
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--detail", type=int, default=8,
                    help="P of the detailed tables and of --clips (default 8, else the first P)")
    ap.add_argument("--clip", default=str(DEFAULT_CLIP), help="the wav file of the main runs")
    ap.add_argument("--clips", type=int, default=0,
                    help="also run N Speech Commands clips at the detail P (fixed shuffle)")
    ap.add_argument("--data", default=str(speech_commands_dir()), help="folder for --clips")
    ap.add_argument("--latency", type=int, default=4, help="ext-memory read latency (cycles)")
    ap.add_argument("--cold-build", action="store_true",
                    help="verilator: build the detail P's harness from scratch in a temporary "
                    "folder to measure the whole build time (the cache is not touched)")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--name", default="kwt",
                    help="output names: build/bench/NAME.json, NAME_layers.png, NAME_pes.png")
    args = ap.parse_args(argv)
    try:
        pes_list = [int(p) for p in args.pes.split(",")]
    except ValueError:
        ap.error(f"--pes {args.pes}: expected comma-separated integers")
    detail = args.detail if args.detail in pes_list else pes_list[0]

    model = load_qmodel(args.model)
    x = model.quantize_input(mfcc(read_wav(args.clip)))
    gold = kwt(model, x)
    dense, dense_parts = dense_macs(model)
    runner = Runner(args.backend)
    source = {"verilator": "RTL CYCLES counter (Verilator)",
              "amaranth": "RTL CYCLES counter (Amaranth simulator)",
              "interp": "COST MODEL ESTIMATE (ISA interpreter, no RTL)"}[args.backend]
    if args.backend == "interp":
        print("note: backend interp — the cycles are the cost model's estimate, not a "
              "measurement", file=sys.stderr)
    runs, failed = [], False
    # the detail P first: its figures matter most if the sweep is cut short
    order = [detail] + [p for p in pes_list if p != detail]
    results = {}
    for P in tqdm(order, desc="KWT-1", unit="run", file=sys.stderr):
        try:
            row, job = bench_one(runner, model, x, gold, P, args.lanes, args.latency,
                                 args.cold_build and P == detail)
        except KwsError as e:
            results[P] = {"pes": P, "lanes": args.lanes, "error": f"{type(e).__name__}: {e}"}
            failed = True
            print(f"P={P}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        L = args.lanes
        row["util_dense"] = dense / (row["cycles"] * P * L)
        row["util_useful"] = row["useful_macs"] / (row["cycles"] * P * L)
        b = row.get("build", {})
        build_s = (b.get("emit_s", 0) + b.get("build_s", 0)) if not b.get("cached") else \
            (b.get("recorded_verilator_s") or 0)
        row["wall"] = {"compile_s": row["compile_s"], "run_s": row["run_wall_s"],
                       "sim_s": row["sim_wall_s"],
                       "with_build_s": round(build_s + row["run_wall_s"] + row["compile_s"], 2)
                       if args.backend == "verilator" else None}
        f = find_fmax(P, L)
        row["fmax"] = f
        if f:
            row["latency_ms"] = row["cycles"] / (f["fmax_mhz"] * 1e3)
            row["latency_board_ms"] = (row["cycles"] / (f["clock_mhz"] * 1e3)
                                       if f.get("clock_mhz") else None)
        if not row["bit_exact"]:
            failed = True
            print(f"P={P}: LOGITS DIFFER FROM GOLDEN: {row['logits']} vs {gold.tolist()}",
                  file=sys.stderr)
        results[P] = row
    runs = [results[P] for P in pes_list]
    doc = {"backend": args.backend, "cycles_source": source, "clip": args.clip,
           "model": args.model, "golden_logits": gold.tolist(), "dense_macs": dense,
           "dense_macs_parts": dense_parts, "lanes": args.lanes, "mem_latency": args.latency,
           "detail": results[detail], "runs": runs,
           "split_source": "cost model timeline (sim.program.CostModel) of the same program",
           "command": "python benchmarks/kwt.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])}
    if args.clips and "error" not in results[detail]:
        cfg = AccelConfig(pes=detail, lanes=args.lanes, mem_latency=args.latency,
                          **results[detail]["depths"])
        summary, per_clip = run_clips(runner, model, cfg, args.clips, args.data)
        doc["clips"] = summary
        doc["clips_detail"] = per_clip
        failed = failed or bool(summary["mismatches"])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{args.name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    print(tables(doc))
    paths = plots(doc, OUT_DIR, args.name)
    print(f"\nwrote {out}" + "".join(f", {p}" for p in paths))
    if failed:
        print("FAILED: a run failed or differs from the golden model (see above)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
