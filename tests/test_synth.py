# amaranth: UnusedElaboratable=no
"""hw.synth: the serial port wrapper (simulated), argument checks, the yosys script, the platform
a unit is elaborated for, and real ECP5 runs of Exp and of the MAC (its MULT18X18D registers)."""
import json
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.exp import Exp
from hw.mac import MAC
from hw.rsqrt import Rsqrt
from hw.synth import SerialWrapper, critical_path_summary, synthesize, target_platform, yosys_script


class _AddOne(wiring.Component):
    a: In(8)
    b: Out(9)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.b.eq(self.a + 1)
        return m


def test_serial_wrapper_round_trip():
    dut = SerialWrapper(_AddOne())
    assert (dut.n_in, dut.n_out) == (8, 9)
    got = []

    async def bench(ctx):
        x = 0xB7
        for k in reversed(range(8)):          # the first bit in ends up on top
            ctx.set(dut.sin, (x >> k) & 1)
            await ctx.tick()
        ctx.set(dut.load, 1)
        await ctx.tick()
        ctx.set(dut.load, 0)
        for _ in range(9):                    # LSB first
            got.append(ctx.get(dut.sout))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert sum(b << k for k, b in enumerate(got)) == 0xB8


def test_serial_wrapper_counts_stream_ports():
    # i.payload, i.valid, o.ready in; i.ready, o.payload, o.valid out.
    assert (SerialWrapper(Exp()).n_in, SerialWrapper(Exp()).n_out) == (18, 18)
    # Struct payloads (Rsqrt: uint48 in, {r: uint15, p: int6} out) are flattened too.
    dut = SerialWrapper(Rsqrt())
    assert (dut.n_in, dut.n_out) == (50, 23)
    rtlil.convert(dut, name="wrapped")


def test_synthesize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        synthesize(Exp(), family="xc7")
    with pytest.raises(ValueError, match="out-of-context"):
        synthesize(Exp(), family="ice40", ports="ooc")
    with pytest.raises(ValueError, match="bitstream"):
        synthesize(Exp(), bitstream=True)
    with pytest.raises(ValueError, match="ports"):
        synthesize(Exp(), ports="jtag")
    with pytest.raises(ValueError, match="name"):
        synthesize(Exp(), name="../x")
    with pytest.raises(ValueError, match="freq_mhz"):
        synthesize(Exp(), freq_mhz=0)
    with pytest.raises(ValueError, match="platform"):
        synthesize(Exp(), platform="ecp5")


def test_yosys_script_hides_array_element_wires():
    # `rename -hide w:*]` right after `hierarchy`: Amaranth's `o__payload[0]` wire names otherwise
    # trip yosys 0.70's `count_id(wire->name) == 0` assertion in ABC9 (no `-dff` fallback needed).
    lines = yosys_script("unit", "ecp5").splitlines()
    assert lines[:3] == ["read_rtlil top.il", "hierarchy -top unit", "rename -hide w:*]"]
    assert "synth_ecp5 -top unit" in lines and "-dff" not in " ".join(lines)
    lines = yosys_script("unit", "ice40", ports="serial", synth_opts="-abc9").splitlines()
    assert lines[2:5] == ["rename -hide w:*]", "setattr -mod -set keep_hierarchy 1 unit.dut",
                          "synth_ice40 -dsp -abc9 -top unit"]


def test_target_platform():
    p = target_platform("ecp5")
    assert p.family == "ecp5" and p.device == "LFE5U-85F" and not p.resources
    assert target_platform("ecp5", "um5g-25k").device == "LFE5UM5G-25F"
    assert target_platform("ice40") is None
    # The ECP5 platform makes the MAC instantiate MULT18X18D; none (simulation, Verilog) does not.
    assert "MULT18X18D" in rtlil.convert(MAC(), platform=p) and "MULT18X18D" not in rtlil.convert(MAC())


def test_critical_path_summary_text():
    path = {"from": "posedge clk", "to": "posedge clk", "path": [
        {"type": "clk-to-q", "delay": 0.5, "from": {"cell": "a", "port": "Q"}, "to": {"cell": "a", "port": "Q"}},
        {"type": "routing", "delay": 1.25, "net": "n1", "sources": ["/x/hw/div.py:61"],
         "from": {"cell": "a", "port": "Q"}, "to": {"cell": "b", "port": "A"}},
        {"type": "logic", "delay": 0.25, "from": {"cell": "b", "port": "A"}, "to": {"cell": "b", "port": "F"}},
        {"type": "setup", "delay": 0.5, "from": {"cell": "b", "port": "F"}, "to": {"cell": "c", "port": "DI"}},
    ]}
    text = critical_path_summary(path)
    assert text.startswith("a.Q -> c.DI: 2.50 ns = 1.25 logic + 1.25 routing, 1 logic steps")
    assert "worst net n1 1.25 ns" in text and "hw/div.py:61" in text


@pytest.mark.slow  # cold, yowasp compiles yosys and nextpnr to native code first (~2–3 min)
def test_synthesize_exp_ecp5():
    r = synthesize(Exp(), name="exp_synth_test", family="ecp5", freq_mhz=150)
    assert {"fmax_mhz", "luts", "ffs", "dsps", "brams", "critical_path", "seconds"} <= set(r)
    assert r["brams"] == 1 and r["dsps"] == 0          # the 256x16 table is one DP16KD, no multiplier
    assert 16 + 4 <= r["ffs"] < 100                    # 16-bit output, shift amount, valid bits
    assert 20 < r["luts"] < 1000
    assert 20 < r["fmax_mhz"] < 1000
    assert " -> " in r["critical_path"] and "ns" in r["critical_path"]
    assert r["utilization"]["DP16KD"] == 1 and r["ports"] == "ooc" and r["seconds"] > 0


@pytest.mark.slow  # two MAC builds, ~15 s warm
def test_synthesize_mac_uses_dsp_registers():
    # On ECP5 the MAC's operand and product registers are the MULT18X18D's own: no fabric
    # flip-flops for a, b or the product, and the multiply is no longer a fabric-to-fabric path.
    r = synthesize(MAC(), name="mac_dsp_test", family="ecp5", freq_mhz=150)
    assert r["dsps"] == 1
    cells = json.loads((Path(r["dir"]) / "top.json").read_text())["modules"]["mac_dsp_test"]["cells"]
    dsp = next(c for c in cells.values() if c["type"] == "MULT18X18D")
    assert {dsp["parameters"][f"REG_{k}_CLK"] for k in ("INPUTA", "INPUTB", "OUTPUT")} == {"CLK0"}
    portable = synthesize(MAC(), name="mac_portable_test", family="ecp5", freq_mhz=150, platform=None)
    assert r["ffs"] <= portable["ffs"] - (9 + 8 + 17)
    assert r["fmax_mhz"] > portable["fmax_mhz"]
