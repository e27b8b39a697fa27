"""Where the logic of the iCEBreaker board top goes: yosys ``synth_ice40 -dsp`` per module.

    python benchmarks/ice40_fit.py [--param pes=1 --param lanes=4 ...]

Builds the board top with the ``icebreaker`` defaults of :mod:`hw.build` (``--param`` overrides
any ``BoardTop`` argument), synthesizes it for the iCE40UP5K without flattening (the same
``booth`` pass as the board build, so the control products are LUT logic and the SB_MAC16s
hold the PE multipliers) and prints LUT4 / FF / carry / EBR / SB_MAC16 per block against the
UP5K's 5 280 logic cells. Synthesis only: it tells which blocks overflow before nextpnr would
refuse the design. Writes ``build/bench/ice40_fit.{json,md}``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amaranth.back import rtlil  # noqa: E402

from hw.board import BoardTop  # noqa: E402
from hw.build import BOARDS, yosys_only  # noqa: E402

OUT_DIR = ROOT / "build" / "bench"
UP5K = {"luts": 5280, "ebr": 30, "dsps": 8}
# Blocks of the table: (name, module path prefixes in the synthesized hierarchy).
BLOCKS = [
    ("controller (hw/controller.py)", ("top.accel.ctrl",)),
    ("DMA engine (hw/dma.py)", ("top.accel.dma",)),
    ("PE array (sequencers, delta encoder, shared buffers, PEs)", ("top.accel.array",)),
    ("  of which the PE (lanes, requantizer, S1, row datapath)", ("top.accel.array.pe",)),
    ("  of which the PE's row datapath", ("top.accel.array.pe0.rowdp",)),
    ("CSRs", ("top.accel.csr",)),
    ("host link (UARTs, FIFO, bridge, arbiter)",
     ("top.rx_uart", "top.tx_uart", "top.rx_fifo", "top.bridge", "top.arbiter")),
    ("ext memory (EBR here; SPRAM in the board build)", ("top.memory",)),
]
COLS = [("LUT4", "SB_LUT4"), ("FF", "SB_DFF"), ("carry", "SB_CARRY"), ("EBR", "SB_RAM40_4K"),
        ("MAC16", "SB_MAC16")]


def _value(text):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="BoardTop argument overriding the icebreaker default (repeatable)")
    args = ap.parse_args(argv)
    board = BOARDS["icebreaker"]
    params = dict(board.params)
    for item in args.param:
        key, sep, val = item.partition("=")
        if not sep or not key:
            ap.error(f"--param {item!r}: expected KEY=VALUE")
        params[key] = _value(val)
    try:
        top = BoardTop(clk_hz=12_000_000, mem_depth=board.mem_depth, **params)
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    work = OUT_DIR / "ice40_fit"
    work.mkdir(parents=True, exist_ok=True)
    (work / "top.il").write_text(rtlil.convert(top, name="top", ports=[top.rx, top.tx]))
    (work / "synth.ys").write_text("\n".join([
        "read_rtlil top.il", "hierarchy -top top", "rename -hide w:*]", *board.after_read,
        "synth_ice40 -dsp -noflatten -top top", "tee -q -o stat.json stat -json", ""]))
    print(f"synthesizing the iCEBreaker board top ({params}) with yosys, ≈ 3 min …",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        # stat -json names a module by its hierarchical instance path.
        cells = yosys_only(work, "synth.ys", log="yosys.log")
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    seconds = time.perf_counter() - t0

    def count(prefixes, cell):
        return sum(n for mod, by in cells.items()
                   if mod.startswith(prefixes) for t, n in by.items() if t.startswith(cell))

    rows = [{"block": name, **{c: count(pre, cell) for c, cell in COLS}} for name, pre in BLOCKS]
    total = {c: count(("top",), cell) for c, cell in COLS}
    lines = ["| block | " + " | ".join(c for c, _ in COLS) + " |",
             "|---|" + "---:|" * len(COLS)]
    for r in rows + [{"block": "**whole board top**", **total},
                     {"block": "iCE40UP5K has", "LUT4": UP5K["luts"], "FF": UP5K["luts"],
                      "carry": "", "EBR": UP5K["ebr"], "MAC16": UP5K["dsps"]}]:
        lines.append(f"| {r['block']} | " + " | ".join(f"{r[c]:,}".replace(",", " ")
                                                      if r[c] != "" else "" for c, _ in COLS) + " |")
    table = "\n".join(lines)
    print(table)
    fits = total["LUT4"] <= UP5K["luts"]
    print(f"\nLUT4 {total['LUT4']} of {UP5K['luts']}: {'fits' if fits else 'does not fit'} "
          f"(synthesis {seconds:.0f} s)")
    out = {"params": params, "blocks": rows, "total": total, "up5k": UP5K, "fits": fits,
           "seconds": seconds}
    (OUT_DIR / "ice40_fit.json").write_text(json.dumps(out, indent=1) + "\n")
    (OUT_DIR / "ice40_fit.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
