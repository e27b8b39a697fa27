# amaranth: UnusedElaboratable=no
"""The ECP5 PLL of the board builds (hw.pll, hw.board.BoardPins, python -m hw.build
--clock-mhz): divider search against the EHXPLLL limits, the primitive in the netlist with the
clock constraint nextpnr derives from, argument errors, and the UART divisor at the PLL clock
(the host protocol through the simulated pins)."""
from fractions import Fraction

import pytest

from hw.board import BoardPins, BoardTop
from hw.pll import PFD, VCO, ecp5_pll
from sim import board as host

SMALL = dict(amem_depth=256, cmem_depth=256, bbuf_depth=256, pbuf_depth=16, imem_depth=32)


@pytest.mark.parametrize("mhz, divs", [
    (125, (1, 5, 4)), (100, (1, 4, 4)), (50, (1, 2, 8)), (62.5, (2, 5, 7)), (40, (5, 8, 10)),
    (110, (5, 22, 4)),
])
def test_dividers(mhz, divs):
    p = ecp5_pll(25_000_000, mhz * 1e6)
    assert (p.clki_div, p.clkfb_div, p.clkop_div) == divs
    assert p.fout == Fraction(25_000_000, p.clki_div) * p.clkfb_div == Fraction(mhz * 1e6)
    assert PFD[0] <= Fraction(25_000_000, p.clki_div) <= PFD[1]
    assert VCO[0] <= p.fvco <= VCO[1]
    assert p.cphase == p.clkop_div // 2


def test_every_mhz_in_range_within_tolerance():
    """Every multiple of 5 MHz the PLL accepts is within 0.1 % and inside every limit; the
    rest raise."""
    made = 0
    for mhz in range(10, 401, 5):
        try:
            p = ecp5_pll(25_000_000, mhz * 1_000_000)
        except ValueError as e:
            assert "cannot make" in str(e) and "nearest" in str(e)
            continue
        made += 1
        assert abs(p.fout - mhz * 1_000_000) <= Fraction(mhz * 1_000_000, 1000)
        assert VCO[0] <= p.fvco <= VCO[1] and 1 <= p.clkfb_div <= 80 and 1 <= p.clki_div <= 128
    assert made == 79           # 25 MHz · CLKFB_DIV / CLKI_DIV with CLKI_DIV ≤ 8 (PFD ≥ 3.125 MHz)


@pytest.mark.parametrize("mhz, message", [
    (5, "makes 10…400 MHz, not 5 MHz"), (401, "not 401 MHz"),
    (123.456, "cannot make 123.456 MHz from 25 MHz within 0.1 % (nearest: 121.9 or 125 MHz)"),
])
def test_errors(mhz, message):
    with pytest.raises(ValueError) as e:
        ecp5_pll(25_000_000, mhz * 1e6)
    assert message in str(e.value)


def _ulx3s():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


def test_boardpins_instantiates_the_pll(tmp_path):
    top = BoardTop(clk_hz=125_000_000, mem_depth=64, pes=1, lanes=4, **SMALL)
    assert top.divisor == round(125e6 / 115200) == 1085
    plan = _ulx3s().prepare(BoardPins(top), name="top")
    il = plan.files["top.il"]
    il = il.decode() if isinstance(il, bytes) else il
    assert "EHXPLLL" in il
    for name, v in (("CLKI_DIV", 1), ("CLKFB_DIV", 5), ("CLKOP_DIV", 4), ("CLKOP_CPHASE", 2)):
        assert f"parameter \\{name} {v}" in il
    # the only constraint is the oscillator's; nextpnr derives the PLL output's
    lpf = plan.files["top.lpf"]
    lpf = lpf.decode() if isinstance(lpf, bytes) else lpf
    assert lpf.count("FREQUENCY") == 1 and "25000000" in lpf
    # no PLL at the oscillator's frequency
    top25 = BoardTop(clk_hz=25_000_000, mem_depth=64, pes=1, lanes=4, **SMALL)
    il25 = _ulx3s().prepare(BoardPins(top25), name="top").files["top.il"]
    assert "EHXPLLL" not in (il25.decode() if isinstance(il25, bytes) else il25)


def test_boardpins_refuses_clocks_without_a_pll():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    top = BoardTop(clk_hz=24_000_000, mem_depth=64, pes=1, lanes=4, **SMALL)
    with pytest.raises(ValueError, match="only the ECP5 boards have a PLL"):
        ICEBreakerPlatform().prepare(BoardPins(top), name="top")
    top = BoardTop(clk_hz=123_456_000, mem_depth=64, pes=1, lanes=4, **SMALL)
    with pytest.raises(ValueError, match="cannot make 123.456 MHz"):
        _ulx3s().prepare(BoardPins(top), name="top")


@pytest.mark.parametrize("args, message", [
    (["--board", "ulx3s-85f", "--clock-mhz", "123.456"], "--clock-mhz 123.456: the ECP5 PLL cannot make"),
    (["--board", "ulx3s-85f", "--clock-mhz", "500"], "makes 10…400 MHz, not 500 MHz"),
    (["--board", "ulx3s-85f", "--clock-mhz", "fast"], "--clock-mhz must be a number, not 'fast'"),
    (["--board", "icebreaker", "--clock-mhz", "24"], "the icebreaker build has no PLL"),
    (["--board", "ulx3s-85f", "--clock-mhz", "10", "--baud", "3000000"], "--baud 3000000 at 10 MHz"),
])
def test_build_clock_arguments_exit_2(args, message, capsys):
    from hw.build import main
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert out == ""


def test_host_protocol_at_pll_clock():
    """INFO and a CSR round trip through the pins of a board top clocked at 125 MHz (the UART
    divisor computed from it: 31.25 Mbaud, 4 cycles per bit, as fast as hw.uart allows)."""
    from hw.isa import Csr
    top = BoardTop(clk_hz=125_000_000, baud=31_250_000, mem_depth=64, pes=1, lanes=4, **SMALL)
    assert top.divisor == 4

    def ops():
        info = yield host.info()
        yield host.csr_write(Csr.PROG_BASE, 0x1234)
        return info, (yield host.csr_read(Csr.PROG_BASE))

    (info, base), cycles = host.run_on_sim(top, ops(), max_cycles=20_000)
    assert info == host.BoardInfo(1, 4, 64) and base == 0x1234


@pytest.mark.slow  # ≈ 1–2 min: yosys and nextpnr on a tiny design
def test_pll_through_the_toolchain():
    """Oscillator → Ecp5Pll (125 MHz) → a counter on the LEDs, built with the board flow's
    tools: yosys maps the EHXPLLL, nextpnr places it, derives the 125 MHz constraint from the
    oscillator's and meets it."""
    import json
    import subprocess

    from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, Signal

    from hw.build import _tool_env
    from hw.pll import Ecp5Pll
    from hw.synth import BUILD_DIR

    class Blink(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            clk = platform.request("clk25", 0)
            m.submodules.pll = pll = Ecp5Pll(ecp5_pll(25_000_000, 125e6))
            m.domains.sync = ClockDomain("sync", reset_less=True)
            m.d.comb += [pll.clk_in.eq(clk.i), ClockSignal("sync").eq(pll.clk_out)]
            cnt = Signal(32)
            m.d.sync += cnt.eq(cnt + 1)
            for k in range(8):
                m.d.comb += platform.request("led", k).o.eq(cnt[24 + k] if k else pll.locked)
            return m

    work = BUILD_DIR / "board" / "test_pll_blink"
    work.mkdir(parents=True, exist_ok=True)
    (work / "nextpnr_report.json").unlink(missing_ok=True)
    plan = _ulx3s().prepare(Blink(), name="top", script_after_read="rename -hide w:*]",
                            nextpnr_opts="--report nextpnr_report.json")
    plan.extract(str(work))
    res = subprocess.run(["sh", "build_top.sh"], cwd=work, env=_tool_env(), capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-2000:]
    tim = (work / "top.tim").read_text()
    assert "Derived frequency constraint of 125.0 MHz" in tim
    (clock, f), = json.loads((work / "nextpnr_report.json").read_text())["fmax"].items()
    assert f["constraint"] == pytest.approx(125.0) and f["achieved"] >= 125.0
    assert (work / "top.bit").stat().st_size > 0


def test_power_on_reset_without_pll():
    """BoardPins at the oscillator's frequency (no PLL) on a stand-in platform, simulated: the
    power-on counter releases ``sync``'s reset after 2¹⁰ cycles and keeps it released."""
    from types import SimpleNamespace

    from amaranth.build import ResourceError
    from amaranth.hdl import Elaboratable, Fragment, Module, ResetSignal, Signal
    from amaranth.sim import Simulator

    class Stand:
        default_clk, default_clk_frequency, family = "clk25", 25e6, "ecp5"

        def __init__(self):
            self.clk = Signal()

        def request(self, name, number=0, **kw):
            if name == "clk25":
                return SimpleNamespace(i=self.clk)
            if name == "uart":
                return SimpleNamespace(rx=SimpleNamespace(i=Signal(init=1)),
                                       tx=SimpleNamespace(o=Signal()))
            if name == "led" and number < 2:
                return SimpleNamespace(o=Signal())
            raise ResourceError(name)

    top = BoardTop(clk_hz=25_000_000, mem_depth=64, pes=1, lanes=4, **SMALL)
    plat = Stand()
    rst = Signal()

    class Wrap(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.pins = Fragment.get(BoardPins(top), plat)
            m.d.comb += rst.eq(ResetSignal("sync"))
            return m

    sim = Simulator(Wrap())

    async def clock(ctx):
        level = 0
        while True:
            await ctx.delay(20e-9)
            level ^= 1
            ctx.set(plat.clk, level)

    seen = []

    async def bench(ctx):
        for cycle in range(1100):
            await ctx.delay(40e-9)
            seen.append(ctx.get(rst))

    sim.add_process(clock)
    sim.add_testbench(bench)
    sim.run_until(1100 * 40e-9)
    first_low = seen.index(0)
    assert 1000 <= first_low <= 1030 and not any(seen[first_low:])
