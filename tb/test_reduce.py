"""cocotb testbench of hw.reduce.Reduce: beats of rows in, one row result out, against golden."""
import cocotb
import numpy as np

from tb.cocotb_util import load_vectors, pack, save_results, start, stream_run, to_signed


@cocotb.test()
async def reduce_matches_golden(dut):
    vec = load_vectors()
    lanes, width, out_width = (int(v) for v in vec["shape"])
    base = lanes * width
    # Payload layout (LSB first): data[lanes], mask, op, last.
    beats = [pack(d, width) | int(mk) << base | int(op) << (base + lanes) | int(last) << (base + lanes + 1)
             for d, mk, op, last in zip(vec["data"], vec["mask"], vec["op"], vec["last"])]
    await start(dut)
    out = await stream_run(dut, beats, n_out=len(vec["value"]), stall=0.25, seed=3)
    value = np.array([to_signed(w, out_width) for w in out], dtype=np.int64)
    op = np.array([(w >> out_width) & 1 for w in out])
    save_results(value=value, op=op)
    bad = np.nonzero((value != vec["value"]) | (op != vec["out_op"]))[0]
    assert bad.size == 0, (f"{bad.size} mismatches, first row {bad[0]}: "
                           f"{value[bad[0]]}/{op[bad[0]]} != {vec['value'][bad[0]]}/{vec['out_op'][bad[0]]}")
