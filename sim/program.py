"""Accelerator programs and ext-memory images (docs/isa.md, docs/isa_transformer.md), and the
ISA's reference interpreter.

Three layers:

* **Layouts** — numpy conversions between matrices and ext-memory words of L bytes:
  :func:`a_words` (LOAD_A rows), :func:`b_words` (tile-major BBUF words), :func:`param_words`
  (7-word PBUF tiles), :func:`c_from_words` (STORE_C blocks), :func:`c_words` (LOAD_C blocks),
  :func:`t_words` (LOAD_T activation tables).
* **Builders** — :class:`Assembler` (checked instructions, encoded with ``hw.isa.encode``),
  :class:`ImageBuilder` (regions of one ext-memory image), and the program generators
  :func:`matmul_program` / :func:`chain_program`, which return a :class:`Job`: the image, the
  program, where it starts, and how to read the results back.
* **Reference** — :func:`interpret`, a numpy interpreter of the ISA built on the golden functions
  (``sim.golden.matmul``/``requant``/``exp_weights``/``softmax``/``add``/``rsqrt``, the
  LayerNorm as docs/isa_transformer.md states it). It fetches the program from the image like the hardware
  does, raises :class:`AcceleratorError` where the hardware sets STATUS.error, and returns the
  final ext memory and counters; the cycle counters come from the timing model in
  :class:`CostModel` (the program replayed against the documented interlocks and latencies),
  not from hardware. :func:`accesses` names the spans an instruction reads and writes (for the
  ordering checks of ``sim.compiler``).

Everything the hardware backends must match bit for bit is the final ext memory this
interpreter produces.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hw.isa import INSTR_BITS, Dst, ErrorCode, Flag, Op, Sat, decode, encode
from hw.array import DELTA_BLOCKS
from hw.pe import PE
from hw.rowunit import RowDatapath

from .errors import InputError, KwsError
from .golden import add as golden_add
from .golden import exp_weights as golden_exp_weights
from .golden import matmul as golden_matmul
from .golden import requant as golden_requant
from .golden import rsqrt as golden_rsqrt
from .golden import softmax as golden_softmax
from .golden.attention import DEN_MIN, mantissa15
from .golden.delta_kwt import delta_rows
from .golden.divide import divide as golden_divide
from .golden.fixed import INT8, INT9, INT16, INT32, UINT8, clip, rshift_round
from .golden.mac import MAX_K, wrap32

__all__ = [
    "AccelConfig", "AcceleratorError", "Assembler", "Program", "ImageBuilder", "Region", "Job",
    "OutputBlock", "Stage", "CostModel", "SAT_RANGE", "a_words", "b_words", "param_words",
    "c_from_words", "c_words", "t_words", "matmul_program", "chain_program", "interpret",
    "status_word", "accesses", "lag_of", "ROW_OPS", "LOAD_OPS", "RS_ENTRIES", "TABLE_ENTRIES",
    "MAX_ROW_K",
]

SAT_RANGE = {Sat.INT8: INT8, Sat.INT9: INT9, Sat.INT16: INT16, Sat.UINT8: UINT8}
PBUF_TILE_WORDS = 7
C_TILE_WORDS = 4          # STORE_C: one row's L int32 of one tile
AMEM_BITS = 9
BBUF_BITS = 8
MATMUL_FLAGS = int(Flag.BIAS | Flag.ACCUM | Flag.RELU | Flag.RSCALE | Flag.REQ | Flag.ACT
                   | Flag.MAXC)
DMATMUL_FLAGS = int(Flag.BIAS | Flag.RELU | Flag.REQ | Flag.ACT)
ROW_OPS = (Op.SOFTMAX, Op.LAYERNORM, Op.RADD, Op.RECIP)
LOAD_OPS = (Op.LOAD_A, Op.LOAD_B, Op.LOAD_P, Op.LOAD_C, Op.LOAD_T)
RS_ENTRIES = 256             # row-scale entries per PE
RES_ROWS = RowDatapath.RES_ROWS   # local rows of one LAYERNORM RES (its row-constant table)
TABLE_ENTRIES = 512          # activation table: two tables of 256 int9
MAX_ROW_K = 1024             # longest row of a row operation
LAG_MASK = 0xFF              # the load lag: ext_addr[7:0] of MATMUL and the row operations


def lag_of(i):
    """The load lag of a MATMUL / row operation (``ext_addr[7:0]``)."""
    return i["ext_addr"] & LAG_MASK


def res_row_span(passes, k):
    """Cycles from the first to one past the last element of a LAYERNORM RES with ``passes``
    local rows of k (hw/rowunit.py, *cycle cost*): the statistics passes, their last elements
    at least LN_DONE + 1 apart; the first output element RES_DELAY + 1 cycles after the last
    statistics element; output pass r not before its row's job has finished (RES_DONE + 1
    after the last element of its statistics pass)."""
    RD = RowDatapath
    last = [k - 1]
    for _ in range(1, passes):
        last.append(last[-1] + max(k, RD.LN_DONE + 1))
    f = max(last[-1] + RD.RES_DELAY + 1, last[0] + RD.RES_DONE + 1)
    for r in range(1, passes):
        f = max(f + k, last[r] + RD.RES_DONE + 1)
    return f + k


def is_res(i):
    """A LAYERNORM with the fused residual add (flag RES)."""
    return i["op"] == Op.LAYERNORM and bool(i["flags"] & Flag.RES)


def x_stride(i):
    """The AMEM row stride of the residual's x: RADD ``imm[15:0]``, LAYERNORM RES
    ``ext_addr[23:8]``."""
    return (i["ext_addr"] >> 8) & 0xFFFF if is_res(i) else i["imm"] & 0xFFFF


# --------------------------------------------------------------------------------------------
# Configuration and errors

@dataclass(frozen=True)
class AccelConfig:
    """What a program needs to know about one build of the accelerator.

    ``pes``/``lanes`` are P and L; the depths are in the units of docs/isa.md (AMEM and CMEM in
    elements per PE, BBUF in words, PBUF in tiles, IMEM in instructions). The hardware backends
    take the real depths from the hardware top (:func:`sim.backends.hardware_config`); the
    defaults here are only for the golden backend when nothing else is known.
    ``mem_latency`` is the ext-memory read latency (cycles) of the simulated memory.
    ``delta``: the build has the delta datapath (DMATMUL); ``False`` for ``--no-delta``
    builds (CONFIG bit 31), where a DMATMUL is ILLEGAL_OPCODE.
    """
    pes: int
    lanes: int
    amem_depth: int = 4096
    cmem_depth: int = 4096
    bbuf_depth: int = 4096
    pbuf_depth: int = 64
    imem_depth: int = 256
    mem_latency: int = 4
    delta_k: int = None          # largest K of a DMATMUL; None: 16·lanes (hw.array.DELTA_WORDS)
    delta: bool = True           # False: built without the delta datapath (--no-delta)

    def __post_init__(self):
        if not isinstance(self.delta, (bool, np.bool_)):
            raise InputError(f"delta must be True or False, not {self.delta!r}")
        object.__setattr__(self, "delta", bool(self.delta))
        if self.delta_k is None:
            object.__setattr__(self, "delta_k", 16 * self.lanes)
        for name in ("pes", "lanes", "amem_depth", "cmem_depth", "bbuf_depth", "pbuf_depth",
                     "imem_depth", "mem_latency", "delta_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name} must be a positive integer, not {v!r}")
            object.__setattr__(self, name, int(v))
        if self.pes > 255:
            raise InputError(f"pes must be at most 255, not {self.pes}")
        if INSTR_BITS % (8 * self.lanes):
            raise InputError(f"lanes must divide {INSTR_BITS // 8} (an instruction is "
                             f"{INSTR_BITS // 8} bytes of whole ext words), not {self.lanes}")
        for name in ("amem_depth", "cmem_depth", "bbuf_depth", "pbuf_depth", "imem_depth"):
            v = getattr(self, name)
            if v & (v - 1):
                raise InputError(f"{name} must be a power of two, not {v}")

    @property
    def words_per_instr(self):
        return INSTR_BITS // (8 * self.lanes)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def key(self):
        """A short text naming this configuration (for build folders and reports)."""
        return (f"p{self.pes}_l{self.lanes}_a{self.amem_depth}_c{self.cmem_depth}"
                f"_b{self.bbuf_depth}_pb{self.pbuf_depth}_i{self.imem_depth}"
                + ("" if self.delta else "_nodelta"))


class AcceleratorError(KwsError):
    """The accelerator stopped with STATUS.error (or the interpreter found the same error)."""

    def __init__(self, code, pc, detail="", backend=None):
        self.code = ErrorCode(code) if int(code) in ErrorCode._value2member_map_ else int(code)
        self.pc = int(pc)
        self.detail = detail
        self.backend = backend
        name = self.code.name if isinstance(self.code, ErrorCode) else "UNKNOWN"
        where = f" ({backend})" if backend else ""
        super().__init__(f"accelerator error {name} (code {int(code)}) at PC {self.pc}{where}"
                         + (f": {detail}" if detail else ""))


class SimulationError(KwsError):
    """The simulated system failed outside the accelerator (ext-memory access out of the image,
    watchdog expired, build failed)."""


def status_word(*, busy=False, halted=False, error=None):
    """The STATUS register value for the given state (docs/isa.md host interface)."""
    code = int(error or 0)
    return int(busy) | int(halted) << 1 | int(code != 0) << 2 | code << 8


# --------------------------------------------------------------------------------------------
# Layouts (matrix ↔ ext words); every function returns/accepts uint8 arrays of shape (words, L)

def _ceil(a, b):
    return -(-a // b)


def w_delta_words(w, pes, lanes):
    """LOAD_A image of DMATMUL weights W (K, N int8): row ``(j·K + k)·P + p`` holds
    ``W[k, t·L … t·L + L − 1]`` of column tile ``t = j·P + p`` (zeros past N), so that
    ``LOAD_A rows = ⌈tiles/P⌉·K·P, k = L, a_stride = L`` puts PE p's slices at
    ``a_base + (j·K + k)·L`` (docs/isa.md, DMATMUL)."""
    w = np.asarray(w, dtype=np.int64)
    K, N = w.shape
    T = _ceil(N, lanes)
    g = _ceil(T, pes)
    pad = np.zeros((K, g * pes * lanes), dtype=np.int64)
    pad[:, :N] = w
    out = pad.reshape(K, g, pes, lanes).transpose(1, 0, 2, 3).reshape(-1, lanes)
    return a_words(out, lanes)


def a_words(a, lanes):
    """LOAD_A format: row n in ``⌈K/L⌉`` words, element j in byte ``j mod L`` of word ``j div L``."""
    a = np.asarray(a, dtype=np.int64)
    m, k = a.shape
    w = _ceil(k, lanes)
    out = np.zeros((m, w * lanes), dtype=np.int8)
    out[:, :k] = a
    return out.view(np.uint8).reshape(m * w, lanes)


def b_words(b, lanes):
    """Tile-major B: word ``t·K + j`` holds ``B[j, t·L … t·L+L−1]`` (columns past N are 0)."""
    b = np.asarray(b, dtype=np.int64)
    k, n = b.shape
    tiles = _ceil(n, lanes)
    pad = np.zeros((k, tiles * lanes), dtype=np.int8)
    pad[:, :n] = b
    return np.ascontiguousarray(pad.reshape(k, tiles, lanes).transpose(1, 0, 2)) \
        .view(np.uint8).reshape(tiles * k, lanes)


def param_words(bias, m, sh, lanes):
    """PBUF tiles: per tile 4 words of int32 biases, 2 of int16 multipliers, 1 of uint8 shifts."""
    bias, m, sh = (np.asarray(x, dtype=np.int64) for x in (bias, m, sh))
    n = bias.shape[0]
    tiles = _ceil(n, lanes)
    out = np.zeros((tiles, PBUF_TILE_WORDS, lanes), dtype=np.uint8)
    bp = np.zeros(tiles * lanes, dtype="<i4")
    mp = np.zeros(tiles * lanes, dtype="<i2")
    sp = np.zeros(tiles * lanes, dtype=np.uint8)
    bp[:n], mp[:n], sp[:n] = bias, m, sh
    out[:, 0:4, :] = bp.view(np.uint8).reshape(tiles, 4, lanes)
    out[:, 4:6, :] = mp.view(np.uint8).reshape(tiles, 2, lanes)
    out[:, 6, :] = sp.reshape(tiles, lanes)
    return out.reshape(tiles * PBUF_TILE_WORDS, lanes)


def c_from_words(words, rows, tiles, lanes):
    """STORE_C block → int64 (rows, tiles·L): row n, tile t in 4 words at ``(n·tiles + t)·4``."""
    w = np.ascontiguousarray(np.asarray(words, dtype=np.uint8)[:rows * tiles * C_TILE_WORDS])
    return w.reshape(-1).view("<i4").reshape(rows, tiles * lanes).astype(np.int64)


def c_words(c, lanes):
    """LOAD_C format (the STORE_C packing): row n, tile t → 4 words at ``(n·tiles + t)·4``,
    L int32 little-endian; columns past N are 0."""
    c = np.asarray(c, dtype=np.int64)
    m, n = c.shape
    tiles = _ceil(n, lanes)
    out = np.zeros((m, tiles * lanes), dtype="<i4")
    out[:, :n] = c
    return out.view(np.uint8).reshape(m * tiles * C_TILE_WORDS, lanes)


def t_words(table, lanes):
    """LOAD_T format: entry e as int16 little-endian at bytes ``2(e mod L/2)`` of word
    ``e div (L/2)``."""
    t = np.asarray(table, dtype=np.int64).reshape(-1)
    per = lanes // 2
    out = np.zeros(_ceil(len(t), per) * per, dtype="<i2")
    out[:len(t)] = t
    return out.view(np.uint8).reshape(-1, lanes)


def _instr_words(word, lanes):
    return np.frombuffer(int(word).to_bytes(INSTR_BITS // 8, "little"), dtype=np.uint8) \
        .reshape(-1, lanes)


# --------------------------------------------------------------------------------------------
# Programs

@dataclass
class Program:
    """A list of decoded instructions (dicts of ``hw.isa.FIELDS``) with encoding helpers."""
    instrs: list = field(default_factory=list)

    def __len__(self):
        return len(self.instrs)

    def encode(self):
        """The 256-bit instruction words."""
        return [encode(i["op"], **{k: v for k, v in i.items() if k != "op"}) for i in self.instrs]

    def to_words(self, lanes):
        """The program as ext words (``len · 32/L`` rows of L bytes)."""
        if not self.instrs:
            return np.zeros((0, lanes), dtype=np.uint8)
        return np.concatenate([_instr_words(w, lanes) for w in self.encode()])

    @classmethod
    def from_words(cls, words):
        """Decode ext words (uint8, ``(n·32/L, L)``) back into a program."""
        raw = np.asarray(words, dtype=np.uint8).reshape(-1, INSTR_BITS // 8)
        return cls([decode(int.from_bytes(r.tobytes(), "little")) for r in raw])

    def disassemble(self):
        lines = []
        for pc, i in enumerate(self.instrs):
            try:
                name = Op(i["op"]).name
            except ValueError:
                name = f"op{i['op']:#04x}"
            args = ", ".join(f"{k}={v}" for k, v in i.items() if k != "op" and v)
            lines.append(f"{pc:4d}: {name} {args}".rstrip())
        return "\n".join(lines)


class Assembler:
    """Builds a :class:`Program` with every field checked against ``hw.isa.FIELDS`` widths and,
    with ``check=True`` (default), against the memory depths of ``config`` — an instruction the
    hardware would reject is refused here with :class:`InputError`. :meth:`raw` skips all checks
    (for tests of the hardware's own error detection)."""

    def __init__(self, config, *, check=True):
        self.cfg = config
        self.check = check
        self.program = Program()

    def _emit(self, op, **fields):
        try:
            encode(op, **fields)
        except ValueError as e:
            raise InputError(f"{Op(op).name}: {e}") from None
        if self.check:
            err = static_check(dict(op=int(op), **_full(fields)), self.cfg)
            if err is not None:
                raise InputError(f"{Op(op).name} at PC {len(self.program)} would fail on the "
                                 f"accelerator: {err[0].name} ({err[1]})")
        self.program.instrs.append(dict(op=int(op), **_full(fields)))
        return len(self.program) - 1

    def raw(self, op, **fields):
        """Append any instruction, checks off (op may be any 8-bit value)."""
        encode(0, **fields)
        self.program.instrs.append(dict(op=int(op), **_full(fields)))
        return len(self.program) - 1

    def nop(self):
        return self._emit(Op.NOP)

    def halt(self):
        return self._emit(Op.HALT)

    def sync(self):
        return self._emit(Op.SYNC)

    def load_b(self, ext_addr, count, b_base=0):
        return self._emit(Op.LOAD_B, ext_addr=ext_addr, count=count, b_base=b_base)

    def load_a(self, ext_addr, rows, k, a_base=0, a_stride=None):
        return self._emit(Op.LOAD_A, ext_addr=ext_addr, rows=rows, k=k, a_base=a_base,
                          a_stride=k if a_stride is None else a_stride)

    def load_p(self, ext_addr, count, p_base=0):
        return self._emit(Op.LOAD_P, ext_addr=ext_addr, count=count, p_base=p_base)

    def store_c(self, ext_addr, rows, tiles, out_base=0, out_stride=None):
        return self._emit(Op.STORE_C, ext_addr=ext_addr, rows=rows, tiles=tiles, out_base=out_base,
                          out_stride=tiles * self.cfg.lanes if out_stride is None else out_stride)

    @staticmethod
    def _lag(lag):
        if not 0 <= int(lag) <= LAG_MASK:
            raise InputError(f"load lag {lag} is not 0…{LAG_MASK}")
        return int(lag)

    def matmul(self, *, rows, k, tiles, n=0, a_base=0, a_stride=None, b_base=0, p_base=0,
               dst=Dst.CMEM, out_base=0, out_stride=None, sat=Sat.INT8, bias=False, accum=False,
               relu=False, rscale=False, req=False, act=False, table=0, lag=0, maxc=False):
        """``table``: which activation table ACT uses (``imm[0]``); ``maxc``: each row's
        maximum into CMEM column N (flag MAXC)."""
        flags = ((Flag.BIAS if bias else 0) | (Flag.ACCUM if accum else 0)
                 | (Flag.RELU if relu else 0) | (Flag.RSCALE if rscale else 0)
                 | (Flag.REQ if req else 0) | (Flag.ACT if act else 0)
                 | (Flag.MAXC if maxc else 0))
        if out_stride is None:
            out_stride = tiles * self.cfg.lanes
        return self._emit(Op.MATMUL, rows=rows, k=k, tiles=tiles, a_base=a_base,
                          a_stride=k if a_stride is None else a_stride, b_base=b_base,
                          p_base=p_base, dst=int(dst), out_base=out_base, out_stride=out_stride,
                          sat=int(_sat(sat)), flags=int(flags), count=n,
                          imm=int(table) & 1 if act else 0, ext_addr=self._lag(lag))

    def dmatmul(self, *, rows, k, tiles, n=0, a_base=0, a_stride=None, b_base=0, p_base=0,
                dst=Dst.AMEM, out_base=0, out_stride=None, sat=Sat.INT9, bias=False,
                relu=False, req=False, act=False, table=0, theta=0, lag=0):
        """DMATMUL (docs/isa.md): ``b_base`` is the AMEM element address of the W slices
        (:func:`w_delta_words`), ``theta`` the delta threshold (imm[15:8])."""
        flags = ((Flag.BIAS if bias else 0) | (Flag.RELU if relu else 0)
                 | (Flag.REQ if req else 0) | (Flag.ACT if act else 0))
        if not 0 <= int(theta) <= 255:
            raise InputError(f"DMATMUL theta {theta} is not 0…255")
        if out_stride is None:
            out_stride = tiles * self.cfg.lanes
        return self._emit(Op.DMATMUL, rows=rows, k=k, tiles=tiles, a_base=a_base,
                          a_stride=k if a_stride is None else a_stride, b_base=b_base,
                          p_base=p_base, dst=int(dst), out_base=out_base, out_stride=out_stride,
                          sat=int(_sat(sat)), flags=int(flags), count=n,
                          imm=(int(table) & 1 if act else 0) | int(theta) << 8,
                          ext_addr=self._lag(lag))

    def load_c(self, ext_addr, rows, tiles, out_base=0, out_stride=None):
        return self._emit(Op.LOAD_C, ext_addr=ext_addr, rows=rows, tiles=tiles, out_base=out_base,
                          out_stride=tiles * self.cfg.lanes if out_stride is None else out_stride)

    def load_t(self, ext_addr, count, a_base=0):
        return self._emit(Op.LOAD_T, ext_addr=ext_addr, count=count, a_base=a_base)

    def softmax(self, *, rows, k, a_base=0, a_stride=None, out_base=0, out_stride=None,
                dst=Dst.AMEM, c_e, sh_e, norm=False, lag=0, maxc=False):
        """Attention mode (weights + row scales) or, with ``norm``, probabilities; ``maxc``:
        each row's maximum is at column k (written by a MATMUL with MAXC)."""
        if not 0 <= int(c_e) < 1 << 16 or not 0 <= int(sh_e) < 64:
            raise InputError(f"SOFTMAX constants c_e={c_e} (16 bits), sh_e={sh_e} (6 bits)")
        return self._emit(Op.SOFTMAX, rows=rows, k=k, a_base=a_base,
                          a_stride=k if a_stride is None else a_stride, dst=int(dst),
                          out_base=out_base, out_stride=k if out_stride is None else out_stride,
                          flags=(Flag.NORM if norm else 0) | (Flag.MAXC if maxc else 0),
                          imm=int(c_e) | int(sh_e) << 16,
                          ext_addr=self._lag(lag))

    def recip(self, *, rows, a_base=0, a_stride=1, lag=0):
        """Row scales RS[r] from the int32 denominators ``CMEM[a_base + r·a_stride]``."""
        return self._emit(Op.RECIP, rows=rows, k=1, a_base=a_base, a_stride=a_stride,
                          dst=int(Dst.CMEM), ext_addr=self._lag(lag))

    def layernorm(self, *, rows, k, a_base=0, a_stride=None, out_base=0, out_stride=None,
                  dst=Dst.AMEM, p_base=0, r_d, E, sat=Sat.INT9, lag=0, res=False, b_base=0,
                  b_stride=None):
        """PBUF tiles ``p_base…``: bias = B_j, m = G_j (signed), sh = the output shift.
        ``res``: the fused residual add (flag RES): the source rows first become
        ``clip(CMEM[a] + rshift_round(AMEM[b]·m, sh), int16)`` (written back in place), with
        x rows at ``b_base`` (stride ``b_stride``, in ``ext_addr[23:8]``) and m / sh in the
        ⌈k/L⌉ PBUF tiles after G, B."""
        if not 0 <= int(r_d) < 1 << 25 or not 0 <= int(E) < 1 << 40:
            raise InputError(f"LAYERNORM constants r_D={r_d} (25 bits), E={E} (40 bits)")
        ext = self._lag(lag)
        if res:
            b_stride = k if b_stride is None else b_stride
            if not 0 <= int(b_stride) < 1 << 16:
                raise InputError(f"LAYERNORM RES AMEM row stride {b_stride} does not fit 16 "
                                 f"bits")
            ext |= int(b_stride) << 8
        return self._emit(Op.LAYERNORM, rows=rows, k=k, a_base=a_base,
                          a_stride=k if a_stride is None else a_stride, dst=int(dst),
                          out_base=out_base, out_stride=k if out_stride is None else out_stride,
                          p_base=p_base, imm=int(r_d), count=int(E) & 0xFFFFFFFF,
                          tiles=int(E) >> 32, sat=int(_sat(sat)), ext_addr=ext,
                          flags=Flag.RES if res else 0, b_base=b_base if res else 0)

    def radd(self, *, rows, k, a_base=0, a_stride=None, b_base=0, b_stride=None, out_base=0,
             out_stride=None, dst=Dst.CMEM, p_base=0, sat=Sat.INT16, lag=0):
        """``dst = sat(CMEM[a] + rshift_round(AMEM[b]·m, sh))``; ``b_stride`` in ``imm[15:0]``."""
        b_stride = k if b_stride is None else b_stride
        if not 0 <= int(b_stride) < 1 << 16:
            raise InputError(f"RADD AMEM row stride {b_stride} does not fit 16 bits")
        return self._emit(Op.RADD, rows=rows, k=k, a_base=a_base,
                          a_stride=k if a_stride is None else a_stride, b_base=b_base,
                          imm=int(b_stride), dst=int(dst), out_base=out_base,
                          out_stride=k if out_stride is None else out_stride, p_base=p_base,
                          sat=int(_sat(sat)), ext_addr=self._lag(lag))


def _sat(s):
    try:
        return Sat[s.upper()] if isinstance(s, str) else Sat(s)
    except (KeyError, ValueError):
        raise InputError(f"sat must be one of {', '.join(x.name for x in Sat)}") from None


def _full(fields):
    from hw.isa import FIELDS
    out = {name: 0 for name, _ in FIELDS if name != "op"}
    out.update({k: int(v) for k, v in fields.items()})
    return out


def static_check(i, cfg):
    """The decode-time check of one instruction: ``None`` or ``(ErrorCode, reason)``.

    Mirrors the controller (hw/controller.py) for the whole ISA (docs/isa.md,
    docs/isa_transformer.md), including the priority when several checks fail: ILLEGAL_OPCODE,
    BAD_FIELD, AMEM_RANGE (A read, then AMEM write), CMEM_RANGE, BBUF_RANGE (B read or BBUF
    write), PBUF_RANGE. Extents use ``⌈rows/P⌉`` local rows (PE 0 has the most) and, for MATMUL
    writes, N = ``count`` (0 means tiles·L). A LOAD_A, LOAD_C or STORE_C with nothing to move
    (rows, k or tiles 0) is not range-checked; LOAD_B/LOAD_P always are. Beyond the text of
    isa_transformer.md: PBUF is range-checked for REQ (it reads m/sh), and CMEM for ACCUM into
    AMEM (the start values).
    """
    P, L = cfg.pes, cfg.lanes
    op = i["op"]
    if op not in Op._value2member_map_:
        return ErrorCode.ILLEGAL_OPCODE, f"opcode {op:#04x}"
    op = Op(op)
    if op == Op.DMATMUL and not cfg.delta:
        return ErrorCode.ILLEGAL_OPCODE, "DMATMUL on a build without the delta datapath (--no-delta)"
    R = _ceil(i["rows"], P)
    rm1 = max(R - 1, 0)
    errs = []

    def over(code, what, end, limit):
        if end > limit:
            errs.append((code, f"{what} end {end} > depth {limit}"))

    flags = i["flags"]
    allowed = (MATMUL_FLAGS if op == Op.MATMUL else int(Flag.NORM | Flag.MAXC)
               if op == Op.SOFTMAX
               else int(Flag.RES) if op == Op.LAYERNORM else 0)
    if op == Op.DMATMUL:
        allowed = DMATMUL_FLAGS
    if flags & ~allowed:
        return ErrorCode.BAD_FIELD, f"{op.name}: flag bits {flags:#04x} not allowed"
    if op == Op.LOAD_B:
        over(ErrorCode.BBUF_RANGE, "BBUF write", i["b_base"] + i["count"], cfg.bbuf_depth)
    elif op == Op.LOAD_P:
        over(ErrorCode.PBUF_RANGE, "PBUF write", i["p_base"] + i["count"], cfg.pbuf_depth)
    elif op == Op.LOAD_A:
        if i["rows"] and i["k"]:
            over(ErrorCode.AMEM_RANGE, "AMEM write", i["a_base"] + rm1 * i["a_stride"] + i["k"],
                 cfg.amem_depth)
    elif op in (Op.STORE_C, Op.LOAD_C):
        if i["rows"] and i["tiles"]:
            what = "CMEM read" if op == Op.STORE_C else "CMEM write"
            over(ErrorCode.CMEM_RANGE, what,
                 i["out_base"] + rm1 * i["out_stride"] + i["tiles"] * L, cfg.cmem_depth)
    elif op == Op.LOAD_T:
        if i["a_base"] + i["count"] > TABLE_ENTRIES:
            return ErrorCode.BAD_FIELD, (f"table entries {i['a_base']}…"
                                         f"{i['a_base'] + i['count'] - 1} past {TABLE_ENTRIES}")
    elif op == Op.MATMUL:
        M, K, T, dst, sat = (i[f] for f in ("rows", "k", "tiles", "dst", "sat"))
        N = i["count"] or T * L
        if not (M and K and T):
            return ErrorCode.BAD_FIELD, "rows, k and tiles must be non-zero"
        if i["count"] > T * L:
            return ErrorCode.BAD_FIELD, f"count (N) {i['count']} > tiles·L = {T * L}"
        if dst > max(Dst) or sat > max(Sat):
            return ErrorCode.BAD_FIELD, f"dst {dst} / sat {sat} out of range"
        if flags & Flag.ACCUM and dst in (Dst.BBUF_ROWS, Dst.BBUF_T):
            return ErrorCode.BAD_FIELD, "ACCUM needs dst CMEM or AMEM"
        if flags & Flag.REQ and dst != Dst.CMEM:
            return ErrorCode.BAD_FIELD, "REQ needs dst CMEM"
        if flags & Flag.ACT and (dst not in (Dst.AMEM, Dst.AMEM_T) or sat != Sat.INT8):
            return ErrorCode.BAD_FIELD, "ACT needs dst AMEM or AMEM_T and sat INT8"
        if flags & Flag.RSCALE and dst == Dst.CMEM and not flags & Flag.REQ:
            return ErrorCode.BAD_FIELD, "RSCALE with dst CMEM needs REQ"
        if flags & Flag.RSCALE and R > RS_ENTRIES:
            return ErrorCode.BAD_FIELD, f"RSCALE with {R} row passes (> {RS_ENTRIES})"
        if dst in (Dst.AMEM, Dst.AMEM_T) and sat == Sat.INT16:
            return ErrorCode.BAD_FIELD, "AMEM holds int9: sat INT16 is not allowed"
        if flags & Flag.MAXC and (dst != Dst.CMEM or flags & Flag.REQ):
            return ErrorCode.BAD_FIELD, "MAXC needs dst CMEM without REQ"
        if flags & Flag.MAXC and i["out_stride"] <= N:
            return ErrorCode.BAD_FIELD, f"MAXC: out_stride {i['out_stride']} must exceed N = {N}"
        if dst == Dst.AMEM_T and (flags & Flag.ACCUM or i["out_base"] % L or i["out_stride"] % L):
            return ErrorCode.BAD_FIELD, "AMEM_T: no ACCUM; out_base and out_stride multiples of L"
        if dst in (Dst.BBUF_ROWS, Dst.BBUF_T) and sat != Sat.INT8:
            return ErrorCode.BAD_FIELD, "BBUF holds int8: sat must be INT8"
        over(ErrorCode.AMEM_RANGE, "A read", i["a_base"] + rm1 * i["a_stride"] + K,
             cfg.amem_depth)
        if dst == Dst.BBUF_ROWS:
            o_end = i["out_base"] + (T - 1) * i["out_stride"] + M
        elif dst == Dst.BBUF_T:
            o_end = i["out_base"] + (_ceil(M, L) - 1) * i["out_stride"] + N
        elif dst == Dst.AMEM_T:
            o_end = i["out_base"] + (_ceil(N, P) - 1) * i["out_stride"] + M
        else:
            o_end = i["out_base"] + rm1 * i["out_stride"] + N + (1 if flags & Flag.MAXC else 0)
        if dst in (Dst.AMEM, Dst.AMEM_T):
            over(ErrorCode.AMEM_RANGE, "AMEM write", o_end, cfg.amem_depth)
        if dst == Dst.CMEM or flags & Flag.ACCUM:
            over(ErrorCode.CMEM_RANGE, "CMEM write" if dst == Dst.CMEM else "CMEM start-value read",
                 o_end, cfg.cmem_depth)
        over(ErrorCode.BBUF_RANGE, "B read", i["b_base"] + T * K, cfg.bbuf_depth)
        if dst in (Dst.BBUF_ROWS, Dst.BBUF_T):
            over(ErrorCode.BBUF_RANGE, "BBUF write", o_end, cfg.bbuf_depth)
        if flags & (Flag.BIAS | Flag.REQ) or dst != Dst.CMEM:
            over(ErrorCode.PBUF_RANGE, "PBUF read", i["p_base"] + T, cfg.pbuf_depth)
    elif op == Op.DMATMUL:
        M, K, T, dst, sat = (i[f] for f in ("rows", "k", "tiles", "dst", "sat"))
        N = i["count"] or T * L
        if not (M and K and T):
            return ErrorCode.BAD_FIELD, "rows, k and tiles must be non-zero"
        if i["count"] > T * L:
            return ErrorCode.BAD_FIELD, f"count (N) {i['count']} > tiles·L = {T * L}"
        if sat > max(Sat):
            return ErrorCode.BAD_FIELD, f"sat {sat} out of range"
        if dst not in (Dst.CMEM, Dst.AMEM):
            return ErrorCode.BAD_FIELD, f"DMATMUL dst {dst}: only CMEM (with REQ) or AMEM"
        if dst == Dst.CMEM and not flags & Flag.REQ:
            return ErrorCode.BAD_FIELD, "DMATMUL with dst CMEM needs REQ"
        if flags & Flag.ACT and (dst != Dst.AMEM or sat != Sat.INT8):
            return ErrorCode.BAD_FIELD, "ACT needs dst AMEM and sat INT8"
        if dst == Dst.AMEM and sat == Sat.INT16:
            return ErrorCode.BAD_FIELD, "AMEM holds int9: sat INT16 is not allowed"
        if K > cfg.delta_k:
            return ErrorCode.BAD_FIELD, f"DMATMUL k = {K} > {cfg.delta_k} (the delta buffers)"
        for f in ("a_base", "a_stride", "b_base", "out_base", "out_stride"):
            if i[f] % L:
                return ErrorCode.BAD_FIELD, f"DMATMUL {f} = {i[f]} is not a multiple of L = {L}"
        over(ErrorCode.AMEM_RANGE, "A read", i["a_base"] + rm1 * i["a_stride"] + K,
             cfg.amem_depth)
        o_end = i["out_base"] + rm1 * i["out_stride"] + N
        if dst == Dst.AMEM:
            over(ErrorCode.AMEM_RANGE, "AMEM write", o_end, cfg.amem_depth)
        over(ErrorCode.AMEM_RANGE, "W read", i["b_base"] + _ceil(T, P) * K * L, cfg.amem_depth)
        if dst == Dst.CMEM:
            over(ErrorCode.CMEM_RANGE, "CMEM write", o_end, cfg.cmem_depth)
        over(ErrorCode.PBUF_RANGE, "PBUF read", i["p_base"] + T, cfg.pbuf_depth)
    elif op in ROW_OPS:
        k, rows, dst, sat = i["k"], i["rows"], i["dst"], i["sat"]
        if not 1 <= k <= MAX_ROW_K:
            return ErrorCode.BAD_FIELD, f"row length k = {k} (1…{MAX_ROW_K})"
        if not rows:
            return ErrorCode.BAD_FIELD, "rows must be non-zero"
        if dst not in (Dst.CMEM, Dst.AMEM):
            return ErrorCode.BAD_FIELD, f"dst {dst}: row operations write CMEM or AMEM"
        if op != Op.SOFTMAX:
            if sat > max(Sat):
                return ErrorCode.BAD_FIELD, f"sat {sat} out of range"
            if dst == Dst.AMEM and sat == Sat.INT16:
                return ErrorCode.BAD_FIELD, "AMEM holds int9: sat INT16 is not allowed"
        if op == Op.SOFTMAX and not flags & Flag.NORM and R > RS_ENTRIES:
            return ErrorCode.BAD_FIELD, f"SOFTMAX with {R} local rows (> {RS_ENTRIES} row scales)"
        res = op == Op.LAYERNORM and flags & Flag.RES
        if res and R > RES_ROWS:
            return ErrorCode.BAD_FIELD, f"LAYERNORM RES with {R} local rows (> {RES_ROWS})"
        if op == Op.RECIP:
            if k != 1 or dst != Dst.CMEM:
                return ErrorCode.BAD_FIELD, "RECIP: k must be 1 and dst CMEM (it writes RS only)"
            if R > RS_ENTRIES:
                return ErrorCode.BAD_FIELD, f"RECIP with {R} local rows (> {RS_ENTRIES} row scales)"
            over(ErrorCode.CMEM_RANGE, "CMEM read", i["a_base"] + rm1 * i["a_stride"] + 1,
                 cfg.cmem_depth)
            errs.sort(key=lambda e: e[0])
            return errs[0] if errs else None
        o_end = i["out_base"] + rm1 * i["out_stride"] + k
        if op == Op.RADD or res:
            over(ErrorCode.AMEM_RANGE, "AMEM read", i["b_base"] + rm1 * x_stride(i) + k,
                 cfg.amem_depth)
        if dst == Dst.AMEM:
            over(ErrorCode.AMEM_RANGE, "AMEM write", o_end, cfg.amem_depth)
        over(ErrorCode.CMEM_RANGE, "CMEM read", i["a_base"] + rm1 * i["a_stride"] + k
             + (1 if op == Op.SOFTMAX and flags & Flag.MAXC else 0), cfg.cmem_depth)
        if dst == Dst.CMEM:
            over(ErrorCode.CMEM_RANGE, "CMEM write", o_end, cfg.cmem_depth)
        if op != Op.SOFTMAX:
            over(ErrorCode.PBUF_RANGE, "PBUF read", i["p_base"] + _ceil(k, L) * (2 if res else 1),
                 cfg.pbuf_depth)
    order = [ErrorCode.AMEM_RANGE, ErrorCode.CMEM_RANGE, ErrorCode.BBUF_RANGE,
             ErrorCode.PBUF_RANGE]
    errs.sort(key=lambda e: order.index(e[0]))
    return errs[0] if errs else None


# --------------------------------------------------------------------------------------------
# Images

@dataclass(frozen=True)
class Region:
    name: str
    addr: int
    words: int


class ImageBuilder:
    """Lays out named regions one after another in an ext-memory image of L-byte words."""

    def __init__(self, lanes, *, base=0):
        self.lanes = lanes
        self.next = base
        self.base = base
        self.regions = {}
        self._data = []

    def _region(self, name, words):
        if name in self.regions:
            raise ValueError(f"region {name!r} already placed")
        r = Region(name, self.next, int(words))
        self.regions[name] = r
        self.next += int(words)
        return r

    def place(self, name, words):
        """Put ``words`` (uint8 ``(n, L)``) at the next free address; return the :class:`Region`."""
        words = np.asarray(words, dtype=np.uint8).reshape(-1, self.lanes)
        r = self._region(name, len(words))
        self._data.append((r.addr, words))
        return r

    def reserve(self, name, words):
        """Zero-filled space (outputs)."""
        return self._region(name, words)

    def put_a(self, name, a):
        return self.place(name, a_words(a, self.lanes))

    def put_b(self, name, b):
        return self.place(name, b_words(b, self.lanes))

    def put_params(self, name, bias, m, sh):
        return self.place(name, param_words(bias, m, sh, self.lanes))

    def put_program(self, name, program):
        return self.place(name, program.to_words(self.lanes))

    def build(self):
        img = np.zeros((self.next, self.lanes), dtype=np.uint8)
        for addr, words in self._data:
            img[addr:addr + len(words)] = words
        return img


# --------------------------------------------------------------------------------------------
# Jobs: matmul and chains of matmuls

@dataclass(frozen=True)
class OutputBlock:
    """One STORE_C block: rows ``row0…row0+rows−1``, column tiles ``t0…t0+tiles−1``."""
    ext_addr: int
    row0: int
    rows: int
    t0: int
    tiles: int


@dataclass
class Job:
    """An image with its program and the way back to the result matrix.

    ``image`` is the whole ext memory (uint8 ``(words, L)``) with the program at ``prog_base``.
    :meth:`read` turns a final ext memory into the (M, N) result (int64 holding int32, or the
    requantized values when the last stage requantizes).
    """
    config: AccelConfig
    image: np.ndarray
    program: Program
    prog_base: int
    shape: tuple               # (M, N) of the result
    blocks: list
    regions: dict
    mac_ops: int               # Σ M·K·N over the stages (useful multiply-accumulates)
    notes: list = field(default_factory=list)

    @property
    def prog_len(self):
        return len(self.program)

    def read(self, ext):
        ext = np.asarray(ext, dtype=np.uint8).reshape(-1, self.config.lanes)
        M, N = self.shape
        L = self.config.lanes
        out = np.zeros((M, _ceil(N, L) * L), dtype=np.int64)
        for blk in self.blocks:
            words = ext[blk.ext_addr:blk.ext_addr + blk.rows * blk.tiles * C_TILE_WORDS]
            out[blk.row0:blk.row0 + blk.rows, blk.t0 * L:(blk.t0 + blk.tiles) * L] = \
                c_from_words(words, blk.rows, blk.tiles, L)
        return out[:, :N]


@dataclass
class Stage:
    """One matmul of a chain: ``y = requant(x·B + bias)`` (or the int32 accumulator when
    ``m``/``sh`` are None, allowed for the last stage only)."""
    b: np.ndarray
    bias: np.ndarray | None = None
    m: np.ndarray | None = None
    sh: np.ndarray | None = None
    sat: Sat = Sat.INT8
    relu: bool = False

    @property
    def requant(self):
        return self.m is not None


def _as_int_matrix(x, name, lo, hi, *, dims=2):
    if x is None:
        raise InputError(f"{name} is missing")
    arr = np.asarray(x)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinity")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != dims:
        raise InputError(f"{name} must have {dims} dimension(s), got shape {arr.shape}")
    if 0 in arr.shape:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    arr = arr.astype(np.int64)
    if arr.min() < lo or arr.max() > hi:
        raise InputError(f"{name} values must lie in [{lo}, {hi}], found [{arr.min()}, {arr.max()}]")
    return arr


def _per_column(x, n, name, lo, hi):
    arr = np.asarray(x)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinity")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be integers, got dtype {arr.dtype}")
    try:
        arr = np.broadcast_to(arr.astype(np.int64), (n,))
    except ValueError:
        raise InputError(f"{name} must be a scalar or have {n} elements, got shape {arr.shape}") from None
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise InputError(f"{name} values must lie in [{lo}, {hi}], found [{arr.min()}, {arr.max()}]")
    return arr.copy()


def matmul_program(a, b, *, pes=None, lanes=None, config=None, bias=None, requant=None,
                   sat=Sat.INT8, relu=False, chunk_passes=None, piece_tiles=None):
    """``C = A·B (+ bias)`` as a :class:`Job`.

    a : int8 (M, K) — loaded with LOAD_A, so the int8 range (the ext format is int8).
    b : int8 (K, N).
    bias : int32 (N,), optional — accumulators start at it (flags.BIAS).
    requant : ``(m, sh)``, optional — per-column (or scalar) multiplier uint15 and shift 0…47;
        the result is then ``sat(requant(acc))`` (``relu`` optional). The ISA stores only int32
        accumulators to ext memory, so the requantized matrix is written to AMEM and moved out by
        a second matmul with the identity (exact; costs ``⌈M/P⌉·⌈N/L⌉·N`` more MAC cycles), which
        restricts ``sat`` to what AMEM (int9) holds: INT8, INT9 or UINT8.
    pes, lanes or config : the accelerator (an :class:`AccelConfig`; ``pes``/``lanes`` alone
        use the default depths).
    chunk_passes, piece_tiles : shape of the overlapped program (int32 result, no requant):
        the MATMUL is split into chunks of ``chunk_passes`` row passes (``P`` rows each), each
        chunk one MATMUL whose A rows load and whose int32 results store while the next chunk
        computes; the first chunk is further split into MATMULs of ``piece_tiles`` column tiles,
        each behind the LOAD_B (LOAD_P) of just its tiles, so that the B load overlaps compute.
        ``None`` (default): the shape with the lowest :class:`CostModel` estimate that fits
        IMEM (one pass per chunk for large matrices, one chunk for small ones).
    """
    cfg = _config(config, pes, lanes)
    a = _as_int_matrix(a, "A", *INT8)
    b = _as_int_matrix(b, "B", *INT8)
    if a.shape[1] != b.shape[0]:
        raise InputError(f"A is {a.shape[0]}×{a.shape[1]} but B is {b.shape[0]}×{b.shape[1]}: "
                         f"the inner dimensions differ")
    m = sh = None
    if requant is not None:
        try:
            m, sh = requant
        except (TypeError, ValueError):
            raise InputError("requant must be a pair (m, sh)") from None
    if m is None and not relu:
        if bias is not None:
            bias = _per_column(bias, b.shape[1], "bias of B", *INT32)
        bound = ((0 if bias is None else int(np.abs(bias).max()))
                 + a.shape[1] * int(np.abs(a).max()) * int(np.abs(b).max()))
        if bound >= 1 << 31:
            raise InputError(f"B: |bias| + K·max|a|·max|b| = {bound} reaches 2³¹; the int32 "
                             f"accumulator could wrap")
        job = _overlapped_matmul(a, b, bias, cfg, chunk_passes, piece_tiles)
        if job is not None:
            return job
    return chain_program(a, [Stage(b, bias=bias, m=m, sh=sh, sat=sat, relu=relu)], config=cfg)


def _check_shape_param(name, v, lo):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name} must be an integer ≥ {lo}, not {v!r}")
    return int(v)


def _overlapped_matmul(a, b, bias, cfg, chunk_passes, piece_tiles, _shapes=None, _log=None):
    """The one-stage, int32-result matmul with transfers overlapping compute, or ``None`` when
    its buffers do not fit (then :func:`chain_program` takes over).

    Per column chunk (the tiles that fit BBUF/PBUF; usually all of them):

        LOAD_A chunk 0
        LOAD_B piece 0, (LOAD_P piece 0), MATMUL chunk 0 × piece 0, … (pieces of the first chunk)
        LOAD_A chunk 1, STORE_C chunk 0, MATMUL chunk 1
        LOAD_A chunk 2, STORE_C chunk 1, MATMUL chunk 2, …
        STORE_C last chunk

    A MATMUL waits only for the loads before it, and a STORE_C only for the MATMULs before it
    (docs/architecture.md, *Ordering*), so the A rows of chunk c + 1 load and the int32 results
    of chunk c − 1 store while chunk c computes. Hazards the hardware does not interlock are
    ordered by construction: a LOAD_A goes into a region no MATMUL still reads (the whole A
    resident, or two regions: LOAD_A c + 2 is issued after MATMUL c + 1 is accepted, so after
    MATMUL c's last beat); a MATMUL writes a CMEM region no STORE_C still reads (one region per
    chunk, or a ring of ≥ 2: the LOAD issued after STORE_C c − 2 — the chunk's LOAD_A, or an
    empty LOAD_B when A is resident — holds MATMUL c until that STORE_C is done). Column chunks
    after the first start with a SYNC (BBUF, PBUF and CMEM are reused).
    """
    P, L = cfg.pes, cfg.lanes
    M, K = a.shape
    N = b.shape[1]
    T = _ceil(N, L)
    R = _ceil(M, P)                     # row passes (local rows of PE 0)
    w = _ceil(K, L) * L                 # AMEM row stride: rows start on a multiple of L
    chunk_passes = _check_shape_param("chunk_passes", chunk_passes, 1)
    piece_tiles = _check_shape_param("piece_tiles", piece_tiles, 1)
    if K > MAX_K or K > cfg.bbuf_depth or L > cfg.cmem_depth:
        return None
    tc = min(T, cfg.bbuf_depth // K, 255)
    if bias is not None:
        tc = min(tc, cfg.pbuf_depth)
    a_res = R * w <= cfg.amem_depth
    wpr = _ceil(K, L)                   # ext words per row of A

    img = ImageBuilder(L)
    a_reg = img.put_a("A", a)
    b_reg = img.put_b("B", b)
    p_reg = None
    if bias is not None:
        z = np.zeros(N, np.int64)
        p_reg = img.put_params("P", bias, z, z)
    c_reg = img.reserve("C", M * T * C_TILE_WORDS)

    def build(cp, pt, cp0, pt_last):
        """(instructions as (op, fields), output blocks) or None when the buffers do not fit.
        Chunks of ``cp`` passes, the first of ``cp0``; pieces of ``pt`` tiles in the first
        chunk; the last chunk (when it is not the first) in pieces of ``pt_last`` tiles, each
        with its own STORE_C (a shorter tail)."""
        big = max(cp, cp0)
        if not a_res and 2 * big * w > cfg.amem_depth:
            return None
        starts = [0] + list(range(cp0, R, cp))          # first pass of every chunk
        nc = len(starts)
        S = big * tc * L                # CMEM elements per ring region (per PE)
        if R * tc * L <= cfg.cmem_depth:
            regions = None              # every chunk has its own region
        elif 2 * S <= cfg.cmem_depth:
            regions = cfg.cmem_depth // S
        else:
            return None
        out, blocks = [], []
        c_off = 0
        for j, t0 in enumerate(range(0, T, tc)):
            tn = min(tc, T - t0)
            stride = tn * L
            load_a = j == 0 or not a_res

            def rows_of(c):
                return min((starts[c + 1] if c + 1 < nc else R) * P, M) - starts[c] * P

            def a_base(c):
                return (starts[c] if a_res else (c % 2) * big) * w

            def c_base(c):
                return starts[c] * stride if regions is None else (c % regions) * S

            def store(c, p0, pn):
                nonlocal c_off
                r = rows_of(c)
                blocks.append(OutputBlock(c_reg.addr + c_off, starts[c] * P, r, t0 + p0, pn))
                f = dict(ext_addr=c_reg.addr + c_off, rows=r, tiles=pn,
                         out_base=c_base(c) + p0 * L, out_stride=stride)
                c_off += r * pn * C_TILE_WORDS
                return Op.STORE_C, f

            # Units: (loads before it, chunk, first tile, tiles, stores after it).
            units = []
            split_last = nc > 1 and pt_last < tn
            for c in range(nc):
                step = pt if c == 0 else pt_last if c == nc - 1 else tn
                for p0 in range(0, tn, step):
                    pn = min(step, tn - p0)
                    loads = []
                    if p0 == 0:
                        if load_a:
                            loads.append((Op.LOAD_A, dict(
                                ext_addr=a_reg.addr + starts[c] * P * wpr, rows=rows_of(c), k=K,
                                a_base=a_base(c), a_stride=w)))
                        elif regions is not None and c >= regions:
                            loads.append((Op.LOAD_B, dict(count=0)))  # fence: STORE_C c−2 done
                    if c == 0:
                        loads.append((Op.LOAD_B, dict(ext_addr=b_reg.addr + (t0 + p0) * K,
                                                      count=pn * K, b_base=p0 * K)))
                        if p_reg is not None:
                            loads.append((Op.LOAD_P, dict(
                                ext_addr=p_reg.addr + (t0 + p0) * PBUF_TILE_WORDS, count=pn,
                                p_base=p0)))
                    if split_last and c == nc - 1:
                        stores = [(c, p0, pn)]
                    else:
                        stores = [(c, 0, tn)] if p0 + pn == tn else []
                    units.append((loads, c, p0, pn, stores))
            if j:
                out.append((Op.SYNC, {}))
            pending = []
            for loads, c, p0, pn, stores in units:
                out += loads
                out += [store(*st) for st in pending]
                cols = min(pn * L, N - (t0 + p0) * L)
                out.append((Op.MATMUL, dict(
                    rows=rows_of(c), k=K, tiles=pn, count=cols, a_base=a_base(c), a_stride=w,
                    b_base=p0 * K, p_base=p0, dst=int(Dst.CMEM), out_base=c_base(c) + p0 * L,
                    out_stride=stride, flags=int(Flag.BIAS) if p_reg is not None else 0)))
                pending = stores
            out += [store(*st) for st in pending]
        out.append((Op.HALT, {}))
        return out, blocks

    def as_program(instrs):
        return Program([dict(op=int(op), **_full(f)) for op, f in instrs])

    def candidates(lo, hi, given):
        if given is not None:
            return [min(given, hi)]
        vals = {hi, lo}
        v = 1
        while v < hi:
            vals.add(v)
            vals.update((_ceil(hi, d) for d in (2, 3, 4)))
            v *= 2
        return sorted(x for x in vals if lo <= x <= hi)

    model = CostModel(mem_latency=cfg.mem_latency)
    best = None

    def consider(*shape):
        nonlocal best
        built = build(*shape)
        if built is None or len(built[0]) > cfg.imem_depth:
            return
        key = (model.run(as_program(built[0]), cfg)["CYCLES"], len(built[0]))
        if _log is not None:
            _log.append((shape, key))
        if best is None or key < best[0]:
            best = (key, built, shape)

    for shape in _shapes or ():
        consider(*shape)
    # The chunk size first (no pieces), then the pieces and the first chunk around it.
    for cp in ([] if _shapes else candidates(1, R, chunk_passes)):
        consider(cp, tc, cp, tc)
    if best is not None and not _shapes:
        cp = best[2][0]
        for cp0 in {cp, min(2 * cp, R)}:
            for pt in candidates(1, tc, piece_tiles):
                consider(cp, pt, cp0, tc)
        cp, pt, cp0, _ = best[2]
        for pt_last in {_ceil(tc, 2), _ceil(tc, 3)}:
            consider(cp, pt, cp0, pt_last)
    if best is None:
        return None
    instrs, blocks = best[1]
    asm = Assembler(cfg)
    for op, f in instrs:
        asm._emit(op, **f)
    prog_reg = img.put_program("program", asm.program)
    return Job(config=cfg, image=img.build(), program=asm.program, prog_base=prog_reg.addr,
               shape=(M, N), blocks=blocks, regions=dict(img.regions), mac_ops=M * K * N)


def _config(config, pes, lanes):
    if config is not None:
        if (pes is not None and pes != config.pes) or (lanes is not None and lanes != config.lanes):
            raise InputError("pes/lanes disagree with config")
        return config
    if pes is None or lanes is None:
        raise InputError("give pes and lanes, or a config")
    return AccelConfig(pes=pes, lanes=lanes)


def chain_program(a, stages, *, pes=None, lanes=None, config=None):
    """``x₀ = A``; ``x_{i+1} = stage_i(x_i)`` on the accelerator with every intermediate kept in
    AMEM (dst AMEM), the last stage to CMEM and ext memory. See :class:`Stage`.

    Rows are processed in chunks that fit AMEM, columns in tile chunks that fit half of BBUF,
    PBUF and CMEM, double-buffered (the next chunk's LOAD_B/LOAD_P run behind the current
    MATMUL), with a SYNC after every MATMUL. (A one-stage matmul with an int32 result takes
    the overlapped path of :func:`matmul_program` instead.)
    """
    cfg = _config(config, pes, lanes)
    P, L = cfg.pes, cfg.lanes
    a = _as_int_matrix(a, "A", *INT8)
    M, K0 = a.shape
    stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
    if not stages:
        raise InputError("a chain needs at least one stage")

    # ---- check and normalise every stage
    width = K0
    amax = int(np.abs(a).max())
    plan = []
    mac_ops = 0
    for idx, s in enumerate(stages):
        name = f"B{idx + 1}" if len(stages) > 1 else "B"
        b = _as_int_matrix(s.b, name, *INT8)
        if b.shape[0] != width:
            raise InputError(f"{name} has {b.shape[0]} rows but its input has {width} columns")
        k, n = b.shape
        bias = None if s.bias is None else _per_column(s.bias, n, f"bias of {name}", *INT32)
        bound = (0 if bias is None else int(np.abs(bias).max())) + k * amax * int(np.abs(b).max())
        if bound >= 1 << 31:
            raise InputError(f"{name}: |bias| + K·max|a|·max|b| = {bound} reaches 2³¹; the int32 "
                             f"accumulator could wrap")
        last = idx == len(stages) - 1
        mm = ss = None
        sat = Sat.INT8
        if s.requant:
            try:
                sat = Sat[s.sat.upper()] if isinstance(s.sat, str) else Sat(s.sat)
            except (KeyError, ValueError):
                raise InputError(f"sat must be one of {', '.join(x.name for x in Sat)}") from None
            if sat == Sat.INT16:
                raise InputError("sat INT16 cannot be kept in AMEM (int9); requantize to INT8, "
                                 "INT9 or UINT8")
            if s.sh is None:
                raise InputError(f"{name}: requant needs both m and sh")
            mm = _per_column(s.m, n, f"m of {name}", 0, (1 << 15) - 1)
            ss = _per_column(s.sh, n, f"sh of {name}", 0, 47)
            lo, hi = SAT_RANGE[sat]
            amax = max(-lo, hi)
        elif not last:
            raise InputError(f"{name}: every stage but the last must requantize (m, sh)")
        elif s.relu:
            raise InputError("relu needs requant")
        plan.append(dict(k=k, n=n, b=b, bias=bias, m=mm, sh=ss, sat=sat, relu=bool(s.relu)))
        mac_ops += M * k * n
        width = n
    out_n = width
    if plan[-1]["m"] is not None:
        plan.append(dict(k=out_n, n=out_n, b=np.eye(out_n, dtype=np.int64), bias=None, m=None,
                         sh=None, sat=Sat.INT8, relu=False, identity=True))
    for st in plan:
        if st["k"] > MAX_K:
            raise InputError(f"K = {st['k']} exceeds {MAX_K}")
        if st["k"] > cfg.amem_depth:
            raise InputError(f"K = {st['k']} does not fit AMEM ({cfg.amem_depth} elements per PE)")
        if st["k"] > cfg.bbuf_depth:
            raise InputError(f"K = {st['k']} does not fit BBUF ({cfg.bbuf_depth} words)")
    if L > cfg.cmem_depth:
        raise InputError(f"CMEM ({cfg.cmem_depth}) holds less than one tile row ({L})")

    # ---- AMEM: two ping-pong regions; x_i lives in region i % 2 (row stride = its width)
    # (row starts that are multiples of L let LOAD_A write one word per cycle, hw/dma.py)
    widths = [_ceil(K0, L) * L] + [_ceil(st["n"], L) * L for st in plan[:-1]]
    w_even = max(widths[0::2])
    w_odd = max(widths[1::2], default=0)
    r_a = min(_ceil(M, P), cfg.amem_depth // (w_even + w_odd))
    if r_a < 1:
        raise InputError(f"one row of the chain needs {w_even + w_odd} AMEM elements per PE, "
                         f"more than the {cfg.amem_depth} there are")
    r_a = min(r_a, cfg.cmem_depth // L)          # one tile of the local rows must fit CMEM
    # CMEM, BBUF, PBUF: two halves when a chunk fits one (double buffering), else one buffer
    half_c = cfg.cmem_depth // 2 if cfg.cmem_depth // 2 >= r_a * L else cfg.cmem_depth
    half_p = max(1, cfg.pbuf_depth // 2)
    rows_per_chunk = r_a * P

    # ---- image: operands, parameters, outputs; the program goes last
    img = ImageBuilder(L)
    a_reg = img.put_a("A", a)
    for idx, st in enumerate(plan):
        st["b_reg"] = img.put_b(f"B{idx}", st["b"])
        st["tiles"] = _ceil(st["n"], L)
        st["p_reg"] = None
        if st["bias"] is not None or st["m"] is not None:
            z = np.zeros(st["n"], np.int64)
            st["p_reg"] = img.put_params(f"P{idx}", *(z if x is None else x for x in
                                                      (st["bias"], st["m"], st["sh"])))
        half_b = cfg.bbuf_depth // 2 if cfg.bbuf_depth // 2 >= st["k"] else cfg.bbuf_depth
        tc = min(st["tiles"], half_b // st["k"], 255)
        if st["p_reg"] is not None:
            tc = min(tc, half_p)
        if idx == len(plan) - 1:
            tc = min(tc, half_c // (r_a * L))
        st["tc"], st["half_b"] = max(1, tc), half_b
    c_reg = img.reserve("C", M * plan[-1]["tiles"] * C_TILE_WORDS)

    asm = Assembler(cfg)
    blocks = []
    c_off = 0                # running ext offset inside region C
    buf = 0                  # half of BBUF/PBUF the next load goes to
    cbuf = 0                 # half of CMEM the next final MATMUL writes

    def overlap(r1, r2):
        return r1 is not None and r2 is not None and r1[0] < r2[1] and r2[0] < r1[1]

    def plan_loads(i, t0, tn, half):
        st = plan[i]
        bb = half * st["half_b"] if st["half_b"] < cfg.bbuf_depth else 0
        pb = half * half_p if 2 * half_p <= cfg.pbuf_depth else 0
        return dict(i=i, t0=t0, tn=tn, bb=bb, pb=pb,
                    b_rng=(bb, bb + tn * st["k"]),
                    p_rng=(pb, pb + tn) if st["p_reg"] is not None else None)

    def emit_loads(ld):
        st = plan[ld["i"]]
        asm.load_b(st["b_reg"].addr + ld["t0"] * st["k"], ld["tn"] * st["k"], ld["bb"])
        if st["p_reg"] is not None:
            asm.load_p(st["p_reg"].addr + ld["t0"] * PBUF_TILE_WORDS, ld["tn"], ld["pb"])

    pending_store = None     # CMEM range a queued STORE_C still reads
    for row0 in range(0, M, rows_per_chunk):
        rows = min(rows_per_chunk, M - row0)
        asm.load_a(a_reg.addr + row0 * _ceil(K0, L), rows, K0, 0, w_even)
        work = [(i, t0, min(st["tc"], st["tiles"] - t0))
                for i, st in enumerate(plan) for t0 in range(0, st["tiles"], st["tc"])]
        cur = plan_loads(*work[0], buf)
        emit_loads(cur)
        asm.sync()
        for j, (i, t0, tn) in enumerate(work):
            st = plan[i]
            final = i == len(plan) - 1
            even = i % 2 == 0
            kw = dict(rows=rows, k=st["k"], tiles=tn, n=min(tn * L, st["n"] - t0 * L),
                      a_base=0 if even else w_even * r_a,
                      a_stride=w_even if even else w_odd, b_base=cur["bb"], p_base=cur["pb"],
                      bias=st["bias"] is not None)
            if final:
                cb = cbuf * half_c if half_c < cfg.cmem_depth else 0
                c_rng = (cb, cb + (r_a - 1) * tn * L + tn * L)
                if overlap(c_rng, pending_store):
                    asm.sync()
                asm.matmul(dst=Dst.CMEM, out_base=cb, out_stride=tn * L, **kw)
            else:
                asm.matmul(dst=Dst.AMEM, out_base=(w_even * r_a if even else 0) + t0 * L,
                           out_stride=w_odd if even else w_even, sat=st["sat"], relu=st["relu"],
                           **kw)
            if j + 1 < len(work):
                buf ^= 1
                nxt = plan_loads(*work[j + 1], buf)
                if overlap(nxt["b_rng"], cur["b_rng"]) or overlap(nxt["p_rng"], cur["p_rng"]):
                    asm.sync()          # single buffer: the array must be done with it first
                emit_loads(nxt)
                cur = nxt
            asm.sync()
            pending_store = None
            if final:
                asm.store_c(c_reg.addr + c_off, rows, tn, cb, tn * L)
                pending_store = c_rng
                blocks.append(OutputBlock(c_reg.addr + c_off, row0, rows, t0, tn))
                c_off += rows * tn * C_TILE_WORDS
                cbuf ^= 1
        buf ^= 1
    asm.halt()
    if len(asm.program) > cfg.imem_depth:
        raise InputError(f"the program needs {len(asm.program)} instructions, IMEM holds "
                         f"{cfg.imem_depth}")
    prog_reg = img.put_program("program", asm.program)
    notes = []
    if plan[-1].get("identity"):
        notes.append("requantized output moved out through an identity matmul (the ISA stores "
                     "only int32 accumulators)")
    return Job(config=cfg, image=img.build(), program=asm.program, prog_base=prog_reg.addr,
               shape=(M, out_n), blocks=blocks, regions=dict(img.regions), mac_ops=mac_ops,
               notes=notes)


def chain_reference(a, stages):
    """What :func:`chain_program` computes, with the golden functions only (for tests)."""
    x = np.asarray(a, dtype=np.int64)
    for s in stages:
        s = s if isinstance(s, Stage) else Stage(**s)
        n = np.asarray(s.b).shape[1]
        c0 = None if s.bias is None else np.broadcast_to(np.asarray(s.bias, np.int64), (n,))
        acc = golden_matmul(x, s.b, c0)
        if s.m is None:
            x = acc
            continue
        lo, hi = SAT_RANGE[Sat(s.sat)]
        x = golden_requant(acc, np.broadcast_to(s.m, (n,)), np.broadcast_to(s.sh, (n,)), lo, hi)
        if s.relu:
            x = np.maximum(x, 0)
    return x


# --------------------------------------------------------------------------------------------
# Timing model (golden backend's counters)

@dataclass
class CostModel:
    """Instruction-level timing of the hardware as documented (docs/architecture.md, *Cost
    model* and *Ordering*; the docstrings of hw/controller.py, hw/dma.py, hw/array.py), event
    by event:

    * the program is loaded by DMA (one word per cycle after ``mem_latency``); every
      instruction then takes ``issue`` cycles from fetch to dispatch, one after the other;
    * LOAD_* / STORE_C queue to the DMA engine (queue of ``queue_depth``), which runs them one
      at a time in order: ``dma_setup`` cycles, then a word per cycle, loads after
      ``mem_latency``; a STORE_C starts reading only when the MATMULs issued before it are
      complete for CMEM (``L + done_extra`` cycles after their last beat);
    * a MATMUL dispatches when every load issued before it but the last ``lag`` (its load lag,
      ``ext_addr[7:0]``) has landed, the sequencer is free (back-to-back MATMULs: one idle
      cycle), no row operation runs and, behind a MATMUL with dst AMEM/BBUF_*/AMEM_T or REQ,
      the array is idle; it issues ``⌈M/P⌉·tiles·max(K, L)`` beats; the array is busy until
      ``L + busy_extra`` cycles after the last beat (ARRAY_CYCLES counts those cycles); a
      LOAD_C moves its words only after the MATMULs with dst CMEM, DMATMULs and row operations
      issued before it have finished;
    * a row operation (SOFTMAX, LAYERNORM, RADD, RECIP) starts when the loads allow (its lag),
      the array is idle and the previous row operation has finished, and takes the row unit's
      documented time (hw/rowunit.py): ``⌈rows/P⌉·max(n·k, DONE + 1)`` plus its pipeline, with
      n passes (SOFTMAX 2, with NORM 3; LAYERNORM 2; RADD 1) and DONE the per-row job; RECIP
      ``⌈rows/P⌉·(DONE + 1) + 2`` (:meth:`row_cycles`);
      a STORE_C also waits for it;
    * SYNC and HALT wait for the DMA, the array and the row unit to be idle.

    ``timeline``: a list that receives ``(start, end)`` per executed instruction (a load: its
    dispatch and its landing; a MATMUL: accepted and array idle; a row operation: start and
    end). Not modelled: STALL_WB holds (dst BBUF_* with small K), LOAD_A rows that start off a
    multiple of L (two AMEM writes per word), ext-memory back-pressure. An estimate for the
    golden backend and for choosing program shapes, not a measurement
    (``benchmarks/matmul.py`` compares it with the RTL's counters)."""
    mem_latency: int = 4
    issue: int = 9               # fetch → dispatch of every instruction
    dma_setup: int = 5           # a transfer: dequeue → first request
    load_tail: int = 4           # + after the last response (loads that move words)
    store_setup: int = 2         # STORE_C: dequeue → first CMEM read
    store_tail: int = 5          # STORE_C: last read → done
    # last beat → MATMUL complete for CMEM (its last CMEM write seen): L + done_extra; → array
    # idle: L + busy_extra (the beat pipeline, the drain-register load, the drain stages)
    done_extra: int = PE.MAC_LATENCY + 2 + PE.D_WRITE
    busy_extra: int = PE.MAC_LATENCY + 2 + PE.D_Y
    queue_depth: int = 4
    # row unit (hw/rowunit.py): per-row job latency, pipeline after the last element
    row_done: tuple = (("LAYERNORM", 54), ("NORM", 50), ("SOFTMAX", 62), ("RECIP", 42))
    row_pipe: int = 27

    # DMATMUL (hw/array.py, PEArray._delta): a token's last beat → its block of results full
    # (the beat pipeline, the drain of L elements, D_Y); the writer then takes P cycles (dst
    # AMEM) or 4P (dst CMEM); per token: the X scan (⌈K/L⌉ reads), 5 cycles of encoder pipeline
    # and word select, then max(1, nnz) beats.
    delta_full: int = PE.MAC_LATENCY + 2 + PE.D_Y
    delta_scan: int = 5

    def dmatmul_timing(self, i, cfg, accept, last_beat):
        """``(beats, last_beat, written)`` of a DMATMUL accepted in cycle ``accept``: beat
        cycles (Σ max(1, nnz)·passes), its last beat, the cycle its last result is written.
        The per-token pair counts come from the interpreter (``i["_delta_nnz"]``); without
        them every token is taken as dense (nnz = K)."""
        P, L = cfg.pes, cfg.lanes
        M, K, T = i["rows"], i["k"], i["tiles"]
        g, nw = _ceil(T, P), _ceil(K, L)
        nnz = i.get("_delta_nnz") or [K] * M
        per_pe = 4 if i["dst"] == Dst.CMEM else 1
        N = i["count"] or T * L
        free = [accept] * DELTA_BLOCKS   # when each collector block's credit is back
        w_free = 0                   # the writer is free from this cycle on
        written = accept
        c = accept + 1               # the sequencer's current cycle
        beats = 0
        blk = 0
        for j in range(g):
            if j:
                c = max(c, written + 1)          # results of the pass written (FWAIT)
            c += 1 + 8 * P                      # FWAIT, parameter fetch
            # the writer stops after the last PE with columns in this pass
            write = min(P, _ceil(N - j * P * L, L)) * per_pe
            for t in range(M):
                n = max(1, nnz[t])
                beats += n
                emit = c + nw + self.delta_scan
                last_beat = max(emit + n - 1, last_beat + L, free[blk])
                # the writer takes a block the cycle after it is full or after the previous
                # block's last write, and writes from the next
                w_start = max(last_beat + self.delta_full + L, w_free + 1)
                w_free = w_start + write
                written = w_free
                free[blk] = w_free + 1
                blk = (blk + 1) % DELTA_BLOCKS
                c = last_beat + 1
        return beats, last_beat, written + 1

    def row_cycles(self, i, cfg):
        """Cycles of a row operation from start to its last write."""
        op = Op(i["op"])
        rows = _ceil(i["rows"], cfg.pes)
        k = i["k"]
        done = dict(self.row_done)
        if op == Op.RADD:
            return rows * k + self.row_pipe
        if op == Op.RECIP:
            # one element per row, rows one job apart (hw.rowunit.RowDatapath.RECIP_DONE), the
            # last RS write
            return rows * (done["RECIP"] + 1) + 2
        if is_res(i):
            return res_row_span(rows, k) + self.row_pipe
        if op == Op.LAYERNORM:
            d = done["LAYERNORM"]
            return rows * max(2 * k, d + 1) + self.row_pipe + max(0, d + 1 - 2 * k)
        # MAXC: the maximum pass is one element (column k)
        n_a = 1 if i["flags"] & Flag.MAXC else k
        if i["flags"] & Flag.NORM:
            d = done["NORM"]
            return rows * max(2 * k + n_a, d + 1) + d + self.row_pipe + 1
        d = done["SOFTMAX"]
        return rows * max(k + n_a, d + 1) + d + 1

    def run(self, program, cfg, prog_len=None, events=None, timeline=None):
        """Counters for a program executed from start to HALT (no errors). ``events``: a list
        to append ``(pc, what, cycle)`` to (DMA transfers ending, MATMULs accepted/done);
        ``timeline``: a list to append ``(start, end)`` to, one per instruction."""
        log = events.append if events is not None else (lambda e: None)
        P, L = cfg.pes, cfg.lanes
        lat = self.mem_latency
        n = len(program) if prog_len is None else prog_len
        words = n * cfg.words_per_instr
        dma_end = 1 + self.dma_setup + (self.load_tail + words + lat if words else 0)
        load_ends = []               # when each load issued so far lands
        row_end = 0                  # the row unit is idle from this cycle on
        span = timeline.append if timeline is not None else (lambda e: None)
        starts = []                  # when each queued transfer left the queue
        stall_dma = dma_end
        t = dma_end + self.issue     # the current instruction is dispatched from cycle t on
        array_free = 0               # the sequencer can accept a MATMUL
        busy_end = 0                 # the array is idle from this cycle on
        cw_end = 0                   # nothing in the array writes CMEM from this cycle on
        last_beat = -L - 4           # of the previous tile (the drain spacing)
        prev_local = False
        prev_maxc = False            # the previous MATMUL wrote row maxima (MAXC)
        done = []                    # per MATMUL: the cycle its results are readable in CMEM
        mac = array_cycles = instret = 0
        for i in program.instrs:
            op = i["op"]
            instret += 1
            if op in LOAD_OPS or op == Op.STORE_C:
                if len(starts) >= self.queue_depth and starts[-self.queue_depth] > t:
                    stall_dma += starts[-self.queue_depth] - t
                    t = starts[-self.queue_depth]           # queue full
                start = max(t + 1, dma_end)
                starts.append(start)
                if op == Op.STORE_C:
                    w = i["rows"] * i["tiles"] * C_TILE_WORDS
                    ready = max(done[-1] if done else 0, row_end)   # the MATMULs before it
                    dma_end = max(start + self.store_setup, ready) + w + self.store_tail
                    log((instret - 1, "STORE_C end", dma_end))
                else:
                    if op == Op.LOAD_A:
                        w = i["rows"] * _ceil(i["k"], L) if i["k"] else 0
                    elif op == Op.LOAD_B:
                        w = i["count"]
                    elif op == Op.LOAD_P:
                        w = i["count"] * PBUF_TILE_WORDS
                    elif op == Op.LOAD_C:
                        w = i["rows"] * i["tiles"] * C_TILE_WORDS
                    else:
                        w = _ceil(i["count"], L // 2)
                    first = start + self.dma_setup
                    if op == Op.LOAD_C and w:
                        # its words wait while the array writes CMEM (MATMUL dst CMEM,
                        # DMATMUL, row operation) — those issued before it; the reads go
                        # out mem_latency earlier
                        first = max(first, cw_end - lat)
                    dma_end = first + (self.load_tail + w + lat if w else 0)
                    load_ends.append(dma_end)
                    log((instret - 1, f"{Op(op).name} end", dma_end))
                span((t, dma_end))
                t += self.issue
            elif op == Op.MATMUL:
                lag = lag_of(i)
                need = load_ends[-lag - 1] if len(load_ends) > lag else 0
                ok = max(t, need, busy_end if prev_local else 0, row_end)
                stall_dma += max(0, need - t)
                accept = max(ok + 1, array_free)
                tile = max(i["k"], L)
                ntiles = _ceil(i["rows"], P) * i["tiles"]
                # The first tile's last beat: K beats, and last beats at least L apart (the
                # drain; L + 4 before an ACCUM's first tile).
                # MAXC: L + 4 after each row pass (the row maximum's CMEM write).
                gap = L + 4 if i["flags"] & Flag.ACCUM or prev_maxc else L
                first_last = max(accept + i["k"], last_beat + gap)
                last_beat = first_last + (ntiles - 1) * tile
                prev_maxc = bool(i["flags"] & Flag.MAXC)
                if prev_maxc:
                    last_beat += (_ceil(i["rows"], P) - 1) * max(0, L + 4 - tile)
                mac += ntiles * i["k"]
                array_free = last_beat + 1
                done.append(last_beat + L + self.done_extra + prev_maxc)
                log((instret - 1, "MATMUL accept", accept))
                log((instret - 1, "MATMUL done", done[-1]))
                end = last_beat + L + self.busy_extra
                if i["dst"] == Dst.BBUF_ROWS:
                    end += P
                elif i["dst"] in (Dst.BBUF_T, Dst.AMEM_T):
                    # the last block: one word per column and L-row group, then its release
                    n_last = (i["count"] or i["tiles"] * L) - (i["tiles"] - 1) * L
                    off = (_ceil(i["rows"], P) - 1) * P % L
                    end += n_last * ((off + P - 1) // L + 1) + 1
                array_cycles += max(0, end - max(accept + 1, busy_end))
                busy_end = max(busy_end, end)
                if i["dst"] == Dst.CMEM:
                    cw_end = max(cw_end, end)
                # the controller's prev_local: a MATMUL behind one that writes AMEM/BBUF or
                # REQs into CMEM (in D_Y) waits for the array to be idle
                prev_local = i["dst"] != Dst.CMEM or bool(i["flags"] & Flag.REQ)
                span((accept, end))
                t = accept + self.issue
            elif op == Op.DMATMUL:
                # Runs alone: waits for the array to be idle; everything after it waits for
                # its results.
                lag = lag_of(i)
                need = load_ends[-lag - 1] if len(load_ends) > lag else 0
                ok = max(t, need, busy_end, row_end)
                stall_dma += max(0, need - t)
                accept = max(ok + 1, array_free)
                beats, last_beat, end = self.dmatmul_timing(i, cfg, accept, last_beat)
                prev_maxc = False
                mac += beats
                array_free = last_beat + 1
                done.append(end)
                log((instret - 1, "DMATMUL accept", accept))
                log((instret - 1, "DMATMUL done", end))
                array_cycles += max(0, end - max(accept + 1, busy_end))
                busy_end = max(busy_end, end)
                cw_end = max(cw_end, end)
                prev_local = True
                span((accept, end))
                t = accept + self.issue
            elif op in ROW_OPS:
                lag = lag_of(i)
                need = load_ends[-lag - 1] if len(load_ends) > lag else 0
                stall_dma += max(0, need - t)
                start = max(t, need, busy_end, row_end) + 1
                row_end = start + self.row_cycles(i, cfg)
                cw_end = max(cw_end, row_end)
                log((instret - 1, f"{Op(op).name} done", row_end))
                span((start, row_end))
                t = start + self.issue
            elif op in (Op.SYNC, Op.HALT):
                stall_dma += max(0, dma_end - t)
                go = max(t, dma_end, busy_end, row_end)
                span((go, go))
                if op == Op.HALT:
                    t = go + 1
                    break
                t = go + self.issue
            else:
                span((t, t))
                t += self.issue
        return {"CYCLES": t, "MAC_CYCLES": mac, "STALL_DMA": stall_dma, "STALL_WB": 0,
                "INSTRET": instret, "ARRAY_CYCLES": array_cycles}


# --------------------------------------------------------------------------------------------
# Reference interpreter

class _Machine:
    def __init__(self, ext, cfg):
        self.cfg = cfg
        P, L = cfg.pes, cfg.lanes
        self.ext = np.array(ext, dtype=np.uint8).reshape(-1, L)
        self.amem = np.zeros((P, cfg.amem_depth), dtype=np.int64)
        self.cmem = np.zeros((P, cfg.cmem_depth), dtype=np.int64)
        self.bbuf = np.zeros((cfg.bbuf_depth, L), dtype=np.int64)
        self.p_bias = np.zeros((cfg.pbuf_depth, L), dtype=np.int64)
        self.p_m = np.zeros((cfg.pbuf_depth, L), dtype=np.int64)
        self.p_sh = np.zeros((cfg.pbuf_depth, L), dtype=np.int64)
        self.rs_m = np.zeros((P, RS_ENTRIES), dtype=np.int64)     # row scales (SOFTMAX → RSCALE)
        self.rs_sh = np.zeros((P, RS_ENTRIES), dtype=np.int64)
        self.table = np.zeros(TABLE_ENTRIES, dtype=np.int64)     # activation tables (LOAD_T)

    def handlers(self):
        return {Op.LOAD_A: self.load_a, Op.LOAD_B: self.load_b, Op.LOAD_P: self.load_p,
                Op.STORE_C: self.store_c, Op.MATMUL: self.matmul, Op.DMATMUL: self.dmatmul,
                Op.LOAD_C: self.load_c,
                Op.LOAD_T: self.load_t, Op.SOFTMAX: self.softmax, Op.LAYERNORM: self.layernorm,
                Op.RADD: self.radd, Op.RECIP: self.recip}

    def ext_read(self, addr, count, pc):
        if addr + count > len(self.ext):
            raise SimulationError(f"PC {pc}: ext read of words {addr}…{addr + count - 1} past the "
                                  f"end of the {len(self.ext)}-word memory")
        return self.ext[addr:addr + count]

    def ext_write(self, addr, words, pc):
        if addr + len(words) > len(self.ext):
            raise SimulationError(f"PC {pc}: ext write of words {addr}…{addr + len(words) - 1} past "
                                  f"the end of the {len(self.ext)}-word memory")
        self.ext[addr:addr + len(words)] = words

    # -- instructions (fields already range-checked by static_check)
    def load_a(self, i, pc):
        P, L = self.cfg.pes, self.cfg.lanes
        rows, k = i["rows"], i["k"]
        if not rows or not k:
            return
        w = _ceil(k, L)
        data = self.ext_read(i["ext_addr"], rows * w, pc).view(np.int8).reshape(rows, w * L)[:, :k]
        for n in range(rows):
            base = i["a_base"] + (n // P) * i["a_stride"]
            self.amem[n % P, base:base + k] = data[n]

    def load_b(self, i, pc):
        if i["count"]:
            self.bbuf[i["b_base"]:i["b_base"] + i["count"]] = \
                self.ext_read(i["ext_addr"], i["count"], pc).view(np.int8)

    def load_p(self, i, pc):
        cnt, L = i["count"], self.cfg.lanes
        if not cnt:
            return
        raw = np.ascontiguousarray(self.ext_read(i["ext_addr"], cnt * PBUF_TILE_WORDS, pc)) \
            .reshape(cnt, PBUF_TILE_WORDS * L)
        sl = slice(i["p_base"], i["p_base"] + cnt)
        self.p_bias[sl] = np.ascontiguousarray(raw[:, :4 * L]).view("<i4")
        self.p_m[sl] = np.ascontiguousarray(raw[:, 4 * L:6 * L]).view("<i2")
        self.p_sh[sl] = raw[:, 6 * L:]

    def store_c(self, i, pc):
        P, L = self.cfg.pes, self.cfg.lanes
        rows, tiles = i["rows"], i["tiles"]
        if not rows or not tiles:
            return
        out = np.zeros((rows, tiles * L), dtype="<i4")
        for n in range(rows):
            base = i["out_base"] + (n // P) * i["out_stride"]
            out[n] = wrap32(self.cmem[n % P, base:base + tiles * L])
        self.ext_write(i["ext_addr"], out.view(np.uint8).reshape(-1, L), pc)

    def _local(self, rows, p):
        """Local rows of PE ``p`` that hold a row ``n < rows``."""
        P = self.cfg.pes
        local = np.arange(_ceil(rows, P))
        return local[local * P + p < rows]

    def load_c(self, i, pc):
        P, L = self.cfg.pes, self.cfg.lanes
        rows, tiles = i["rows"], i["tiles"]
        if not rows or not tiles:
            return
        raw = np.ascontiguousarray(self.ext_read(i["ext_addr"], rows * tiles * C_TILE_WORDS, pc))
        vals = raw.reshape(-1).view("<i4").reshape(rows, tiles * L).astype(np.int64)
        for n in range(rows):
            base = i["out_base"] + (n // P) * i["out_stride"]
            self.cmem[n % P, base:base + tiles * L] = vals[n]

    def load_t(self, i, pc):
        cnt, L = i["count"], self.cfg.lanes
        if not cnt:
            return
        per = L // 2
        raw = np.ascontiguousarray(self.ext_read(i["ext_addr"], _ceil(cnt, per), pc))
        vals = raw.reshape(-1).view("<i2")[:cnt]
        self.table[i["a_base"]:i["a_base"] + cnt] = _wrap(vals, AMEM_BITS)

    def matmul(self, i, pc):
        P, L = self.cfg.pes, self.cfg.lanes
        M, K, T = i["rows"], i["k"], i["tiles"]
        dst, flags, sat = Dst(i["dst"]), int(i["flags"]), Sat(i["sat"])
        b = self.bbuf[i["b_base"]:i["b_base"] + T * K].reshape(T, K, L).transpose(1, 0, 2) \
            .reshape(K, T * L)
        N = i["count"] or T * L
        cols = np.arange(N)
        b = b[:, :N]
        if flags & (Flag.BIAS | Flag.REQ) or dst != Dst.CMEM:     # PBUF is read (and checked)
            pt = slice(i["p_base"], i["p_base"] + T)
            bias, mm, ss = (x[pt].reshape(T * L)[:N] for x in (self.p_bias, self.p_m, self.p_sh))
        lo, hi = SAT_RANGE[sat]
        results = []
        for p in range(P):
            local = self._local(M, p)
            if not local.size:
                continue
            a = self.amem[p][i["a_base"] + local[:, None] * i["a_stride"] + np.arange(K)[None, :]]
            o_idx = i["out_base"] + local[:, None] * i["out_stride"] + cols[None, :]
            if flags & Flag.ACCUM:
                c0 = self.cmem[p][o_idx]          # dst AMEM too: CMEM at the same address
            elif flags & Flag.BIAS:
                c0 = np.broadcast_to(bias, (len(local), N))
            else:
                c0 = None
            s = golden_matmul(a, b, c0)
            if flags & Flag.RSCALE:
                s = wrap32(rshift_round(s * self.rs_m[p, local][:, None],
                                        self.rs_sh[p, local][:, None]))
            results.append((p, local, s))
        # write back after every read (a MATMUL's sources are read before any result lands)
        for p, local, s in results:
            o_idx = i["out_base"] + local[:, None] * i["out_stride"] + cols[None, :]
            if dst == Dst.CMEM and not flags & Flag.REQ:
                self.cmem[p][o_idx] = s
                if flags & Flag.MAXC:
                    self.cmem[p][i["out_base"] + local * i["out_stride"] + N] = s.max(axis=-1)
                continue
            y = golden_requant(s, mm, ss, lo, hi)
            if flags & Flag.RELU:
                y = np.maximum(y, 0)
            if flags & Flag.ACT:
                y = self.table[256 * (i["imm"] & 1) + y + 128]
            n = local * P + p
            if dst == Dst.CMEM:
                self.cmem[p][o_idx] = y
            elif dst == Dst.AMEM:
                self.amem[p][o_idx] = _wrap(y, AMEM_BITS)
            elif dst == Dst.BBUF_ROWS:
                words = i["out_base"] + (cols // L)[None, :] * i["out_stride"] + n[:, None]
                self.bbuf[words, (cols % L)[None, :]] = _wrap(y, BBUF_BITS)
            elif dst == Dst.BBUF_T:
                words = i["out_base"] + (n // L)[:, None] * i["out_stride"] + cols[None, :]
                self.bbuf[words, (n % L)[:, None]] = _wrap(y, BBUF_BITS)
            else:  # AMEM_T: element (n, c) → PE c mod P, out_base + (c div P)·out_stride + n
                for c in range(N):
                    self.amem[c % P][i["out_base"] + (c // P) * i["out_stride"] + n] = \
                        _wrap(y[:, c], AMEM_BITS)

    def dmatmul(self, i, pc):
        """DMATMUL (docs/delta.md): Y = X̂·W with X̂ the Δ-encoded token rows (θ = imm[15:8]),
        W column tile t = j·P + p in PE p's AMEM at ``b_base + (j·K + k)·L``. Records the
        per-token pair counts in ``i["_delta_nnz"]`` for :class:`CostModel`."""
        P, L = self.cfg.pes, self.cfg.lanes
        M, K, T = i["rows"], i["k"], i["tiles"]
        dst, flags, sat = Dst(i["dst"]), int(i["flags"]), Sat(i["sat"])
        N = i["count"] or T * L
        theta = (i["imm"] >> 8) & 0xFF
        n = np.arange(M)
        x = self.amem[n[:, None] % P, i["a_base"] + (n[:, None] // P) * i["a_stride"]
                      + np.arange(K)[None, :]]
        xhat, nnz = delta_rows(x, theta)
        i["_delta_nnz"] = [int(v) for v in nnz]
        cols = np.arange(N)
        t, l = cols // L, cols % L
        j, p = t // P, t % P
        w = self.amem[p[None, :], i["b_base"] + (j[None, :] * K + np.arange(K)[:, None]) * L
                      + l[None, :]]
        w = _wrap(w, 8)
        pt = slice(i["p_base"], i["p_base"] + T)
        bias, mm, ss = (v[pt].reshape(T * L)[:N] for v in (self.p_bias, self.p_m, self.p_sh))
        s = golden_matmul(xhat, w, np.broadcast_to(bias, (M, N)) if flags & Flag.BIAS else None)
        lo, hi = SAT_RANGE[sat]
        y = golden_requant(s, mm, ss, lo, hi)
        if flags & Flag.RELU:
            y = np.maximum(y, 0)
        if flags & Flag.ACT:
            y = self.table[256 * (i["imm"] & 1) + y + 128]
        o_idx = i["out_base"] + (n[:, None] // P) * i["out_stride"] + cols[None, :]
        pe = np.broadcast_to(n[:, None] % P, o_idx.shape)
        if dst == Dst.CMEM:
            self.cmem[pe, o_idx] = y
        else:
            self.amem[pe, o_idx] = _wrap(y, AMEM_BITS)

    def _row_io(self, i):
        """Per PE: (p, local rows, source index matrix, destination index matrix)."""
        k = i["k"]
        j = np.arange(k)[None, :]
        for p in range(self.cfg.pes):
            local = self._local(i["rows"], p)
            if local.size:
                yield (p, local, i["a_base"] + local[:, None] * i["a_stride"] + j,
                       i["out_base"] + local[:, None] * i["out_stride"] + j)

    def _row_write(self, i, p, o_idx, y):
        if i["dst"] == Dst.AMEM:
            self.amem[p][o_idx] = _wrap(y, AMEM_BITS)
        else:
            self.cmem[p][o_idx] = wrap32(y)

    def _row_params(self, i):
        L, k = self.cfg.lanes, i["k"]
        t = _ceil(k, L)
        sl = slice(i["p_base"], i["p_base"] + t)
        return tuple(x[sl].reshape(t * L)[:k] for x in (self.p_bias, self.p_m, self.p_sh))

    def softmax(self, i, pc):
        c_e, sh_e = i["imm"] & 0xFFFF, (i["imm"] >> 16) & 0x3F
        outs = []
        for p, local, s_idx, o_idx in self._row_io(i):
            s = wrap32(self.cmem[p][s_idx])
            if i["flags"] & Flag.MAXC:
                # the hardware takes M from column k: the golden functions take the row's
                # maximum, so the program must have put exactly that there
                mx = wrap32(self.cmem[p][s_idx[:, 0] + i["k"]])
                if (mx != s.max(axis=-1)).any():
                    raise SimulationError(f"SOFTMAX MAXC at PC {pc}: column k does not hold "
                                          f"the row maximum")
            if i["flags"] & Flag.NORM:
                y = golden_softmax(s, c_e, sh_e)
            else:
                y = golden_exp_weights(s, c_e, sh_e)
                r = golden_divide(np.full(len(local), 1 << 32), y.sum(axis=-1))
                self.rs_m[p, local], self.rs_sh[p, local] = mantissa15(r, 24)
            outs.append((p, o_idx, y))
        for p, o_idx, y in outs:
            self._row_write(i, p, o_idx, y)

    def layernorm(self, i, pc):
        k = i["k"]
        r_d, E = i["imm"] & ((1 << 25) - 1), i["count"] + (i["tiles"] << 32)
        B, G, sh = self._row_params(i)
        lo, hi = SAT_RANGE[Sat(i["sat"])]
        if is_res(i):
            # RES: RADD (int16) into the source rows first, then LAYERNORM of them.
            t = _ceil(k, self.cfg.lanes)
            self._radd(dict(i, p_base=i["p_base"] + t, dst=Dst.CMEM, out_base=i["a_base"],
                            out_stride=i["a_stride"], sat=Sat.INT16))
        outs = []
        for p, local, s_idx, o_idx in self._row_io(i):
            h = _wrap(self.cmem[p][s_idx], 16)                      # the low 16 bits, int16
            total = h.sum(axis=-1)
            sq = (h * h).sum(axis=-1)
            mu = rshift_round(total * r_d, 24)
            v = sq - 2 * mu * total + k * mu * mu + E               # = Σ(h − μ)² + E
            R, pexp = golden_rsqrt(v)
            c = h - mu[:, None]
            n = clip(rshift_round(c * R[:, None], 7 + pexp[:, None]), *INT16)
            y = clip(rshift_round(n * G[None, :] + B[None, :], sh[None, :]), lo, hi)
            outs.append((p, o_idx, y))
        for p, o_idx, y in outs:
            self._row_write(i, p, o_idx, y)

    def recip(self, i, pc):
        # Linear attention's normalizer (sim.golden.linear_attention): RS[r] from 2³²/den.
        for p, local, s_idx, _ in self._row_io(i):
            den = wrap32(self.cmem[p][s_idx[:, 0]])
            r = golden_divide(np.full(len(local), 1 << 32), np.clip(den, DEN_MIN, (1 << 31) - 1))
            m, sh = mantissa15(r, 16)
            pos = den > 0
            self.rs_m[p, local], self.rs_sh[p, local] = np.where(pos, m, 0), np.where(pos, sh, 0)

    def radd(self, i, pc):
        self._radd(i)

    def _radd(self, i):
        k, stride = i["k"], x_stride(i)
        _, m, sh = self._row_params(i)
        lo, hi = SAT_RANGE[Sat(i["sat"])]
        outs = []
        for p, local, s_idx, o_idx in self._row_io(i):
            x = self.amem[p][i["b_base"] + local[:, None] * stride + np.arange(k)[None, :]]
            y = golden_add(wrap32(self.cmem[p][s_idx]), x, m, sh, lo, hi)
            outs.append((p, o_idx, y))
        for p, o_idx, y in outs:
            self._row_write(i, p, o_idx, y)


def _wrap(x, bits):
    x = np.asarray(x, dtype=np.int64)
    half = 1 << (bits - 1)
    return ((x + half) & ((1 << bits) - 1)) - half


def interpret(image, prog_base, prog_len, config, *, cost=None, load_order="program"):
    """Execute a program against an ext-memory image, as the hardware does, sequentially.

    Returns ``(ext, counters)``: the final ext memory (uint8 ``(words, L)``, a copy) and the
    counters CYCLES, MAC_CYCLES, STALL_DMA, STALL_WB, INSTRET, ARRAY_CYCLES (from
    :class:`CostModel`), STATUS and PC. Raises :class:`AcceleratorError` with the code and PC
    where the hardware would set STATUS.error, :class:`SimulationError` for an ext access
    outside the image.

    ``load_order`` (a test of a program's ordering, not of the hardware): ``"program"`` executes
    every instruction in program order; ``"late"`` defers each LOAD until the first instruction
    that must wait for it (its load lag, SYNC, HALT) — a program whose results change is missing
    a dependency in its load lags.
    """
    cfg = config
    mach = _Machine(image, cfg)
    if prog_len == 0 or prog_len > cfg.imem_depth:
        raise AcceleratorError(ErrorCode.PROGRAM_RANGE, 0,
                               f"PROG_LEN {prog_len} (IMEM holds {cfg.imem_depth})", "golden")
    raw = mach.ext_read(prog_base, prog_len * cfg.words_per_instr, -1)
    program = Program.from_words(raw)
    pc = 0
    executed = Program()
    handlers = mach.handlers()
    pending = []                       # deferred loads (load_order="late"), oldest first

    def drain(keep):
        while len(pending) > keep:
            j, jpc = pending.pop(0)
            handlers[Op(j["op"])](j, jpc)

    while True:
        if pc >= prog_len:
            raise AcceleratorError(ErrorCode.PROGRAM_RANGE, pc, "the PC ran past the program "
                                   "(no HALT)", "golden")
        i = program.instrs[pc]
        err = static_check(i, cfg)
        if err is not None:
            raise AcceleratorError(err[0], pc, err[1], "golden")
        executed.instrs.append(i)
        op = Op(i["op"])
        if op in (Op.HALT, Op.SYNC):
            drain(0)
        elif op == Op.STORE_C or (op in (Op.MATMUL, Op.DMATMUL) or op in ROW_OPS):
            drain(lag_of(i) if op != Op.STORE_C else 0)
        if op == Op.HALT:
            break
        if load_order == "late" and op in LOAD_OPS:
            pending.append((i, pc))
        elif op in handlers:
            handlers[op](i, pc)
        pc += 1
    counters = (cost or CostModel(mem_latency=cfg.mem_latency)).run(executed, cfg, prog_len)
    counters["STATUS"] = status_word(halted=True)
    counters["PC"] = pc
    return mach.ext, counters



def accesses(i, cfg):
    """``[(memory, lo, hi, write)]``: the address spans an instruction reads and writes.
    Memories: ``"A"``/``"C"`` (per-PE AMEM/CMEM element addresses, the span of every PE),
    ``"B"`` (BBUF words), ``"P"`` (PBUF tiles), ``"T"`` (table entries), ``"RS"`` (row scales)."""
    P, L = cfg.pes, cfg.lanes
    op = Op(i["op"])
    R = _ceil(i["rows"], P)
    out = []

    def span(mem, base, stride, n_rows, width, write):
        if n_rows and width:
            out.append((mem, base, base + (n_rows - 1) * stride + width, write))

    if op == Op.LOAD_A:
        span("A", i["a_base"], i["a_stride"], R, i["k"], True)
    elif op == Op.LOAD_B:
        span("B", i["b_base"], 0, 1, i["count"], True)
    elif op == Op.LOAD_P:
        span("P", i["p_base"], 0, 1, i["count"], True)
    elif op == Op.LOAD_C:
        span("C", i["out_base"], i["out_stride"], R, i["tiles"] * L, True)
    elif op == Op.LOAD_T:
        span("T", i["a_base"], 0, 1, i["count"], True)
    elif op == Op.STORE_C:
        span("C", i["out_base"], i["out_stride"], R, i["tiles"] * L, False)
    elif op == Op.MATMUL:
        M, K, T, dst, flags = i["rows"], i["k"], i["tiles"], i["dst"], i["flags"]
        N = i["count"] or T * L
        span("A", i["a_base"], i["a_stride"], R, K, False)
        span("B", i["b_base"], 0, 1, T * K, False)
        if flags & (Flag.BIAS | Flag.REQ) or dst != Dst.CMEM:
            span("P", i["p_base"], 0, 1, T, False)
        if flags & Flag.ACCUM:
            span("C", i["out_base"], i["out_stride"], R, N, False)
        if flags & Flag.RSCALE:
            span("RS", 0, 0, 1, R, False)
        if flags & Flag.ACT:
            span("T", 256 * (i["imm"] & 1), 0, 1, 256, False)
        if dst == Dst.CMEM:
            span("C", i["out_base"], i["out_stride"], R, N + (1 if flags & Flag.MAXC else 0),
                 True)
        elif dst == Dst.AMEM:
            span("A", i["out_base"], i["out_stride"], R, N, True)
        elif dst == Dst.BBUF_ROWS:
            span("B", i["out_base"], i["out_stride"], T, M, True)
        elif dst == Dst.AMEM_T:
            span("A", i["out_base"], i["out_stride"], _ceil(N, P), M, True)
        else:
            span("B", i["out_base"], i["out_stride"], _ceil(M, L), N, True)
    elif op == Op.RECIP:
        span("C", i["a_base"], i["a_stride"], R, 1, False)
        span("RS", 0, 0, 1, R, True)
    elif op == Op.DMATMUL:
        M, K, T, dst, flags = i["rows"], i["k"], i["tiles"], i["dst"], i["flags"]
        N = i["count"] or T * L
        span("A", i["a_base"], i["a_stride"], R, K, False)
        span("A", i["b_base"], 0, 1, _ceil(T, P) * K * L, False)
        span("P", i["p_base"], 0, 1, T, False)
        if flags & Flag.ACT:
            span("T", 256 * (i["imm"] & 1), 0, 1, 256, False)
        span("C" if dst == Dst.CMEM else "A", i["out_base"], i["out_stride"], R, N, True)
    elif op in ROW_OPS:
        k = i["k"]
        mx = 1 if op == Op.SOFTMAX and i["flags"] & Flag.MAXC else 0
        span("C", i["a_base"], i["a_stride"], R, k + mx, False)
        if op == Op.RADD or is_res(i):
            span("A", i["b_base"], x_stride(i), R, k, False)
        if is_res(i):
            span("C", i["a_base"], i["a_stride"], R, k, True)      # h in place
        if op != Op.SOFTMAX:
            span("P", i["p_base"], 0, 1, _ceil(k, L) * (2 if is_res(i) else 1), False)
        elif not i["flags"] & Flag.NORM:
            span("RS", 0, 0, 1, R, True)
        span("C" if i["dst"] == Dst.CMEM else "A", i["out_base"], i["out_stride"], R, k, True)
    return out


__all__ += ["chain_reference", "static_check", "SimulationError"]
