"""Keyword inference through the UART pins of the Verilator-simulated board top.

    .venv/bin/python benchmarks/board.py [--memory bram,sdram] [--clk-hz 25000000]
        [--pes 8] [--lanes 16] [--clips 2]

For each ext memory (``bram``: 2¹⁶ words of block RAM; ``sdram``: ``hw.sdram.SdramController``
on the C++ SDRAM model, timing at ``--clk-hz``) the board top (``hw.board.BoardTop``, P × L, the
hardware's default depths) runs under Verilator with the UART at 4 clock cycles per bit, and
``sim.board.classify`` sends ``--clips`` shipped clips through the pins, exactly as it would
to a real board: the first clip loads program and weights (MEM_WRITE of the whole image), the
next ones only their input. Every result is checked against ``sim.golden.kwt`` (exit status 1
on a mismatch).

Measured per clip: the accelerator's CYCLES, STALL_DMA and MAC_CYCLES counters (read over the
link), the bytes sent to the board, the simulated cycles of the whole session (UART transfer
included) and the wall time; the Verilator build time. Computed from those (marked as such):
the session time on a real board at 1 Mbaud and the inference time at ``--clk-hz``.
Writes ``build/bench/board.json``, ``build/bench/board.md`` and ``build/bench/board.png``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.board import VerilatorLink, classify  # noqa: E402
from sim.kws import HW_DEPTHS  # noqa: E402
from sim.paths import shipped_clips_dir  # noqa: E402
from sim.program import AccelConfig  # noqa: E402
from sim.wav import list_dataset  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="bram,sdram")
    ap.add_argument("--clk-hz", type=int, default=25_000_000)
    ap.add_argument("--pes", type=int, default=8)
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench"))
    args = ap.parse_args(argv)
    clips = [p for p, _ in list_dataset(shipped_clips_dir())]
    clips = [clips[(4 + 5 * i) % len(clips)] for i in range(args.clips)]
    depths = HW_DEPTHS if (args.pes, args.lanes) == (8, 16) else {}
    config = AccelConfig(pes=args.pes, lanes=args.lanes, **depths)
    rows, ok = [], True
    for memory in args.memory.split(","):
        t0 = time.perf_counter()
        with VerilatorLink(pes=args.pes, lanes=args.lanes, clk_hz=args.clk_hz,
                           baud=round(args.clk_hz / 4), memory=memory, **depths) as link:
            build_s = time.perf_counter() - t0
            results, last = [], [time.perf_counter()]

            def progress(r):
                r["wall_s"] = time.perf_counter() - last[0]
                last[0] = time.perf_counter()
                results.append(r)
                print(f"{memory}: {Path(r['file']).name} {r['label']} equal_golden="
                      f"{r['equal_golden']} cycles={r['cycles']} session={r['link_cycles']} "
                      f"bytes={r['bytes_sent']} wall={r['wall_s']:.0f}s", flush=True)

            classify(link, clips, config=config, progress=progress)
        for n, r in enumerate(results):
            ok &= r["equal_golden"]
            rows.append({"memory": memory, "clip": Path(r["file"]).name, "label": r["label"],
                         "equal_golden": r["equal_golden"], "first": n == 0,
                         "cycles": r["cycles"], "bytes_sent": r["bytes_sent"],
                         "session_cycles": r["link_cycles"], "wall_s": round(r["wall_s"], 1),
                         "sim_cycles_per_s": round(r["link_cycles"] / r["wall_s"]),
                         "build_s": round(build_s, 1), "stall_dma": r["stall_dma"],
                         "mac_cycles": r["mac_cycles"],
                         "inference_ms_at_clk": 1e3 * r["cycles"] / args.clk_hz,
                         "session_s_at_1mbaud": r["bytes_sent"] * 10 / 1e6})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"clk_hz": args.clk_hz, "pes": args.pes, "lanes": args.lanes, "uart_cycles_per_bit": 4}
    (out / "board.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"KWT-1 through the UART pins of the Verilator-simulated board top, P = {args.pes}, "
             f"L = {args.lanes}, clock {args.clk_hz / 1e6:g} MHz, UART 4 cycles/bit "
             f"(`python benchmarks/board.py --memory {args.memory} --clk-hz {args.clk_hz}`)", "",
             "| memory | clip | load | equal golden | CYCLES | STALL_DMA | bytes sent | session cycles "
             "| wall (s) | sim cycles/s | inference at clock (ms) | session at 1 Mbaud (s, computed) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['memory']} | {r['clip']} | {'whole image' if r['first'] else 'input'} "
                     f"| {r['equal_golden']} | {r['cycles']} | {r.get('stall_dma', '')} "
                     f"| {r['bytes_sent']} | {r['session_cycles']} | {r['wall_s']} "
                     f"| {r['sim_cycles_per_s']} | {r['inference_ms_at_clk']:.1f} "
                     f"| {r['session_s_at_1mbaud']:.2f} |")
    (out / "board.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        firsts = [r for r in rows if not r["first"]] or rows
        ax.bar([r["memory"] for r in firsts], [r["cycles"] for r in firsts], color=["C0", "C1"][:len(firsts)])
        ax.set_ylabel("accelerator cycles per inference")
        ax.set_title(f"KWT-1 on the board top, P={args.pes} L={args.lanes}, {args.clk_hz / 1e6:g} MHz")
        fig.tight_layout()
        fig.savefig(out / "board.png", dpi=120)
    except ImportError:
        pass
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
