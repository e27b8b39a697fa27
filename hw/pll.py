"""ECP5 PLL (EHXPLLL) for the board clock: ``ecp5_pll(fin_hz, fout_hz)`` picks the dividers,
:class:`Ecp5Pll` instantiates the primitive (docs/board.md, *Clock*).

The search is Project Trellis' ``ecppll`` rule, in exact fractions: CLKOP = fin / CLKI_DIV ·
CLKFB_DIV with the feedback from CLKOP, the VCO at CLKOP · CLKOP_DIV; limits PFD 3.125–400 MHz,
VCO 400–800 MHz, output 10–400 MHz, CLKI_DIV 1–128, CLKFB_DIV 1–80, CLKOP_DIV 1–128; the
first divider set with the smallest error wins. nextpnr derives the output's clock constraint
from the input pin's constraint and these dividers, so the board's oscillator constraint is the
only one the build writes.
"""
import dataclasses
from fractions import Fraction

from amaranth.hdl import Elaboratable, Instance, Module, Signal

__all__ = ["PllParams", "ecp5_pll", "Ecp5Pll", "PLL_TOLERANCE"]

PFD = (Fraction(3_125_000), Fraction(400_000_000))
VCO = (Fraction(400_000_000), Fraction(800_000_000))
OUT = (Fraction(10_000_000), Fraction(400_000_000))

#: Largest relative error between the requested and the synthesized frequency.
PLL_TOLERANCE = Fraction(1, 1000)


@dataclasses.dataclass(frozen=True)
class PllParams:
    fin_hz: int
    clki_div: int
    clkfb_div: int
    clkop_div: int
    fout: Fraction           # exact output frequency (Hz)

    @property
    def fout_hz(self):
        """The output frequency rounded to whole Hz (the design's ``clk_hz``)."""
        return round(self.fout)

    @property
    def fvco(self):
        return self.fout * self.clkop_div

    @property
    def cphase(self):
        # ecppll: the primary output shifted by half its period (what Lattice's tools do).
        return self.clkop_div // 2


def _candidates(fin):
    for ci in range(1, 129):
        pfd = fin / ci
        if not PFD[0] <= pfd <= PFD[1]:
            continue
        for fb in range(1, 81):
            fout = pfd * fb
            if not OUT[0] <= fout <= OUT[1]:
                continue
            for od in range(1, 129):
                if VCO[0] <= fout * od <= VCO[1]:
                    yield ci, fb, od, fout
                    break          # the first CLKOP_DIV in range (ecppll's order)


def ecp5_pll(fin_hz, fout_hz, *, tolerance=PLL_TOLERANCE):
    """The EHXPLLL dividers making ``fout_hz`` from ``fin_hz``; ``ValueError`` (one line,
    naming the nearest frequencies it can make) when no divider set comes within
    ``tolerance`` (relative)."""
    for name, v in (("fin_hz", fin_hz), ("fout_hz", fout_hz)):
        if isinstance(v, bool) or not isinstance(v, (int, float, Fraction)) or v <= 0:
            raise ValueError(f"{name} must be a positive number, not {v!r}")
    fin, want = Fraction(fin_hz), Fraction(fout_hz)
    if not OUT[0] <= want <= OUT[1]:
        raise ValueError(f"the ECP5 PLL makes {float(OUT[0]) / 1e6:g}…{float(OUT[1]) / 1e6:g} MHz, "
                         f"not {float(want) / 1e6:g} MHz")
    best = None
    for ci, fb, od, fout in _candidates(fin):
        err = abs(fout - want)
        if best is None or err < best[0]:
            best = (err, PllParams(int(fin), ci, fb, od, fout))
    if best is None or best[0] > want * tolerance:
        made = sorted({c[3] for c in _candidates(fin)})
        below = [f for f in made if f < want][-1:]
        above = [f for f in made if f > want][:1]
        near = " or ".join(f"{float(f) / 1e6:.4g}" for f in below + above)
        raise ValueError(f"the ECP5 PLL cannot make {float(want) / 1e6:g} MHz from "
                         f"{float(fin) / 1e6:g} MHz within {float(tolerance) * 100:g} % "
                         f"(nearest: {near} MHz)")
    return best[1]


class Ecp5Pll(Elaboratable):
    """One EHXPLLL: ``clk_in`` (the oscillator) → ``clk_out`` (``params.fout``), ``locked``.

    Feedback from CLKOP, no reset, standby or dynamic phase; ``FREQUENCY_PIN_*`` attributes
    as ``ecppll`` writes them."""

    def __init__(self, params):
        if not isinstance(params, PllParams):
            raise TypeError(f"params must be a PllParams (hw.pll.ecp5_pll), not {params!r}")
        self.params = params
        self.clk_in = Signal()
        self.clk_out = Signal()
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{p.fin_hz / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{float(p.fout) / 1e6:.6g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
            p_CLKOP_CPHASE=p.cphase, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=p.clkfb_div,
            i_RST=0, i_STDBY=0, i_CLKI=self.clk_in, i_CLKFB=self.clk_out,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=self.clk_out, o_LOCK=self.locked)
        return m
