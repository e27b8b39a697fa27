"""cocotb testbench of hw.lane.Lane: a packed instruction stream in, every emitted result
compared with the sequential golden model's (computed in tests/test_lane.py)."""
import cocotb
import numpy as np

from tb.cocotb_util import load_vectors, save_results, start, stream_run, to_signed


@cocotb.test()
async def lane_matches_golden(dut):
    vec = load_vectors()
    exp = vec["expected"]
    words = [int(lo) | (int(hi) << 64) for lo, hi in zip(vec["lo"], vec["hi"])]
    await start(dut)
    out = await stream_run(dut, words, n_out=len(exp), stall=0.2, seed=11)
    out = np.array([to_signed(x, 32) for x in out], dtype=np.int64)
    save_results(results=out)
    bad = np.nonzero(out != exp)[0]
    assert bad.size == 0, \
        f"{bad.size} mismatches of {exp.size}, first #{bad[0]}: {out[bad[0]]} != {exp[bad[0]]}"
