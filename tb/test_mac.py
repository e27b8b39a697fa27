"""cocotb testbench of hw.mac.MAC: packed beats in, every `last` sum compared with the golden."""
import cocotb
import numpy as np

from tb.cocotb_util import load_vectors, save_results, start, stream_run, to_signed


@cocotb.test()
async def mac_matches_golden(dut):
    vec = load_vectors()
    exp = vec["expected"]
    await start(dut)
    out = await stream_run(dut, vec["beats"], n_out=len(exp), stall=0.1, seed=7)
    out = np.array([to_signed(x, 32) for x in out], dtype=np.int64)
    save_results(sums=out)
    bad = np.nonzero(out != exp)[0]
    assert bad.size == 0, \
        f"{bad.size} mismatches of {exp.size}, first #{bad[0]}: {out[bad[0]]} != {exp[bad[0]]}"
