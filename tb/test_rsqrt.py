"""cocotb testbench of hw.rsqrt.Rsqrt: v in, (R, p) compared with the golden rsqrt."""
import cocotb
import numpy as np

from tb.cocotb_util import load_vectors, save_results, start, stream_run, to_signed


@cocotb.test()
async def rsqrt_matches_golden(dut):
    vec = load_vectors()
    await start(dut)
    out = await stream_run(dut, vec["v"], stall=0.2, seed=7)
    # Payload layout (LSB first): r[15], p[6] (signed).
    r = np.array([w & 0x7FFF for w in out], dtype=np.int64)
    p = np.array([to_signed(w >> 15, 6) for w in out], dtype=np.int64)
    save_results(r=r, p=p)
    bad = np.nonzero((r != vec["r"]) | (p != vec["p"]))[0]
    assert bad.size == 0, (f"{bad.size} mismatches, first v={vec['v'][bad[0]]}: "
                           f"({r[bad[0]]}, {p[bad[0]]}) != ({vec['r'][bad[0]]}, {vec['p'][bad[0]]})")
