"""cocotb testbench of hw.delta.DeltaEncoder: token sequences in, Δ and mask out, against golden.

θ is driven on its port before each sequence and replaced by garbage once token 0 has been
accepted (the unit must hold the sampled value).
"""
import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from tb.cocotb_util import load_vectors, pack, save_results, start, stream_run, unpack


@cocotb.test()
async def delta_matches_golden(dut):
    vec = load_vectors()
    lanes, idx_bits = (int(v) for v in vec["shape"])
    # Input payload (LSB first): data[lanes] int8, index, first.
    beats = [pack(d, 8) | int(g) << (8 * lanes) | int(f) << (8 * lanes + idx_bits)
             for d, g, f in zip(vec["data"], vec["index"], vec["first"])]
    first = vec["first"].astype(bool)
    # Split into (token 0, later tokens) of each sequence.
    starts = [k for k in range(len(beats)) if first[k] and (k == 0 or not first[k - 1])] + [len(beats)]
    await start(dut)
    out = []
    for s, e in zip(starts, starts[1:]):
        t1 = s + int(np.argmin(first[s:e])) if not first[s:e].all() else e
        await FallingEdge(dut.clk)         # stream_run returns in the read-only phase
        dut.theta.value = int(vec["theta"][s])
        out += await stream_run(dut, beats[s:t1], stall=0.25, seed=s)
        await FallingEdge(dut.clk)
        dut.theta.value = int(vec["garbage"][s])
        if t1 < e:
            out += await stream_run(dut, beats[t1:e], stall=0.25, seed=s + 1)
    delta = np.array([unpack(w, 9, lanes, signed=True) for w in out], dtype=np.int64)
    mask = np.array([(w >> (9 * lanes)) & ((1 << lanes) - 1) for w in out])
    save_results(delta=delta, mask=mask)
    bad = np.nonzero((delta != vec["delta"]).any(axis=1) | (mask != vec["mask"]))[0]
    assert bad.size == 0, (f"{bad.size} mismatches, first beat {bad[0]}: {delta[bad[0]]}/{mask[bad[0]]:#x}"
                           f" != {vec['delta'][bad[0]]}/{vec['mask'][bad[0]]:#x}")
