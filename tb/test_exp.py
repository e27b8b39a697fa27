"""cocotb testbench of hw.exp.Exp: every input vector in, compared with the golden exp."""
import cocotb
import numpy as np

from tb.cocotb_util import load_vectors, save_results, start, stream_run


@cocotb.test()
async def exp_matches_golden(dut):
    vec = load_vectors()
    await start(dut)
    out = await stream_run(dut, vec["u"], stall=0.2, seed=1)
    out = np.array(out, dtype=np.int64)
    save_results(e=out)
    bad = np.nonzero(out != vec["e"])[0]
    assert bad.size == 0, f"{bad.size} mismatches, first u={vec['u'][bad[0]]}: {out[bad[0]]} != {vec['e'][bad[0]]}"
