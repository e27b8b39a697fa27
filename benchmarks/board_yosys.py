"""Resource counts of the ULX3S board top from the build's yosys stage only (no place and route):
``python benchmarks/board_yosys.py P delta|nodelta [bram|sdram]``.

Runs the script ``python -m hw.build`` would run for yosys (``synth_ecp5`` on the same RTLIL) in
``build/yosys_only/p<P>_<delta>_<memory>/`` and prints LUT/FF/DSP/DP16KD counted as
``hw.synth`` does (docs/board.md, *Measured: the current RTL*).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hw.board import BoardPins, BoardTop          # noqa: E402
from hw.build import BOARDS, _platform, yosys_only  # noqa: E402
from hw.synth import BUILD_DIR, FAMILIES, _count   # noqa: E402


def main(argv):
    if len(argv) not in (2, 3) or argv[1] not in ("delta", "nodelta") or argv[2:] not in ([], ["bram"], ["sdram"]):
        print("usage: python benchmarks/board_yosys.py P delta|nodelta [bram|sdram]", file=sys.stderr)
        return 2
    pes, delta, mem = int(argv[0]), argv[1] == "delta", (argv[2:] or ["bram"])[0]
    spec = BOARDS["ulx3s-85f"]
    full = {**spec.params, "pes": pes, "delta": delta}
    top = (BoardTop(clk_hz=25_000_000, memory="sdram", **full) if mem == "sdram" else
           BoardTop(clk_hz=25_000_000, mem_depth=spec.mem_depth, **full))
    work = BUILD_DIR / "yosys_only" / f"p{pes}_{argv[1]}_{mem}"
    work.mkdir(parents=True, exist_ok=True)
    plan = _platform("ulx3s-85f").prepare(BoardPins(top), name="top",
                                          script_after_read="rename -hide w:*]",
                                          script_after_synth="tee -q -o stat.json stat -json")
    plan.extract(str(work))
    try:
        cells = yosys_only(work, "top.ys", log="top.rpt")["top"]
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: _count(cells, FAMILIES["ecp5"][k]) for k in ("luts", "ffs", "dsps", "brams")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
