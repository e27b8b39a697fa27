"""The accelerator's instruction set: opcodes, the 256-bit instruction layout, error codes and
control/status registers (docs/isa.md). One definition serves the hardware decoder
(:data:`INSTR_LAYOUT`) and the software assembler (:func:`encode` / :func:`decode`).
"""
import enum

from amaranth.hdl import unsigned
from amaranth.lib import data

__all__ = ["Op", "Dst", "Sat", "Flag", "ErrorCode", "Csr", "FIELDS", "INSTR_BITS", "INSTR_LAYOUT",
           "encode", "decode", "ID_MAGIC", "CONFIG_NO_DELTA", "mem_cmd_layout", "mem_rsp_layout", "instr_words"]

INSTR_BITS = 256
ID_MAGIC = 0x4B575431  # "KWT1"
#: CONFIG bit 31: built without the delta datapath (``--no-delta``): DMATMUL is ILLEGAL_OPCODE.
CONFIG_NO_DELTA = 1 << 31


class Op(enum.IntEnum):
    NOP = 0x00
    HALT = 0x01
    SYNC = 0x02      # wait until every DMA transfer and the array are idle
    LOAD_B = 0x10    # ext → shared operand buffer (BBUF), `count` words
    LOAD_A = 0x11    # ext → PE-local A memories, row n to PE n mod P
    LOAD_P = 0x12    # ext → column-parameter buffer (bias, m, sh), `count` tiles
    STORE_C = 0x13   # PE-local int32 results → ext
    LOAD_C = 0x14    # ext → PE-local CMEM rows (the inverse of STORE_C)
    LOAD_T = 0x15    # ext → activation tables (512 int9 entries, the same in every PE)
    MATMUL = 0x20
    SOFTMAX = 0x30   # row operation: attention weights + row scales, or (NORM) probabilities
    LAYERNORM = 0x31  # row operation: LayerNorm of int16 rows
    RADD = 0x32      # row operation: residual add with per-column rescale
    RECIP = 0x33     # row operation: row scale RS[r] from a reciprocal (linear attention)
    DMATMUL = 0x40   # delta matmul: token rows Δ-encoded with θ = imm[15:8], column-partitioned


class Dst(enum.IntEnum):
    """Where MATMUL results go."""
    CMEM = 0         # int32, PE-local result memory
    AMEM = 1         # requantized, PE-local A memory ("new A = C")
    BBUF_ROWS = 2    # requantized int8, row-wise into the shared buffer (V)
    BBUF_T = 3       # requantized int8, transposed into the shared buffer (Kᵀ)
    AMEM_T = 4       # requantized, transposed into the PEs' A memories (φ(K)ᵀ)


class Sat(enum.IntEnum):
    INT8 = 0
    INT9 = 1
    INT16 = 2
    UINT8 = 3


class Flag(enum.IntFlag):
    BIAS = 1         # accumulators start at the column-parameter bias
    ACCUM = 2        # accumulators start at the CMEM value at the output address (dst CMEM/AMEM)
    RELU = 4         # max(0, ·) after requantization
    RSCALE = 8       # MATMUL: scale row r by the row-scale entry RS[r] before the requantization
    NORM = 8         # SOFTMAX: normalized probabilities (an alias of bit 3)
    REQ = 16         # MATMUL dst CMEM: store the requantized, saturated value
    ACT = 32         # MATMUL dst AMEM/AMEM_T, sat INT8: look the result up in activation table imm[0]
    RES = 64         # LAYERNORM: fused residual add (RADD into the source rows first, in place)
    MAXC = 128       # MATMUL dst CMEM: row maxima into CMEM column N; SOFTMAX: read them there


class ErrorCode(enum.IntEnum):
    NONE = 0
    ILLEGAL_OPCODE = 1
    AMEM_RANGE = 2
    CMEM_RANGE = 3
    BBUF_RANGE = 4
    PBUF_RANGE = 5
    PROGRAM_RANGE = 6
    BAD_FIELD = 7


class Csr(enum.IntEnum):
    """Word addresses of the 32-bit control/status registers."""
    ID = 0x00
    CONFIG = 0x01        # P | L << 8 | log2(AMEM depth) << 16 | log2(BBUF depth) << 24,
    #                      bit 31 CONFIG_NO_DELTA
    CTRL = 0x02          # write: bit 0 start, bit 1 clear (halted/error/counters)
    STATUS = 0x03        # bit 0 busy, bit 1 halted, bit 2 error, bits 15:8 error code
    PC = 0x04
    PROG_BASE = 0x05     # ext word address of the program
    PROG_LEN = 0x06      # number of instructions
    CYCLES = 0x08        # from start to halt
    MAC_CYCLES = 0x09    # cycles in which the MAC array computed
    STALL_DMA = 0x0A     # cycles waiting for DMA (SYNC, operand not loaded)
    STALL_WB = 0x0B      # cycles stalled on result write-back
    INSTRET = 0x0C       # instructions retired
    ARRAY_CYCLES = 0x0D  # cycles with a MATMUL in the array (first beat to last result written)


# (name, width): contiguous, LSB first; the 256 bits are eight little-endian 32-bit words.
FIELDS = (
    ("op", 8), ("flags", 8), ("dst", 4), ("sat", 4), ("tiles", 8),
    ("a_base", 16), ("a_stride", 16),
    ("b_base", 16), ("k", 16),
    ("out_base", 16), ("out_stride", 16),
    ("rows", 16), ("p_base", 16),
    ("ext_addr", 32),
    ("count", 32),
    ("imm", 32),
)
assert sum(w for _, w in FIELDS) == INSTR_BITS

INSTR_LAYOUT = data.StructLayout({name: unsigned(width) for name, width in FIELDS})


def encode(op, **fields):
    """Pack an instruction into a 256-bit integer; unknown fields or out-of-range values raise."""
    fields["op"] = int(op)
    word, pos = 0, 0
    for name, width in FIELDS:
        value = int(fields.pop(name, 0))
        if not 0 <= value < 1 << width:
            raise ValueError(f"instruction field {name}={value} does not fit {width} bits")
        word |= value << pos
        pos += width
    if fields:
        raise ValueError(f"unknown instruction fields: {', '.join(sorted(fields))}")
    return word


def decode(word):
    """Unpack a 256-bit instruction into a dict of fields."""
    out, pos = {}, 0
    for name, width in FIELDS:
        out[name] = (word >> pos) & ((1 << width) - 1)
        pos += width
    return out


def mem_cmd_layout(lanes):
    """Payload of the ext-memory request stream ``mem.cmd`` (LSB first): ``addr`` 32 (word
    address), ``we`` 1, ``data`` 8·lanes, ``mask`` lanes (byte enables of a write)."""
    return data.StructLayout({"addr": unsigned(32), "we": unsigned(1),
                              "data": unsigned(8 * lanes), "mask": unsigned(lanes)})


def mem_rsp_layout(lanes):
    """Payload of the ext-memory response stream ``mem.rsp``: ``data`` 8·lanes."""
    return data.StructLayout({"data": unsigned(8 * lanes)})


def instr_words(lanes):
    """Ext-memory words (of ``lanes`` bytes) per 256-bit instruction; word i holds bits
    ``[8·lanes·i, 8·lanes·(i+1))``."""
    return INSTR_BITS // (8 * lanes)
