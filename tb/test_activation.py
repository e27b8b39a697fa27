"""cocotb testbench of hw.activation.Activation: load a table through the load port, stream
inputs, compare with the golden lookup; repeated per table."""
import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge

from tb.cocotb_util import load_vectors, pack, save_results, start, stream_run, unpack


async def load_table(dut, table):
    """Write all 256 entries, one per cycle (load payload: addr[8], data[9])."""
    for addr, value in enumerate(table):
        await FallingEdge(dut.clk)
        dut.load__valid.value = 1
        dut.load__payload.value = addr | (int(value) & 0x1FF) << 8
    await FallingEdge(dut.clk)
    dut.load__valid.value = 0
    await RisingEdge(dut.clk)


@cocotb.test()
async def activation_matches_golden(dut):
    vec = load_vectors()
    lanes = int(vec["lanes"])
    dut.load__valid.value = 0
    await start(dut)
    assert int(dut.load__ready.value) == 1
    ys = []
    for k, (table, x) in enumerate(zip(vec["tables"], vec["x"])):
        await load_table(dut, table)
        beats = [pack(x[j:j + lanes], 8) for j in range(0, len(x), lanes)]
        out = await stream_run(dut, beats, stall=0.25, seed=k)
        y = np.array([v for w in out for v in unpack(w, 9, lanes, signed=True)], dtype=np.int64)
        ys.append(y)
        bad = np.nonzero(y != vec["y"][k])[0]
        assert bad.size == 0, (f"table {k}: {bad.size} mismatches, first x={x[bad[0]]}: "
                               f"{y[bad[0]]} != {vec['y'][k][bad[0]]}")
        await FallingEdge(dut.clk)           # stream_run returns in the read-only phase
    save_results(y=np.stack(ys))
