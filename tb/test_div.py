"""cocotb testbench of hw.div.Divide: (n, d) pairs in, quotient and div_by_zero compared with golden."""
import cocotb
import numpy as np

from tb.cocotb_util import load_vectors, save_results, start, stream_run

N_BITS = 33


@cocotb.test()
async def divide_matches_golden(dut):
    vec = load_vectors()
    # Payload layout (LSB first): n[33], d[32] in; q[33], div_by_zero out.
    words = [int(n) | int(d) << N_BITS for n, d in zip(vec["n"], vec["d"])]
    await start(dut)
    out = await stream_run(dut, words, stall=0.2, seed=5)
    q = np.array([w & ((1 << N_BITS) - 1) for w in out], dtype=np.int64)
    flag = np.array([w >> N_BITS for w in out], dtype=np.int64)
    save_results(q=q, div_by_zero=flag)
    bad = np.nonzero((q != vec["q"]) | (flag != vec["div_by_zero"]))[0]
    assert bad.size == 0, (f"{bad.size} mismatches, first n={vec['n'][bad[0]]} d={vec['d'][bad[0]]}: "
                           f"{q[bad[0]]}/{flag[bad[0]]} != {vec['q'][bad[0]]}/{vec['div_by_zero'][bad[0]]}")
