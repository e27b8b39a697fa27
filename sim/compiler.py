"""Compiler: lowers the int8 KWT (:class:`sim.qmodel.QKwt`) and single transformer operations to
one accelerator program plus its ext-memory image (a :class:`CompiledJob`, readable by every
backend through :func:`sim.backends.run_job`). The lowering, the memory allocation and the
prefetch scheme are described in docs/compiler.md.

Entry points:

* :func:`compile_kwt` — the whole model on one clip (int9 MFCC, as ``QKwt.quantize_input``
  gives) → a job whose :meth:`CompiledJob.read` returns the int16 logits, bit-exact with
  :func:`sim.golden.kwt`;
* :func:`softmax_job`, :func:`layernorm_job`, :func:`attention_job`, :func:`mhsa_job`,
  :func:`ffn_job`, :func:`encoder_job` — one operation on integer inputs, bit-exact with
  the golden function named in each docstring (``sim.ops`` quantizes float inputs for them).

Every program goes through one :class:`Builder`: the lowering appends *compute operations*
(MATMUL and row operations) that name the weights they read as *items*; the builder then lays
the items out in ext memory in the order of first use, packs them into load *chunks*, places the
chunks in ring buffers (BBUF weight area, PBUF, the two activation tables), and emits the
program: each chunk's LOAD as early as its ring space is provably free, each compute
instruction with the smallest safe load lag. A :class:`Hazards` tracker, driven by the fields of
the emitted instructions, decides both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.isa import Dst, Op, Sat

from .errors import InputError
from .golden.fixed import INT8, INT9, INT16, INT32
from .program import (LOAD_OPS, MAX_ROW_K, RES_ROWS, ROW_OPS, RS_ENTRIES, TABLE_ENTRIES,
                      AccelConfig, Assembler,
                      CostModel, ImageBuilder, Job, OutputBlock, _ceil, a_words, accesses,
                      b_words, c_words, lag_of, param_words, t_words, w_delta_words)

__all__ = ["CompiledJob", "Builder", "Hazards", "compile_kwt", "kwt_layouts", "split_input",
           "softmax_job", "layernorm_job", "attention_job", "mhsa_job", "ffn_job",
           "encoder_job", "section_cycles", "make_config", "DMA_QUEUE", "run_compiled",
           "kwt_input_words", "KwtPrograms", "check_program", "input_parts"]

DMA_QUEUE = 4            # transfers the DMA queue holds besides the running one
MAX_LAG = 255


class RingError(InputError):
    """The weights live at some point do not fit a ring buffer (BBUF weight area or PBUF)."""


def make_config(config=None, pes=None, lanes=None, **depths):
    """An :class:`AccelConfig` from a config or from ``pes``/``lanes`` (+ depths)."""
    if config is not None:
        if (pes is not None and pes != config.pes) or (lanes is not None and lanes != config.lanes):
            raise InputError("pes/lanes disagree with config")
        return config.replace(**depths) if depths else config
    if pes is None or lanes is None:
        raise InputError("give pes and lanes, or a config")
    return AccelConfig(pes=pes, lanes=lanes, **depths)


def _pad(n, L):
    return _ceil(n, L) * L


def _int_array(x, name, lo, hi, shape=None, ndim=None):
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise InputError(f"{name} must be an integer array, got dtype {a.dtype}")
    if shape is not None and a.shape != tuple(shape):
        raise InputError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if ndim is not None and a.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if 0 in a.shape:
        raise InputError(f"{name} is empty (shape {a.shape})")
    a = a.astype(np.int64)
    if a.size and (a.min() < lo or a.max() > hi):
        raise InputError(f"{name} values must lie in [{lo}, {hi}], found [{a.min()}, {a.max()}]")
    return a


def _acc_bound(name, k, a_max, b, init=None):
    """numerics.md §3: refuse a matmul whose accumulator could wrap."""
    bound = k * a_max * int(np.abs(np.asarray(b)).max(initial=0))
    if init is not None:
        bound += int(np.abs(np.asarray(init)).max(initial=0))
    if bound >= 1 << 31:
        raise InputError(f"{name}: |start| + K·max|a|·max|b| = {bound} reaches 2³¹; the int32 "
                         f"accumulator could wrap")


# --------------------------------------------------------------------------------------------
# Jobs

@dataclass
class CompiledJob(Job):
    """A :class:`sim.program.Job` plus what the compiler knows about it.

    ``sections``: ``[(name, first_pc, end_pc)]`` — consecutive instruction ranges (``embed``,
    ``layer0`` … , ``head`` for a KWT; one section for an operation). ``section_macs``: useful
    multiply-accumulates per section. ``info``: the allocation (memory maps, FFN chunks, input
    parts, chunks and loads, SYNCs the builder had to insert)."""
    sections: list = field(default_factory=list)
    section_macs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def with_input(self, region, words):
        """A copy whose ext region ``region`` holds ``words`` instead (same size): rerun a
        compiled program on another input without compiling again."""
        r = self.regions[region]
        words = np.asarray(words, dtype=np.uint8).reshape(-1, self.config.lanes)
        if len(words) != r.words:
            raise InputError(f"region {region} holds {r.words} words, got {len(words)}")
        image = self.image.copy()
        image[r.addr:r.addr + r.words] = words
        return CompiledJob(**{**self.__dict__, "image": image})


def kwt_input_words(x9, parts, lanes):
    """The LOAD_A words of region ``input`` of a compiled KWT for int9 input ``x9``: the class
    token's zero row, then the frames split into ``parts`` int8 parts."""
    x9 = np.asarray(x9, dtype=np.int64)
    a = np.concatenate([np.zeros((1, x9.shape[1] * parts), np.int64), split_input(x9, parts)])
    return a_words(a, lanes)


def run_compiled(job, backend="interp", **kw):
    """Run a :class:`CompiledJob`: ``backend`` ``"interp"`` or ``"golden"`` (the ISA
    interpreter :func:`sim.program.interpret`, cycle counters from its cost model; ``kw`` go to
    it), a :class:`sim.backends.Backend` or its name (``amaranth``, ``verilator``). Returns
    ``(result, counters, wall_s)``."""
    import time
    if backend in ("interp", "golden"):
        from .program import interpret
        t0 = time.perf_counter()
        ext, counters = interpret(job.image, job.prog_base, job.prog_len, job.config, **kw)
        return job.read(ext), counters, time.perf_counter() - t0
    from .backends import get_backend
    if isinstance(backend, str):
        backend = get_backend(backend)
    res = backend.run(job.image, job.program, job.config, prog_base=job.prog_base)
    return job.read(res.ext), res.counters, res.wall_s


def section_cycles(job, cost=None):
    """Per-section cycles from the cost model's timeline (:class:`sim.program.CostModel`):
    a section ends when its last compute instruction has written its results (the last
    section: at HALT); it costs the time since the previous section ended. The values add up
    to the model's CYCLES. Returns ``(dict name → cycles, counters)``."""
    cost = cost or CostModel(mem_latency=job.config.mem_latency)
    times = []
    counters = cost.run(job.program, job.config, timeline=times)
    out, prev = {}, 0
    for idx, (name, lo, hi) in enumerate(job.sections):
        last = idx == len(job.sections) - 1
        ends = [times[pc][1] for pc in range(lo, min(hi, len(times)))
                if job.program.instrs[pc]["op"] == Op.MATMUL
                or job.program.instrs[pc]["op"] in ROW_OPS]
        end = counters["CYCLES"] if last else max(ends, default=prev)
        out[name] = max(0, end - prev)
        prev = max(prev, end)
    return out, counters


# --------------------------------------------------------------------------------------------
# Hazards: what the hardware guarantees to have finished when an instruction dispatches

class Hazards:
    """Tracks the emitted program to answer two questions (docs/compiler.md, *Ordering*):

    * :meth:`lag` — the largest load lag with which an instruction still waits for every
      earlier LOAD whose destination overlaps what it reads or writes;
    * :meth:`free` — may a LOAD into a span be issued now, i.e. has every earlier instruction
      that reads or writes the span provably finished?

    "Provably finished" follows docs/isa.md, docs/architecture.md (*Ordering*) and
    docs/isa_transformer.md: at the dispatch of SYNC/HALT everything has; at a row operation
    every MATMUL and row operation has; at a MATMUL every row operation and — when the previous
    MATMUL wrote AMEM/BBUF — every MATMUL has, otherwise the earlier MATMULs have at least
    issued all their beats (finished reading AMEM and BBUF); at a MATMUL or row operation with
    lag ℓ every load but the last ℓ has landed. Loads complete in order among themselves.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.entries = []          # dict(op, acc, done, dst)

    @staticmethod
    def _overlap(a, b):
        return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]

    def _pending_loads(self):
        return [e for e in self.entries if e["op"] in LOAD_OPS and not e["done"]]

    def lag(self, instr):
        acc = accesses(instr, self.cfg)
        loads = self._pending_loads()
        last = None
        for pos, e in enumerate(loads):
            if any(self._overlap(w, a) for w in e["acc"] for a in acc):
                last = pos
        return MAX_LAG if last is None else min(MAX_LAG, len(loads) - 1 - last)

    def free(self, span):
        """``span`` = (memory, lo, hi): no unfinished non-load instruction touches it."""
        for e in self.entries:
            if e["done"] or e["op"] in LOAD_OPS:
                continue
            if any(self._overlap(a, span) for a in e["acc"]):
                return False
        return True

    def emit(self, instr):
        op = Op(instr["op"])
        if op in (Op.SYNC, Op.HALT):
            for e in self.entries:
                e["done"] = True
        elif op in (Op.MATMUL, Op.DMATMUL) or op in ROW_OPS:
            loads = self._pending_loads()
            for e in loads[:max(0, len(loads) - lag_of(instr))]:
                e["done"] = True
            mms = [e for e in self.entries if e["op"] in (Op.MATMUL, Op.DMATMUL)
                   and not e["done"]]
            for e in self.entries:
                if e["op"] in ROW_OPS:
                    e["done"] = True
            if op != Op.MATMUL:          # row operation or DMATMUL: the array is idle
                for e in mms:
                    e["done"] = True
            else:
                prev = next((e for e in reversed(self.entries)
                             if e["op"] in (Op.MATMUL, Op.DMATMUL)), None)
                if prev is not None and (prev["dst"] != Dst.CMEM or prev["op"] == Op.DMATMUL):
                    for e in mms:
                        e["done"] = True
                else:    # beats issued: AMEM and BBUF reads are over
                    for e in mms:
                        e["acc"] = [a for a in e["acc"] if a[3] or a[0] not in ("A", "B")]
        self.entries.append(dict(op=op, acc=accesses(instr, self.cfg), done=False,
                                 dst=instr["dst"]))


def check_program(program, cfg):
    """Replay a program through :class:`Hazards`: ``[(pc, problem)]`` for every LOAD issued
    into a span an unfinished instruction still touches and every instruction whose load lag
    lets it run before a load it depends on (an empty list for a well-ordered program)."""
    hz = Hazards(cfg)
    problems = []
    for pc, i in enumerate(program.instrs):
        op = Op(i["op"])
        if op in LOAD_OPS:
            for a in accesses(i, cfg):
                if not hz.free(a[:3]):
                    problems.append((pc, f"{op.name} into {a[0]} {a[1]}…{a[2]} while an "
                                         f"unfinished instruction uses it"))
        elif op in (Op.MATMUL, Op.DMATMUL) or op in ROW_OPS:
            need = hz.lag(i)
            if lag_of(i) > need:
                problems.append((pc, f"{op.name} lag {lag_of(i)} > {need} (a load it needs "
                                     f"may still be running)"))
        hz.emit(i)
    return problems


# --------------------------------------------------------------------------------------------
# Builder

@dataclass
class _Item:
    kind: str               # "B" (BBUF words), "P" (PBUF tiles), "T" (table entries)
    name: str
    words: np.ndarray       # ext words (uint8, (n, L))
    size: int               # in ring units: BBUF words, PBUF tiles, table entries
    users: list = field(default_factory=list)
    chunk: object = None
    offset: int = 0


@dataclass
class _Chunk:
    kind: str
    items: list
    size: int
    first: int = 0
    last: int = 0
    base: int = 0
    ext: int = 0
    loaded: bool = False


class Builder:
    """Collects compute operations and the data they need, then allocates and emits.

    Fixed regions (AMEM/CMEM maps, the BBUF slots that MATMULs write) are the lowering's
    business; the builder owns the *rings*: BBUF words ``[bbuf_ring, bbuf_depth)``, all of
    PBUF, and the two 256-entry activation tables."""

    def __init__(self, cfg, *, bbuf_ring=0, wring=None):
        self.cfg = cfg
        self.wring = wring          # (lo, hi) AMEM elements for DMATMUL weight slices
        self.L = cfg.lanes
        self.ops = []
        self.items = []
        self.inputs = []
        self.outputs = []
        self.section = "main"
        self.bbuf_ring = bbuf_ring
        if bbuf_ring >= cfg.bbuf_depth:
            raise InputError(f"BBUF ({cfg.bbuf_depth} words) has no room for weights after the "
                             f"{bbuf_ring} words of K/V slots")

    # ---- data
    def b_item(self, name, b):
        """A B operand (K × N, int8) in the tile-major layout."""
        b = _int_array(b, name, *INT8, ndim=2)
        w = b_words(b, self.L)
        return self._item("B", name, w, len(w))

    def p_item(self, name, bias, m, sh, n):
        """Column parameters of ``n`` columns (bias int32, m int16, sh uint8)."""
        bias, m, sh = (np.broadcast_to(np.asarray(x, dtype=np.int64), (n,)) for x in (bias, m, sh))
        w = param_words(bias, m, sh, self.L)
        return self._item("P", name, w, _ceil(n, self.L))

    def w_item(self, name, w):
        """DMATMUL weights (K × N, int8) as per-PE AMEM slices (ring ``wring``)."""
        w = _int_array(w, name, *INT8, ndim=2)
        K, N = w.shape
        g = _ceil(_ceil(N, self.L), self.cfg.pes)
        return self._item("W", name, w_delta_words(w, self.cfg.pes, self.L), g * K * self.L)

    def t_item(self, name, table):
        t = _int_array(table, name, *INT9, shape=(256,))
        return self._item("T", name, t_words(t, self.L), 256)

    def _item(self, kind, name, words, size):
        it = _Item(kind, name, words, size)
        self.items.append(it)
        return it

    def input_a(self, name, a, a_base, a_stride, *, late=None):
        """LOAD_A of ``a`` (row n to PE n mod P) from ext region ``name``; ``late`` =
        ``(r, op)``: rows r… (r a multiple of P) are loaded right after operation ``op``."""
        a = _int_array(a, name, *INT8, ndim=2)
        self._input("A", name, a_words(a, self.L), a.shape[0], late,
                    dict(k=a.shape[1], a_base=a_base, a_stride=a_stride), "a_base", a_stride)

    def input_c(self, name, c, out_base, out_stride, *, late=None):
        """LOAD_C of ``c`` into CMEM; ``late`` as for :meth:`input_a`."""
        c = _int_array(c, name, *INT32, ndim=2)
        self._input("C", name, c_words(c, self.L), c.shape[0], late,
                    dict(tiles=_ceil(c.shape[1], self.L), out_base=out_base,
                         out_stride=out_stride), "out_base", out_stride)

    def _input(self, kind, name, words, rows, late, kw, base, stride):
        r, op = late if late is not None else (rows, None)
        P = self.cfg.pes
        if not (r == rows or 0 < r < rows and r % P == 0):
            raise ValueError(f"{name}: late rows start at {r}, not a multiple of P in 1…{rows}")
        self.inputs.append((kind, name, words, dict(kw, rows=r), 0, None))
        if r < rows:
            per_row = len(words) // rows
            self.inputs.append((kind, name, None, dict(kw, rows=rows - r,
                                                       **{base: kw[base] + r // P * stride}),
                                r * per_row, op))

    def output(self, rows, n, out_base, out_stride):
        """STORE_C of ``rows`` × ``n`` CMEM values at the end; :meth:`CompiledJob.read` returns
        them (one output per job)."""
        self.outputs.append(dict(rows=rows, n=n, out_base=out_base, out_stride=out_stride))

    # ---- compute
    def op(self, kind, *, b=None, p=None, t=None, macs=0, **fields):
        """``kind``: an :class:`Assembler` method (``matmul``, ``softmax``, ``layernorm``,
        ``radd``); ``b``/``p``/``t``: the items whose chunk base becomes ``b_base``/``p_base``/
        the table select."""
        idx = len(self.ops)
        for it in (b, p, t):
            if it is not None:
                it.users.append(idx)
        self.ops.append(dict(kind=kind, b=b, p=p, t=t, macs=macs, fields=fields,
                             section=self.section))

    def set_section(self, name):
        self.section = name

    def col_groups(self, k, n):
        """Column ranges ``[(c0, c1)]`` (whole tiles) of a K × n weight matrix, each small
        enough to be loaded into half the BBUF weight ring (and half of PBUF): one MATMUL
        each."""
        L = self.L
        half_b = (self.cfg.bbuf_depth - self.bbuf_ring) // 2
        tiles = max(1, min(half_b // k, self.cfg.pbuf_depth // 2, 255))
        return [(c0, min(n, c0 + tiles * L)) for c0 in range(0, n, tiles * L)]

    # ---- allocation
    def _rings(self):
        cfg = self.cfg
        rings = {"B": (self.bbuf_ring, cfg.bbuf_depth), "P": (0, cfg.pbuf_depth),
                 "T": (0, TABLE_ENTRIES)}
        if self.wring is not None:
            rings["W"] = self.wring
        return rings

    def _chunks(self):
        """Pack each ring's items (in order of first use) into load chunks and place them:
        chunks of at most half the ring, alternating between the two halves (double
        buffering); if an item is larger than half the ring, one chunk per item, placed
        next-fit where it overlaps no chunk still live."""
        rings = self._rings()
        used = [it for it in self.items if it.users]
        chunks = []
        for kind in ("B", "P", "T", "W"):
            if kind not in rings:
                if any(it.kind == kind for it in used):
                    raise InputError("DMATMUL weights need an AMEM weight ring (wring)")
                continue
            lo, hi = rings[kind]
            ring = hi - lo
            half = ring // 2
            items = sorted((it for it in used if it.kind == kind), key=lambda it: it.users[0])
            for it in items:
                if it.size > ring:
                    what = {"B": f"BBUF words (the weight ring is {ring} of the "
                                 f"{self.cfg.bbuf_depth}-word BBUF)",
                            "P": f"PBUF tiles (PBUF holds {ring})", "T": "table entries"}[kind]
                    raise RingError(f"{it.name} needs {it.size} {what}; build the accelerator "
                                    f"with a larger {'BBUF' if kind == 'B' else 'PBUF'}")
            double = all(it.size <= half for it in items)
            mine, cur = [], None
            for it in items:
                if (cur is None or cur.size + it.size > half or not double
                        or kind == "T"):
                    cur = _Chunk(kind, [], 0)
                    mine.append(cur)
                it.chunk, it.offset = cur, cur.size
                cur.items.append(it)
                cur.size += it.size
            for c in mine:
                c.first = min(u for it in c.items for u in it.users)
                c.last = max(u for it in c.items for u in it.users)
            # double buffering needs chunk k − 2 dead two operations before chunk k is used
            double = double and all(mine[k - 2].last + 2 <= mine[k].first
                                    for k in range(2, len(mine)))
            if double:
                for k, c in enumerate(mine):
                    c.base = lo + (k % 2) * half
            else:
                placed, cursor = [], 0
                for c in mine:
                    pos = self._place(c, placed, cursor, ring)
                    if pos is None:
                        raise RingError(
                            f"the {ring}-entry {kind} ring cannot hold the data live at operation "
                            f"{c.first} ({', '.join(it.name for it in c.items)}); build the "
                            f"accelerator with a larger {'BBUF' if kind == 'B' else 'PBUF'}")
                    c.base = lo + pos
                    cursor = pos + c.size
                    placed.append((pos, c))
            chunks += mine
        chunks.sort(key=lambda c: (c.first, "BPTW".index(c.kind)))
        return chunks

    @staticmethod
    def _place(c, placed, cursor, ring):
        """Lowest ring position from ``cursor`` on (then from 0) where ``c`` overlaps no chunk
        still live at its first use; None if there is none."""
        def ok(pos):
            return all(o.last + 2 <= c.first or p + o.size <= pos or pos + c.size <= p
                       for p, o in placed)
        starts = [cursor, 0] + sorted({p + o.size for p, o in placed})
        for pos in starts:
            if pos + c.size <= ring and ok(pos):
                return pos
        return None

    # ---- emission
    def build(self, *, shape, notes=()):
        cfg, L = self.cfg, self.L
        chunks = self._chunks()
        img = ImageBuilder(L)
        # ext layout: inputs, then every chunk in load order (items of a chunk contiguous)
        for kind, name, words, *_ in self.inputs:
            if words is not None:
                img.place(name, words)
        for n, c in enumerate(chunks):
            c.ext = img.place(f"{c.kind}{n}:" + ",".join(it.name for it in c.items),
                              np.concatenate([it.words for it in c.items])).addr
        out_reg = None
        if self.outputs:
            o = self.outputs[0]
            out_reg = img.reserve("output", o["rows"] * _ceil(o["n"], L) * 4)

        asm = Assembler(cfg)
        hz = Hazards(cfg)
        sections = []
        syncs = 0

        def mark(name):
            if not sections or sections[-1][0] != name:
                if sections:
                    sections[-1][2] = len(asm.program)
                sections.append([name, len(asm.program), None])

        def emit(method, **kw):
            getattr(asm, method)(**kw)
            hz.emit(asm.program.instrs[-1])

        def load_fields(c, lo=0, hi=None):
            """The load of ``c``'s items ``lo…hi−1`` (B and P chunks load in parts; W and T
            chunks whole)."""
            part = c.items[lo:hi]
            off = sum(it.size for it in c.items[:lo])
            ext = c.ext + sum(len(it.words) for it in c.items[:lo])
            count = sum(it.size for it in part)
            if c.kind == "B":
                return "load_b", dict(ext_addr=ext, count=count, b_base=c.base + off)
            if c.kind == "P":
                return "load_p", dict(ext_addr=ext, count=count, p_base=c.base + off)
            if c.kind == "W":
                return "load_a", dict(ext_addr=c.ext, rows=c.size // L * cfg.pes, k=L,
                                      a_base=c.base, a_stride=L)
            return "load_t", dict(ext_addr=c.ext, count=c.size, a_base=c.base)

        def span(c):
            return ("A" if c.kind == "W" else c.kind), c.base, c.base + c.size

        def can_load(c, next_op):
            for o in chunks:
                if o is c or not o.loaded:
                    continue
                overlaps = (o.kind == c.kind and o.base < c.base + c.size
                            and c.base < o.base + o.size)
                if overlaps and o.last >= next_op:
                    return False
            return hz.free(span(c))

        def load_inputs(at):
            for kind, name, _, kw, off, op in self.inputs:
                if op != at:
                    continue
                method = "load_a" if kind == "A" else "load_c"
                probe = Assembler(cfg, check=False)
                getattr(probe, method)(ext_addr=0, **kw)
                if not all(hz.free(a[:3]) for a in accesses(probe.program.instrs[-1], cfg)):
                    raise AssertionError(f"internal: the late rows of {name} overwrite "
                                         f"data still in use")
                emit(method, ext_addr=img.regions[name].addr + off, **kw)

        late_ops = [op for *_, op in self.inputs if op is not None]
        if late_ops and max(late_ops) >= len(self.ops):
            raise ValueError(f"late input rows after operation {max(late_ops)}, but there are "
                             f"{len(self.ops)} operations")
        mark(self.ops[0]["section"] if self.ops else self.section)
        load_inputs(None)
        nxt = 0
        for idx, op in enumerate(self.ops):
            mark(op["section"])
            needed_chunks = [it.chunk for it in (op["b"], op["p"], op["t"]) if it is not None]
            rest = []                # (chunk, first item) loaded right after this operation
            while any(not c.loaded for c in needed_chunks):
                c = chunks[nxt]
                if not can_load(c, idx):
                    if any(o.loaded and o.last >= idx and span(o)[0] == span(c)[0]
                           and o.base < c.base + c.size and c.base < o.base + o.size
                           for o in chunks if o is not c):
                        raise AssertionError("internal: ring placement overlaps a live chunk")
                    emit("sync")
                    syncs += 1
                # The operation waits for this load: a B or P chunk loads only the items up to
                # the last one it uses now, and the rest after it (at the start of a program
                # nothing else hides that wait).
                first = len(c.items)
                if c.kind in "BP":
                    first = next((k for k, it in enumerate(c.items) if it.users[0] > idx),
                                 len(c.items))
                if first < len(c.items):
                    rest.append((c, first))
                m, kw = load_fields(c, 0, first)
                emit(m, **kw)
                c.loaded = True
                nxt += 1
            fields = dict(op["fields"])
            if op["b"] is not None:
                fields["b_base"] = op["b"].chunk.base + op["b"].offset
            if op["p"] is not None:
                fields["p_base"] = op["p"].chunk.base + op["p"].offset
            if op["t"] is not None:
                fields["table"] = (op["t"].chunk.base + op["t"].offset) // 256
            # the lag needs the final fields: encode once with lag 0 to ask the tracker
            probe = Assembler(cfg, check=False)
            getattr(probe, op["kind"])(**fields, lag=0)
            fields["lag"] = hz.lag(probe.program.instrs[-1])
            emit(op["kind"], **fields)
            load_inputs(idx)
            for c, first in rest:
                m, kw = load_fields(c, first)
                emit(m, **kw)
            # prefetch: the next chunks, in order, while their ring space is free
            ahead = 0
            while nxt < len(chunks) and ahead < DMA_QUEUE and can_load(chunks[nxt], idx + 1):
                m, kw = load_fields(chunks[nxt])
                emit(m, **kw)
                chunks[nxt].loaded = True
                nxt += 1
                ahead += 1
        blocks = []
        if self.outputs:
            o = self.outputs[0]
            tiles = _ceil(o["n"], L)
            asm.store_c(out_reg.addr, o["rows"], tiles, o["out_base"], o["out_stride"])
            hz.emit(asm.program.instrs[-1])
            blocks.append(OutputBlock(out_reg.addr, 0, o["rows"], 0, tiles))
        emit("halt")
        sections[-1][2] = len(asm.program)
        if len(asm.program) > cfg.imem_depth:
            need = 1 << (len(asm.program) - 1).bit_length()
            raise InputError(f"the program needs {len(asm.program)} instructions but IMEM holds "
                             f"{cfg.imem_depth}; build the accelerator with --imem-depth {need}")
        prog_reg = img.put_program("program", asm.program)
        sec_macs = {}
        for op in self.ops:
            sec_macs[op["section"]] = sec_macs.get(op["section"], 0) + op["macs"]
        info = dict(chunks=[dict(kind=c.kind, base=c.base, size=c.size, first_op=c.first,
                                 last_op=c.last, items=[it.name for it in c.items])
                            for c in chunks],
                    syncs_inserted=syncs, loads=sum(1 for i in asm.program.instrs
                                                    if i["op"] in LOAD_OPS),
                    compute_ops=len(self.ops))
        return CompiledJob(config=cfg, image=img.build(), program=asm.program,
                           prog_base=prog_reg.addr, shape=shape, blocks=blocks,
                           regions=dict(img.regions), mac_ops=sum(sec_macs.values()),
                           notes=list(notes), sections=[tuple(s) for s in sections],
                           section_macs=sec_macs, info=info)


# --------------------------------------------------------------------------------------------
# Layout of a transformer layer (per-PE AMEM/CMEM element addresses, BBUF slots)

@dataclass
class Layout:
    """Per-PE memory map of a layer (docs/compiler.md, *Memory allocation*).

    AMEM (row stride ``Dp``, the width padded to L, unless noted): ``XA`` holds x, then x1
    (LN1), then x2 (LN2) — each is dead when the next is written (``XB`` = XA); ``QA`` q,
    overwritten head by head by the attention output; ``WA`` one head's softmax weights
    (stride N); ``GA`` the FFN hidden chunk (stride ``Fcp``) over QA and WA, dead during the
    FFN; ``IN`` the model input, also over QA and WA. CMEM: ``SC`` one head's scores (stride
    N), ``HC`` the Wo / W2 output and the residual, ``OUT`` an operation's output (over SC when
    it fits); the embedding's start values sit at XA's addresses. BBUF: ``KT`` one head's Kᵀ,
    ``VB`` one head's V, then the weight ring."""
    P: int
    L: int
    N: int
    D: int
    H: int
    F: int
    R: int
    Dp: int
    d: int
    fc: int
    Fcp: int
    XA: int
    QA: int
    WA: int
    GA: int
    XB: int
    IN: int
    IN_stride: int
    amem: int
    SC: int
    HC: int
    OUT: int
    cmem: int
    KT: int
    VB: int
    bbuf_fixed: int
    ffn_chunks: list
    # linear attention (0 when no layer uses it): AMEM ``KA`` one head's φkᵀ (rows = the
    # head's columns, stride ``Np``; φq of all heads sits at WA with stride Dp); BBUF ``T8``
    # one head's requantized φkᵀ·[v | 1] (d rows), ``VL`` one head's [v | 1] (N rows).
    KA: int = 0
    Np: int = 0
    T8: int = 0
    VL: int = 0
    # MAXC: the scores MATMUL writes each row's maximum into column N (score stride N + 1) and
    # the SOFTMAX skips its maximum pass; off when CMEM has no room for the extra column
    maxc: bool = True

    def describe(self):
        return {"AMEM": {"XA": self.XA, "QA": self.QA, "WA": self.WA, "GA": self.GA,
                         "IN": self.IN, "KA": self.KA, "end": self.amem},
                "CMEM": {"SC": self.SC, "HC": self.HC, "OUT": self.OUT, "end": self.cmem},
                "BBUF": {"KT": self.KT, "VB": self.VB, "T8": self.T8, "VL": self.VL,
                         "ring": self.bbuf_fixed},
                "ffn_chunks": self.ffn_chunks, "rows_per_pe": self.R}


def kwt_layouts(cfg, *, N, D, H, F, k_in=0, out_cols=0, out_rows=0, attention=True,
                ffn=True, linear=False):
    """The layer layouts for ``cfg`` that fit AMEM and CMEM, with 1, 2, … FFN column chunks
    (:func:`compile_with` takes the first whose weights also fit the rings); a clear
    :class:`InputError` when none fits. ``linear``: some layer uses linear attention (its
    regions are added; softmax layers keep theirs)."""
    P, L = cfg.pes, cfg.lanes
    if D % H:
        raise InputError(f"dim {D} is not a multiple of {H} heads")
    if D > MAX_ROW_K:
        raise InputError(f"dim {D}: a LayerNorm row holds at most {MAX_ROW_K}")
    R = _ceil(N, P)
    Dp, d = _pad(D, L), D // H
    KT = VB = fixed = 0
    Np = _pad(N, L)
    T8 = VL = 0
    if linear:
        if R > RS_ENTRIES:
            raise InputError(f"{R} rows per PE: the row scales hold {RS_ENTRIES}")
        T8, VL = 0, _ceil(d + 1, L) * d
        fixed = VL + _ceil(d + 1, L) * N
    if attention:
        if N > MAX_ROW_K:
            raise InputError(f"{N} tokens: a softmax row holds at most {MAX_ROW_K}")
        if R > RS_ENTRIES:
            raise InputError(f"{R} rows per PE: the row scales hold {RS_ENTRIES}")
        VB = _ceil(N, L) * d
        fixed = max(fixed, VB + _ceil(d, L) * N)
        if fixed >= cfg.bbuf_depth:
            raise InputError(f"BBUF ({cfg.bbuf_depth} words) cannot hold one head's Kᵀ and V "
                             f"({fixed} words) and weights")
    kin_p = _pad(k_in, L) if k_in else 0
    XA, QA, WA = 0, R * Dp, 2 * R * Dp
    out_size = _ceil(out_rows or N, P) * max(Dp, _pad(out_cols, L))
    for maxc in (True, False):
        # scores (with their row maxima, MAXC), then the residual
        SC, HC = 0, (R * (N + maxc) if attention else 0)
        OUT = SC if attention and out_size <= HC else HC + R * Dp     # over the dead scores
        cmem = max(HC + R * Dp, OUT + out_size, XA + R * Dp)       # XA: embedding start values
        if cmem <= cfg.cmem_depth:
            break
    if cmem > cfg.cmem_depth:
        raise InputError(f"CMEM needs {cmem} elements per PE (scores {R}×{N}, residual "
                         f"{R}×{Dp}, output), the accelerator has {cfg.cmem_depth}")
    found = False
    need = None
    for chunks in range(1, (_ceil(F, L) if ffn else 1) + 1):
        fc = F if chunks == 1 else _pad(_ceil(F, chunks), L)
        if chunks > 1 and _ceil(F, fc) != chunks:
            continue
        Fcp = _pad(fc, L) if ffn else 0
        # linear attention: φq over WA (stride Dp), then one head's φkᵀ
        KA = _pad(WA + max(R * N, R * Dp), L) if linear else 0
        amem = max(QA + (R * Dp + R * N if attention else 0),   # q / attention output, weights
                   QA + R * Fcp,                                # FFN hidden over both
                   QA + R * kin_p,                              # model input
                   KA + _ceil(d, P) * Np if linear else 0)
        if amem > cfg.amem_depth:
            need = need or amem
            continue
        found = True
        bounds = [(f0, min(F, f0 + fc)) for f0 in range(0, F, fc)] if ffn else []
        yield Layout(P=P, L=L, N=N, D=D, H=H, F=F, R=R, Dp=Dp, d=d, fc=fc, Fcp=Fcp, XA=XA,
                     QA=QA, WA=WA, GA=QA, XB=XA, IN=QA, IN_stride=kin_p, amem=amem, SC=SC,
                     HC=HC, OUT=OUT, cmem=cmem, KT=KT, VB=VB, bbuf_fixed=fixed,
                     ffn_chunks=bounds, KA=KA, Np=Np if linear else 0, T8=T8, VL=VL,
                     maxc=maxc)
    if not found:
        raise InputError(f"AMEM needs {need} elements per PE for {N} tokens, dim {D}"
                         + (f", MLP {F} (even split into column chunks)" if ffn else "")
                         + f"; the accelerator has {cfg.amem_depth} (P={P})")


def compile_with(layouts, make):
    """``make(layout)`` for the first layout whose weights fit the rings."""
    err = None
    for lay in layouts:
        try:
            return make(lay)
        except RingError as e:
            err = e
    raise err


# --------------------------------------------------------------------------------------------
# Lowering of the layer's parts

def _cols(a, lo, hi):
    return np.asarray(a)[lo:hi]


def weight_matmul(b, name, w, *, rows, a_base, a_stride, dst, out_base, out_stride, sat,
                  params=None, p_items=None, b_items=None, useful_k=None, **flags):
    """``rows`` × K A rows times the K × N weights ``w``, in column groups that fit half the
    weight ring (:meth:`Builder.col_groups`), each one MATMUL with its own B and PBUF items
    (``params`` = (bias, m, sh) per column; or ``p_items`` / ``b_items``, one per group, to
    share them). ``useful_k``: K for the count of useful multiply-accumulates (default K).
    Returns ``(B items, P items)``."""
    w = np.asarray(w)
    K, N = w.shape
    groups = b.col_groups(K, N)
    items, bitems = [], []
    for g, (c0, c1) in enumerate(groups):
        tag = f"{name}" if len(groups) == 1 else f"{name}.g{g}"
        if p_items is not None:
            pi = p_items[g]
        elif params is not None:
            pi = b.p_item(f"{tag}.p", *(_cols(np.broadcast_to(np.asarray(x), (N,)), c0, c1)
                                         for x in params), c1 - c0)
        else:
            pi = None
        items.append(pi)
        shift = (c0 // b.L) * out_stride if dst == Dst.BBUF_ROWS else c0
        bi = b_items[g] if b_items is not None else b.b_item(f"{tag}.w", w[:, c0:c1])
        bitems.append(bi)
        b.op("matmul", b=bi, p=pi, rows=rows, k=K,
             tiles=_ceil(c1 - c0, b.L), n=c1 - c0, a_base=a_base, a_stride=a_stride, dst=dst,
             out_base=out_base + shift, out_stride=out_stride, sat=sat,
             macs=rows * (useful_k or K) * (c1 - c0), **flags)
    return bitems, items


def lower_attention(b, lay, *, rows, wqkv, m_qkv, sh_qkv, c_e, sh_e, m_a, sh_a, x_base, name):
    """q (dst AMEM QA), then per head: K → Kᵀ slot, V → V slot, S = q·kᵀ → CMEM SC, SOFTMAX →
    AMEM WA (row scales), P·V with RSCALE → AMEM QA (head columns). K and V use every token;
    the others ``rows``."""
    D, H, d, N, Dp = lay.D, lay.H, lay.d, lay.N, lay.Dp
    wqkv = np.asarray(wqkv)
    wq, wk, wv = wqkv[:D], wqkv[D:2 * D], wqkv[2 * D:]
    for nm, w in (("Wq", wq), ("Wk", wk), ("Wv", wv)):
        _acc_bound(f"{name}.{nm}", D, 256, w)
    weight_matmul(b, f"{name}.wq", wq.T, params=(0, m_qkv[:D], sh_qkv[:D]), rows=rows,
                  a_base=x_base, a_stride=Dp, dst=Dst.AMEM, out_base=lay.QA, out_stride=Dp,
                  sat=Sat.INT9)
    for h in range(H):
        c0, c1 = h * d, (h + 1) * d
        weight_matmul(b, f"{name}.wk{h}", wk[c0:c1].T,
                      params=(0, m_qkv[D + c0:D + c1], sh_qkv[D + c0:D + c1]), rows=N,
                      a_base=x_base, a_stride=Dp, dst=Dst.BBUF_T, out_base=lay.KT, out_stride=d,
                      sat=Sat.INT8)
        weight_matmul(b, f"{name}.wv{h}", wv[c0:c1].T,
                      params=(0, m_qkv[2 * D + c0:2 * D + c1], sh_qkv[2 * D + c0:2 * D + c1]),
                      rows=N, a_base=x_base, a_stride=Dp, dst=Dst.BBUF_ROWS, out_base=lay.VB,
                      out_stride=N, sat=Sat.INT8)
        _attention_core(b, lay, rows=rows, q_base=lay.QA + c0, q_stride=Dp, c_e=c_e, sh_e=sh_e,
                        m_a=_cols(m_a, c0, c1), sh_a=_cols(sh_a, c0, c1), name=f"{name}.h{h}",
                        out=dict(dst=Dst.AMEM, out_base=lay.QA + c0, out_stride=Dp))


def lower_linear_attention(b, lay, *, rows, wqkv, m_qkv, sh_qkv, phi_q, phi_k, m_t, sh_t, m_l,
                           sh_l, x_base, name):
    """Linear attention (golden :func:`sim.golden.linear_mha`): φq = φ(int8 q) by the table
    (ACT) → AMEM WA; per head: φkᵀ (ACT, dst AMEM_T) → AMEM KA, [v | 1] (BIAS: the ones column
    is weight 0, bias 1) → BBUF VL, T8 = φkᵀ·[v | 1] → BBUF T8 (rows = the head's columns),
    the denominators φq·T8[:, d] → CMEM HC, RECIP → row scales, the numerators φq·T8[:, :d]
    with RSCALE and the output requantization → AMEM QA (head columns). K and V use every
    token; the others ``rows``."""
    D, H, d, N, Dp, L, P = lay.D, lay.H, lay.d, lay.N, lay.Dp, lay.L, lay.P
    wqkv = np.asarray(wqkv)
    wq, wk, wv = wqkv[:D], wqkv[D:2 * D], wqkv[2 * D:]
    for nm, w in (("Wq", wq), ("Wk", wk), ("Wv", wv)):
        _acc_bound(f"{name}.{nm}", D, 256, w)
    if d > 256:
        raise InputError(f"{name}: linear attention takes heads of at most 256 columns, not {d}")
    t_q, t_k = b.t_item(f"{name}.phi_q", phi_q), b.t_item(f"{name}.phi_k", phi_k)
    weight_matmul(b, f"{name}.wq", wq.T, params=(0, m_qkv[:D], sh_qkv[:D]), rows=rows,
                  a_base=x_base, a_stride=Dp, dst=Dst.AMEM, out_base=lay.WA, out_stride=Dp,
                  sat=Sat.INT8, act=True, t=t_q)
    if len(b.col_groups(D, d)) > 1:     # AMEM_T places columns from 0: one group per head
        raise InputError(f"{name}: one head's K projection ({D}×{d}) must fit half the "
                         f"BBUF weight ring")
    dt, lane = d // L, d % L           # the denominator column: tile dt, lane
    for h in range(H):
        c0, c1 = h * d, (h + 1) * d
        weight_matmul(b, f"{name}.wk{h}", wk[c0:c1].T,
                      params=(0, m_qkv[D + c0:D + c1], sh_qkv[D + c0:D + c1]), rows=N,
                      a_base=x_base, a_stride=Dp, dst=Dst.AMEM_T, out_base=lay.KA,
                      out_stride=lay.Np, sat=Sat.INT8, act=True, t=t_k)
        wv1 = np.concatenate([wv[c0:c1].T, np.zeros((D, 1), np.int64)], axis=1)
        mv = np.append(m_qkv[2 * D + c0:2 * D + c1], 1)
        shv = np.append(sh_qkv[2 * D + c0:2 * D + c1], 0)
        weight_matmul(b, f"{name}.wv{h}", wv1, params=(np.eye(1, d + 1, d)[0], mv, shv), rows=N,
                      a_base=x_base, a_stride=Dp, dst=Dst.BBUF_ROWS, out_base=lay.VL,
                      out_stride=N, sat=Sat.INT8, bias=True)
        st = slice(h * (d + 1), (h + 1) * (d + 1))
        b.op("matmul", p=b.p_item(f"{name}.h{h}.pt", 0, np.asarray(m_t)[st],
                                  np.asarray(sh_t)[st], d + 1),
             rows=d, k=N, tiles=_ceil(d + 1, L), n=d + 1, a_base=lay.KA, a_stride=lay.Np,
             b_base=lay.VL, dst=Dst.BBUF_ROWS, out_base=lay.T8, out_stride=d, sat=Sat.INT8,
             macs=d * N * (d + 1))
        b.op("matmul", rows=rows, k=d, tiles=1, n=lane + 1, a_base=lay.WA + c0, a_stride=Dp,
             b_base=lay.T8 + dt * d, dst=Dst.CMEM, out_base=lay.HC, out_stride=Dp, macs=rows * d)
        b.op("recip", rows=rows, a_base=lay.HC + lane, a_stride=Dp)
        b.op("matmul", p=b.p_item(f"{name}.h{h}.pl", 0, _cols(m_l, c0, c1), _cols(sh_l, c0, c1),
                                  d),
             rows=rows, k=d, tiles=_ceil(d, L), n=d, a_base=lay.WA + c0, a_stride=Dp,
             b_base=lay.T8, dst=Dst.AMEM, out_base=lay.QA + c0, out_stride=Dp, rscale=True,
             sat=Sat.INT9, macs=rows * d * d)


def _attention_core(b, lay, *, rows, q_base, q_stride, c_e, sh_e, m_a, sh_a, name, out,
                    k_item=None, v_item=None, dv=None):
    """S = q·kᵀ → CMEM SC (stride N + 1: MAXC puts each row's maximum in column N, if
    ``lay.maxc``), SOFTMAX (attention mode, MAXC: no maximum pass) → AMEM WA, P·V with RSCALE and the column
    requantization → ``out``. Kᵀ and V come from the BBUF slots or, for a standalone attention,
    from items."""
    N, d, L = lay.N, lay.d, lay.L
    dv = d if dv is None else dv
    kw_k = dict(b=k_item) if k_item is not None else dict(b_base=lay.KT)
    mx = lay.maxc
    b.op("matmul", rows=rows, k=d, tiles=_ceil(N, L), n=N, a_base=q_base, a_stride=q_stride,
         dst=Dst.CMEM, out_base=lay.SC, out_stride=N + mx, maxc=mx, macs=rows * d * N,
         **kw_k)
    b.op("softmax", rows=rows, k=N, a_base=lay.SC, a_stride=N + mx, dst=Dst.AMEM,
         out_base=lay.WA, out_stride=N, c_e=int(c_e), sh_e=int(sh_e), maxc=mx)
    kw_v = dict(b=v_item) if v_item is not None else dict(b_base=lay.VB)
    req = out["dst"] == Dst.CMEM
    b.op("matmul", p=b.p_item(f"{name}.pa", 0, m_a, sh_a, dv), rows=rows, k=N,
         tiles=_ceil(dv, L), n=dv, a_base=lay.WA, a_stride=N, rscale=True, req=req,
         sat=Sat.INT9, macs=rows * N * dv, **out, **kw_v)


def lower_out_proj(b, lay, *, rows, wo, bo, m_o, sh_o, name):
    """Wo with BIAS and REQ INT16 → CMEM HC."""
    D = lay.D
    _acc_bound(f"{name}.Wo", D, 256, wo, bo)
    weight_matmul(b, f"{name}.wo", np.asarray(wo).T, params=(bo, m_o, sh_o), rows=rows,
                  a_base=lay.QA, a_stride=lay.Dp, dst=Dst.CMEM, out_base=lay.HC,
                  out_stride=lay.Dp, sat=Sat.INT16, bias=True, req=True)


def lower_residual_norm(b, lay, *, rows, x_base, m_r, sh_r, ln, out, name):
    """CMEM HC += x·m_r ≫ sh_r (int16, in place), then the LayerNorm of HC → ``out`` (int9):
    one LAYERNORM with the fused residual add (RES) per RES_ROWS local rows, its PBUF item
    G, B, sh_o then m_r, sh_r; RADD then LAYERNORM when its 2·⌈D/L⌉ tiles take more than a
    quarter of PBUF (they would crowd the weights' parameters out of the ring)."""
    D, Dp, P, L = lay.D, lay.Dp, lay.P, lay.L
    T = _ceil(D, L)
    if 2 * T <= b.cfg.pbuf_depth // 4:
        G = _ln_gain(ln, D, name)

        def tile(a):
            a = np.broadcast_to(np.asarray(a, dtype=np.int64), (D,))
            return np.concatenate([a, np.zeros(T * L - D, dtype=np.int64)])

        pi = b.p_item(f"{name}.plnr", np.concatenate([tile(ln["B"]), tile(0)]),
                      np.concatenate([tile(G), tile(m_r)]),
                      np.concatenate([tile(ln["sh_o"]), tile(sh_r)]), 2 * T * L)
        step = RES_ROWS * P
        for r0 in range(0, rows, step):
            loc = r0 // P              # the piece's first local row
            b.op("layernorm", p=pi, rows=min(step, rows - r0), k=D, a_base=lay.HC + loc * Dp,
                 a_stride=Dp, res=True, b_base=x_base + loc * Dp, b_stride=Dp,
                 r_d=int(ln["r_d"]), E=int(ln["E"]), sat=Sat.INT9, dst=out["dst"],
                 out_base=out["out_base"] + loc * out["out_stride"],
                 out_stride=out["out_stride"])
        return
    b.op("radd", p=b.p_item(f"{name}.pr", 0, m_r, sh_r, D), rows=rows, k=D, a_base=lay.HC,
         a_stride=Dp, b_base=x_base, b_stride=Dp, dst=Dst.CMEM, out_base=lay.HC, out_stride=Dp,
         sat=Sat.INT16)
    _layernorm_op(b, D=D, Dp=Dp, rows=rows, src=lay.HC, ln=ln, out=out, name=name)


def _ln_gain(ln, D, name):
    G = np.broadcast_to(np.asarray(ln["G"], dtype=np.int64), (D,))
    if G.min() < -(1 << 15) or G.max() >= 1 << 15:
        raise InputError(f"{name}: LayerNorm G outside int16")
    return G


def _layernorm_op(b, *, D, Dp, rows, src, ln, out, name):
    G = _ln_gain(ln, D, name)
    b.op("layernorm", p=b.p_item(f"{name}.pln", ln["B"], G, ln["sh_o"], D), rows=rows, k=D,
         a_base=src, a_stride=Dp, r_d=int(ln["r_d"]), E=int(ln["E"]), sat=Sat.INT9, **out)


def lower_ffn(b, lay, *, rows, x_base, w1, b1, m_1, sh_1, gelu, w2, b2, m_2, sh_2, name):
    """Per FFN chunk: W1 (BIAS + ACT, GELU table) → AMEM GA, W2 (BIAS on the first chunk, then
    ACCUM; REQ INT16 on the last) → CMEM HC."""
    D, Dp, F = lay.D, lay.Dp, lay.F
    w1, w2 = np.asarray(w1), np.asarray(w2)
    _acc_bound(f"{name}.W1", D, 256, w1, b1)
    _acc_bound(f"{name}.W2", F, 256, w2, b2)
    table = b.t_item(f"{name}.gelu", gelu)
    n = len(lay.ffn_chunks)
    p2 = None
    for c, (f0, f1) in enumerate(lay.ffn_chunks):
        weight_matmul(b, f"{name}.w1c{c}", w1[f0:f1].T,
                      params=(_cols(b1, f0, f1), _cols(m_1, f0, f1), _cols(sh_1, f0, f1)),
                      rows=rows, a_base=x_base, a_stride=Dp, dst=Dst.AMEM, out_base=lay.GA,
                      out_stride=lay.Fcp, sat=Sat.INT8, bias=True, act=True, t=table)
        _, p2 = weight_matmul(b, f"{name}.w2c{c}", w2[:, f0:f1].T, params=(b2, m_2, sh_2),
                           p_items=p2, rows=rows, a_base=lay.GA, a_stride=lay.Fcp, dst=Dst.CMEM,
                           out_base=lay.HC, out_stride=Dp, sat=Sat.INT16, bias=c == 0,
                           accum=c > 0, req=c == n - 1)


def lower_layer(b, lay, layer, *, rows, heads, name, out):
    """One post-norm encoder layer (golden :func:`sim.golden.encoder_layer`) on x at XA;
    ``out``: where LN2 writes (``dict(dst=…, out_base=…, out_stride=…)``)."""
    if getattr(layer, "linear", False):
        lower_linear_attention(b, lay, rows=rows, wqkv=layer.wqkv, m_qkv=layer.m_qkv,
                               sh_qkv=layer.sh_qkv, phi_q=layer.phi_q, phi_k=layer.phi_k,
                               m_t=layer.m_t,
                               sh_t=layer.sh_t, m_l=layer.m_l, sh_l=layer.sh_l, x_base=lay.XA,
                               name=name)
    else:
        lower_attention(b, lay, rows=rows, wqkv=layer.wqkv, m_qkv=layer.m_qkv,
                        sh_qkv=layer.sh_qkv, c_e=layer.c_e, sh_e=layer.sh_e, m_a=layer.m_a,
                        sh_a=layer.sh_a, x_base=lay.XA, name=name)
    lower_out_proj(b, lay, rows=rows, wo=layer.wo, bo=layer.bo, m_o=layer.m_o, sh_o=layer.sh_o,
                   name=name)
    lower_residual_norm(b, lay, rows=rows, x_base=lay.XA, m_r=layer.m_r1, sh_r=layer.sh_r1,
                        ln=layer.ln1, out=dict(dst=Dst.AMEM, out_base=lay.XB, out_stride=lay.Dp),
                        name=f"{name}.ln1")
    lower_ffn(b, lay, rows=rows, x_base=lay.XB, w1=layer.w1, b1=layer.b1, m_1=layer.m_1,
              sh_1=layer.sh_1, gelu=layer.gelu, w2=layer.w2, b2=layer.b2, m_2=layer.m_2,
              sh_2=layer.sh_2, name=name)
    lower_residual_norm(b, lay, rows=rows, x_base=lay.XB, m_r=layer.m_r2, sh_r=layer.sh_r2,
                        ln=layer.ln2, out=out, name=f"{name}.ln2")


# --------------------------------------------------------------------------------------------
# Delta KWT (docs/delta.md): DMATMUL at the sites the hardware supports

#: Sites of :data:`sim.golden.delta_kwt.SITES` the lowering maps onto DMATMUL.
DELTA_HW_SITES = ("qkv", "wo", "ffn1", "ffn2")


def delta_thresholds(delta):
    """Per-site θ (:func:`sim.golden.delta_kwt.normalize_thresholds`), refusing the sites the
    hardware lowering does not support (embed, scores, pv)."""
    from .golden.delta_kwt import normalize_thresholds
    th = normalize_thresholds(delta)
    if delta is not None and not isinstance(delta, dict):
        th = {s: (t if s in DELTA_HW_SITES else None) for s, t in th.items()}
    bad = [s for s, t in th.items() if t is not None and s not in DELTA_HW_SITES]
    if bad:
        raise InputError(f"delta sites {', '.join(bad)} are not supported on the accelerator "
                         f"(DMATMUL sites: {', '.join(DELTA_HW_SITES)})")
    return th


def delta_layout(cfg, lay, th, need_w):
    """``(layout, QX, wring)``: the layer layout with HC padded to a multiple of L (DMATMUL
    writes whole rows), ``QX`` the AMEM region of q and X̂ side by side (stride 2·Dp, when
    the Q/K/V input is delta-encoded) and the AMEM ring of the DMATMUL weight slices after
    it, to the end of AMEM; ``need_w``: the largest weight slice set (AMEM elements)."""
    import dataclasses
    L = cfg.lanes
    HC = _pad(lay.HC, L)
    out_size = lay.cmem - lay.OUT if lay.OUT != lay.SC else 0
    OUT = lay.OUT if lay.OUT == lay.SC else HC + lay.R * lay.Dp
    cmem = max(HC + lay.R * lay.Dp, OUT + out_size, lay.XA + lay.R * lay.Dp)
    if cmem > cfg.cmem_depth:
        raise InputError(f"delta mode: CMEM needs {cmem} elements per PE, the accelerator has "
                         f"{cfg.cmem_depth}")
    lay = dataclasses.replace(lay, HC=HC, OUT=OUT, cmem=cmem)
    QX = _pad(lay.amem, L)
    w_lo = QX + (lay.R * 2 * lay.Dp if th["qkv"] is not None else 0)
    if cfg.amem_depth - w_lo < need_w:
        need = 1 << (w_lo + need_w - 1).bit_length()
        raise InputError(f"delta mode needs {w_lo + need_w} AMEM elements per PE (layer "
                         f"{lay.amem}, q|X̂ {w_lo - QX}, weight slices {need_w}); build the "
                         f"accelerator with --amem-depth {need}")
    # a multiple of 2L: both halves of a double-buffered ring start on a whole AMEM row
    return lay, QX, (w_lo, w_lo + (cfg.amem_depth - w_lo) // (2 * L) * 2 * L)


def delta_weight_elems(cfg, model, th):
    """AMEM elements per PE of the largest DMATMUL weight slice set."""
    P, L = cfg.pes, cfg.lanes
    D, F = int(model.config["dim"]), int(model.config["mlp_dim"])
    Dp = _pad(D, L)
    shapes = {"qkv": (D, 2 * Dp), "wo": (D, D), "ffn1": (D, F), "ffn2": (F, D)}
    return max([_ceil(_ceil(n, L), P) * k * L for s, (k, n) in shapes.items()
                if th[s] is not None] or [0])


def lower_attention_delta(b, lay, *, rows, wqkv, m_qkv, sh_qkv, c_e, sh_e, m_a, sh_a, x_base,
                          name, theta, QX):
    """Q/K/V with a delta-encoded input: one DMATMUL over every token with W = [Wqᵀ | I]
    writes q (requantized) and X̂ (m = 1, sh = 0: exact) side by side at QX (stride 2·Dp); K
    and V are dense MATMULs on X̂ (golden: the fused projection of X̂); the attention reads
    q from QX and writes its output to QA as usual."""
    D, H, d, N, Dp = lay.D, lay.H, lay.d, lay.N, lay.Dp
    wqkv = np.asarray(wqkv)
    wq, wk, wv = wqkv[:D], wqkv[D:2 * D], wqkv[2 * D:]
    for nm, w in (("Wq", wq), ("Wk", wk), ("Wv", wv)):
        _acc_bound(f"{name}.{nm}", D, 256, w)
    wqi = np.zeros((D, 2 * Dp), dtype=np.int64)
    wqi[:, :D] = wq.T
    wqi[:, Dp:Dp + D] = np.eye(D, dtype=np.int64)
    mq = np.zeros(2 * Dp, np.int64)
    shq = np.zeros(2 * Dp, np.int64)
    mq[:D], shq[:D] = m_qkv[:D], sh_qkv[:D]
    mq[Dp:Dp + D] = 1
    b.op("dmatmul", b=b.w_item(f"{name}.wqi.d", wqi), p=b.p_item(f"{name}.wqi.p", 0, mq, shq,
                                                                    2 * Dp),
         rows=N, k=D, tiles=_ceil(2 * Dp, b.L), n=2 * Dp, a_base=x_base, a_stride=Dp,
         dst=Dst.AMEM, out_base=QX, out_stride=2 * Dp, sat=Sat.INT9, theta=theta,
         macs=rows * D * D)
    for h in range(H):
        c0, c1 = h * d, (h + 1) * d
        weight_matmul(b, f"{name}.wk{h}", wk[c0:c1].T,
                      params=(0, m_qkv[D + c0:D + c1], sh_qkv[D + c0:D + c1]), rows=N,
                      a_base=QX + Dp, a_stride=2 * Dp, dst=Dst.BBUF_T, out_base=lay.KT,
                      out_stride=d, sat=Sat.INT8)
        weight_matmul(b, f"{name}.wv{h}", wv[c0:c1].T,
                      params=(0, m_qkv[2 * D + c0:2 * D + c1], sh_qkv[2 * D + c0:2 * D + c1]),
                      rows=N, a_base=QX + Dp, a_stride=2 * Dp, dst=Dst.BBUF_ROWS,
                      out_base=lay.VB, out_stride=N, sat=Sat.INT8)
        _attention_core(b, lay, rows=rows, q_base=QX + c0, q_stride=2 * Dp, c_e=c_e, sh_e=sh_e,
                        m_a=_cols(m_a, c0, c1), sh_a=_cols(sh_a, c0, c1), name=f"{name}.h{h}",
                        out=dict(dst=Dst.AMEM, out_base=lay.QA + c0, out_stride=Dp))


def lower_layer_delta(b, lay, layer, *, rows, heads, name, out, th, QX):
    """:func:`lower_layer` with DMATMUL at the sites of ``th`` that are not None (Q/K/V input,
    Wo input, W1 input, W2 input); golden :func:`sim.golden.delta_kwt.kwt_delta`."""
    D, Dp, F = lay.D, lay.Dp, lay.F
    if th["qkv"] is None:
        lower_attention(b, lay, rows=rows, wqkv=layer.wqkv, m_qkv=layer.m_qkv,
                        sh_qkv=layer.sh_qkv, c_e=layer.c_e, sh_e=layer.sh_e, m_a=layer.m_a,
                        sh_a=layer.sh_a, x_base=lay.XA, name=name)
    else:
        lower_attention_delta(b, lay, rows=rows, wqkv=layer.wqkv, m_qkv=layer.m_qkv,
                              sh_qkv=layer.sh_qkv, c_e=layer.c_e, sh_e=layer.sh_e,
                              m_a=layer.m_a, sh_a=layer.sh_a, x_base=lay.XA, name=name,
                              theta=th["qkv"], QX=QX)
    if th["wo"] is None:
        lower_out_proj(b, lay, rows=rows, wo=layer.wo, bo=layer.bo, m_o=layer.m_o,
                       sh_o=layer.sh_o, name=name)
    else:
        _acc_bound(f"{name}.Wo", D, 256, layer.wo, layer.bo)
        b.op("dmatmul", b=b.w_item(f"{name}.wo.d", np.asarray(layer.wo).T),
             p=b.p_item(f"{name}.wo.p", layer.bo, layer.m_o, layer.sh_o, D), rows=rows, k=D,
             tiles=_ceil(D, b.L), n=D, a_base=lay.QA, a_stride=Dp, dst=Dst.CMEM,
             out_base=lay.HC, out_stride=Dp, sat=Sat.INT16, bias=True, req=True,
             theta=th["wo"], macs=rows * D * D)
    lower_residual_norm(b, lay, rows=rows, x_base=lay.XA, m_r=layer.m_r1, sh_r=layer.sh_r1,
                        ln=layer.ln1, out=dict(dst=Dst.AMEM, out_base=lay.XB, out_stride=Dp),
                        name=f"{name}.ln1")
    if th["ffn1"] is None and th["ffn2"] is None:
        lower_ffn(b, lay, rows=rows, x_base=lay.XB, w1=layer.w1, b1=layer.b1, m_1=layer.m_1,
                  sh_1=layer.sh_1, gelu=layer.gelu, w2=layer.w2, b2=layer.b2, m_2=layer.m_2,
                  sh_2=layer.sh_2, name=name)
    else:
        if len(lay.ffn_chunks) != 1:
            raise InputError("delta FFN needs the whole MLP hidden layer in AMEM (one chunk)")
        w1, w2 = np.asarray(layer.w1), np.asarray(layer.w2)
        _acc_bound(f"{name}.W1", D, 256, w1, layer.b1)
        _acc_bound(f"{name}.W2", F, 256, w2, layer.b2)
        table = b.t_item(f"{name}.gelu", layer.gelu)
        if th["ffn1"] is None:
            weight_matmul(b, f"{name}.w1c0", w1.T, params=(layer.b1, layer.m_1, layer.sh_1),
                          rows=rows, a_base=lay.XB, a_stride=Dp, dst=Dst.AMEM, out_base=lay.GA,
                          out_stride=lay.Fcp, sat=Sat.INT8, bias=True, act=True, t=table)
        else:
            b.op("dmatmul", b=b.w_item(f"{name}.w1.d", w1.T),
                 p=b.p_item(f"{name}.w1.p", layer.b1, layer.m_1, layer.sh_1, F), t=table,
                 rows=rows, k=D, tiles=_ceil(F, b.L), n=F, a_base=lay.XB, a_stride=Dp,
                 dst=Dst.AMEM, out_base=lay.GA, out_stride=lay.Fcp, sat=Sat.INT8, bias=True,
                 act=True, theta=th["ffn1"], macs=rows * D * F)
        if th["ffn2"] is None:
            weight_matmul(b, f"{name}.w2c0", w2.T, params=(layer.b2, layer.m_2, layer.sh_2),
                          rows=rows, a_base=lay.GA, a_stride=lay.Fcp, dst=Dst.CMEM,
                          out_base=lay.HC, out_stride=Dp, sat=Sat.INT16, bias=True, req=True)
        else:
            b.op("dmatmul", b=b.w_item(f"{name}.w2.d", w2.T),
                 p=b.p_item(f"{name}.w2.p", layer.b2, layer.m_2, layer.sh_2, D), rows=rows,
                 k=F, tiles=_ceil(D, b.L), n=D, a_base=lay.GA, a_stride=lay.Fcp,
                 dst=Dst.CMEM, out_base=lay.HC, out_stride=Dp, sat=Sat.INT16, bias=True,
                 req=True, theta=th["ffn2"], macs=rows * F * D)
    lower_residual_norm(b, lay, rows=rows, x_base=lay.XB, m_r=layer.m_r2, sh_r=layer.sh_r2,
                        ln=layer.ln2, out=out, name=f"{name}.ln2")


# --------------------------------------------------------------------------------------------
# The whole KWT

def split_input(x9, parts):
    """int9 → ``parts`` int8 matrices side by side whose sum is ``x9`` (LOAD_A moves int8):
    part 1 = clip(x, −128, 127), part 2 = clip(rest, …), …"""
    rest = np.asarray(x9, dtype=np.int64)
    out = []
    for _ in range(parts):
        p = np.clip(rest, *INT8)
        out.append(p)
        rest = rest - p
    if np.any(rest):
        raise InputError(f"input values in [{x9.min()}, {x9.max()}] need more than {parts} "
                         f"int8 parts")
    return np.concatenate(out, axis=-1)


def input_parts(x9):
    """How many int8 parts an int9 input needs: 1 in [−128, 127], 2 in [−256, 254], else 3."""
    lo, hi = int(np.min(x9)), int(np.max(x9))
    for p in (1, 2, 3):
        if -128 * p <= lo and hi <= 127 * p:
            return p
    raise InputError(f"input values [{lo}, {hi}] are not int9")


#: Fraction of the tokens in the embedding's first row part (:func:`embed_split`).
EMBED_SPLIT = 1 / 3


def embed_split(N, P):
    """Rows of the embedding's first part: a multiple of P near ``EMBED_SPLIT``·N; N (one
    part) when that is 0 or N."""
    r = round(N * EMBED_SPLIT / P) * P
    return r if 0 < r < N else N


def compile_kwt(model, mfcc9, *, config=None, pes=None, lanes=None, parts=None, last_rows1=True,
                delta=None):
    """The whole int8 KWT on one clip as a :class:`CompiledJob`; ``job.read(ext)`` gives the
    (1, classes) int16 logits, bit-exact with :func:`sim.golden.kwt`.

    mfcc9 : int9 (tokens − 1, n_mfcc), ``model.quantize_input(features)``.
    parts : int8 parts of the input (LOAD_A moves int8; the embedding sums the parts with the
        weights repeated), default the fewest that hold this input; region ``input`` of the
        image holds the LOAD_A words (:meth:`CompiledJob.with_input`).
    last_rows1 : after the last layer's K and V only token 0 matters: run the rest of that layer
        on one row (False: every row, as the golden model).
    delta : Delta KWT thresholds (a θ for every supported site, or ``{site: θ}``): DMATMUL at
        the sites ``qkv``, ``wo``, ``ffn1``, ``ffn2`` (:func:`lower_layer_delta`); the logits
        equal :func:`sim.golden.delta_kwt.kwt_delta` with the same thresholds.
    """
    cfg = make_config(config, pes, lanes)
    mc = model.config
    D, F, H, N = int(mc["dim"]), int(mc["mlp_dim"]), int(mc["heads"]), int(mc["tokens"])
    n_in = model.embed_w.shape[1]
    classes = model.head_w.shape[0]
    x9 = _int_array(mfcc9, "MFCC input", *INT9, shape=(N - 1, n_in))
    parts = parts or input_parts(x9)
    a = np.concatenate([np.zeros((1, n_in * parts), np.int64), split_input(x9, parts)])
    w_in = np.tile(np.asarray(model.embed_w).T, (parts, 1))
    _acc_bound("embedding", n_in * parts, 128, w_in, model.embed_c0)
    _acc_bound("head", D, 256, model.head_w, model.head_b)
    nl = len(model.layers)
    Cp = _pad(classes, cfg.lanes)

    th = delta_thresholds(delta) if delta is not None else None
    use_delta = th is not None and any(t is not None for t in th.values())
    if use_delta and not cfg.delta:
        raise InputError("delta thresholds need DMATMUL, and this configuration has no delta "
                         "datapath (built with --no-delta)")

    def make(lay):
        QX = wring = None
        if use_delta:
            lay, QX, wring = delta_layout(cfg, lay, th, delta_weight_elems(cfg, model, th))
        b = Builder(cfg, bbuf_ring=lay.bbuf_fixed, wring=wring)
        # The embedding runs in two row parts: the first waits only for its own input and
        # start-value rows; the second's load while the first computes.
        r1 = embed_split(N, cfg.pes)
        late = (r1, 0) if r1 < N else None
        b.input_a("input", a, lay.IN, lay.IN_stride, late=late)
        b.input_c("embed.c0", model.embed_c0, lay.XA, lay.Dp, late=late)
        b.set_section("embed")
        bi = pi = None
        for r0, r in ((0, r1), (r1, N)):
            if r > r0:
                bi, pi = weight_matmul(
                    b, "embed", w_in, params=(0, model.embed_m, model.embed_sh), rows=r - r0,
                    a_base=lay.IN + r0 // cfg.pes * lay.IN_stride, a_stride=lay.IN_stride,
                    dst=Dst.AMEM, out_base=lay.XA + r0 // cfg.pes * lay.Dp, out_stride=lay.Dp,
                    sat=Sat.INT9, accum=True, useful_k=n_in, b_items=bi, p_items=pi)
        for li, layer in enumerate(model.layers):
            b.set_section(f"layer{li}")
            rows = 1 if last_rows1 and li == nl - 1 else N
            out = dict(dst=Dst.AMEM, out_base=lay.XA, out_stride=lay.Dp)
            if use_delta:
                lower_layer_delta(b, lay, layer, rows=rows, heads=H, name=f"l{li}", out=out,
                                  th=th, QX=QX)
            else:
                lower_layer(b, lay, layer, rows=rows, heads=H, name=f"l{li}", out=out)
        b.set_section("head")
        weight_matmul(b, "head", np.asarray(model.head_w).T,
                      params=(model.head_b, model.head_m, model.head_sh), rows=1, a_base=lay.XA,
                      a_stride=lay.Dp, dst=Dst.CMEM, out_base=lay.OUT, out_stride=Cp,
                      sat=Sat.INT16, bias=True, req=True)
        b.output(1, classes, lay.OUT, Cp)
        job = b.build(shape=(1, classes))
        job.info.update(layout=lay.describe(), input_parts=parts, last_rows1=last_rows1,
                        delta=th if use_delta else None)
        return job

    linear = any(getattr(layer, "linear", False) for layer in model.layers)
    return compile_with(kwt_layouts(cfg, N=N, D=D, H=H, F=F, k_in=n_in * parts,
                                    out_cols=classes, out_rows=1, linear=linear), make)


class KwtPrograms:
    """Compiled KWT programs for one model and accelerator, one per input part count (compiled
    on first use, then only the input region changes): ``job(x9)``; ``stats(job)`` the cost
    model's counters and per-section cycles (cached)."""

    def __init__(self, model, config, **kw):
        self.model, self.config, self.kw = model, config, kw
        self._jobs, self._stats = {}, {}

    def job(self, x9, *, patch=True):
        """The program for ``x9``; ``patch=False``: the program for inputs with as many parts
        (another clip's input in the image — enough for the figures)."""
        parts = input_parts(x9)
        if parts not in self._jobs:
            self._jobs[parts] = compile_kwt(self.model, x9, config=self.config, parts=parts,
                                            **self.kw)
            return self._jobs[parts]
        if not patch:
            return self._jobs[parts]
        return self._jobs[parts].with_input("input",
                                            kwt_input_words(x9, parts, self.config.lanes))

    def stats(self, job):
        key = job.info["input_parts"]
        if key not in self._stats:
            self._stats[key] = section_cycles(job)
        return self._stats[key]


# --------------------------------------------------------------------------------------------
# Single operations (integer inputs; sim.ops quantizes float inputs)

def softmax_job(scores, c_e, sh_e, *, config=None, pes=None, lanes=None):
    """Row softmax (SOFTMAX with NORM) of int32 scores (M × n) → uint8 probabilities (M × n),
    bit-exact with :func:`sim.golden.softmax`."""
    cfg = make_config(config, pes, lanes)
    L, P = cfg.lanes, cfg.pes
    s = _int_array(scores, "scores", *INT32, ndim=2)
    M, n = s.shape
    if n > MAX_ROW_K:
        raise InputError(f"softmax rows of {n} elements: the row unit takes at most {MAX_ROW_K}")
    R, npad = _ceil(M, P), _pad(n, L)
    if 2 * R * npad > cfg.cmem_depth:
        raise InputError(f"softmax of {M}×{n} needs {2 * R * npad} CMEM elements per PE, the "
                         f"accelerator has {cfg.cmem_depth}")
    b = Builder(cfg)
    b.input_c("scores", s, 0, npad)
    b.set_section("softmax")
    b.op("softmax", rows=M, k=n, a_base=0, a_stride=npad, dst=Dst.CMEM, out_base=R * npad,
         out_stride=npad, c_e=int(c_e), sh_e=int(sh_e), norm=True)
    b.output(M, n, R * npad, npad)
    return b.build(shape=(M, n))


def layernorm_job(h, ln, *, config=None, pes=None, lanes=None):
    """LayerNorm of int16 rows (M × D) with the constants of
    :func:`sim.golden.layernorm_constants` → int9 (M × D), bit-exact with
    :func:`sim.golden.layernorm` with ``lo, hi`` = −256, 255."""
    cfg = make_config(config, pes, lanes)
    L, P = cfg.lanes, cfg.pes
    h = _int_array(h, "h", *INT16, ndim=2)
    M, D = h.shape
    if D > MAX_ROW_K:
        raise InputError(f"LayerNorm rows of {D} elements: the row unit takes at most {MAX_ROW_K}")
    R, Dp = _ceil(M, P), _pad(D, L)
    if 2 * R * Dp > cfg.cmem_depth:
        raise InputError(f"LayerNorm of {M}×{D} needs {2 * R * Dp} CMEM elements per PE, the "
                         f"accelerator has {cfg.cmem_depth}")
    b = Builder(cfg)
    b.input_c("h", h, 0, Dp)
    b.set_section("layernorm")
    _layernorm_op(b, D=D, Dp=Dp, rows=M, src=0, ln=ln, name="ln",
                  out=dict(dst=Dst.CMEM, out_base=R * Dp, out_stride=Dp))
    b.output(M, D, R * Dp, Dp)
    return b.build(shape=(M, D))


def _head_operands(q, k, v):
    """int8 q, k (N × d) and v (N × dv) of one attention head, checked."""
    q = _int_array(q, "q", *INT8, ndim=2)
    k = _int_array(k, "k", *INT8, shape=q.shape)
    v = _int_array(v, "v", *INT8, ndim=2)
    if v.shape[0] != q.shape[0]:
        raise InputError(f"v has {v.shape[0]} rows, q and k have {q.shape[0]}")
    return q, k, v


def attention_job(q, k, v, c_e, sh_e, m_a, sh_a, *, config=None, pes=None, lanes=None):
    """One head (golden :func:`sim.golden.attention`): int8 q, k (N × d) and v (N × dv) →
    int9 (N × dv). q is the A operand (LOAD_A); kᵀ and v are B operands, loaded as they are.
    AMEM: q, then the weights; CMEM: the scores, then the output."""
    cfg = make_config(config, pes, lanes)
    L, P = cfg.lanes, cfg.pes
    q, k, v = _head_operands(q, k, v)
    (N, d), dv = q.shape, v.shape[1]
    if N > MAX_ROW_K:
        raise InputError(f"{N} tokens: a softmax row holds at most {MAX_ROW_K}")
    R, dp, dvp = _ceil(N, P), _pad(d, L), _pad(dv, L)
    if R > RS_ENTRIES:
        raise InputError(f"{R} rows per PE: the row scales hold {RS_ENTRIES}")
    mx = R * (N + 1 + dvp) <= cfg.cmem_depth      # room for the row maxima (MAXC)
    Ns = N + mx
    if R * (dp + N) > cfg.amem_depth or R * (N + dvp) > cfg.cmem_depth:
        raise InputError(f"attention over {N} tokens needs {R * (dp + N)} AMEM and "
                         f"{R * (N + dvp)} CMEM elements per PE; the accelerator has "
                         f"{cfg.amem_depth} and {cfg.cmem_depth}")
    b = Builder(cfg)
    b.input_a("q", q, 0, dp)
    b.set_section("attention")
    lay = Layout(P=P, L=L, N=N, D=d, H=1, F=0, R=R, Dp=dp, d=d, fc=0, Fcp=0, XA=0, QA=0,
                 WA=R * dp, GA=0, XB=0, IN=0, IN_stride=0, amem=R * (dp + N), SC=0, HC=0,
                 OUT=R * Ns, cmem=R * (Ns + dvp), KT=0, VB=0, bbuf_fixed=0,
                 ffn_chunks=[], maxc=mx)
    _attention_core(b, lay, rows=N, q_base=0, q_stride=dp, c_e=c_e, sh_e=sh_e, m_a=m_a,
                    sh_a=sh_a, name="attention", dv=dv,
                    out=dict(dst=Dst.CMEM, out_base=lay.OUT, out_stride=dvp),
                    k_item=b.b_item("kT", k.T), v_item=b.b_item("v", v))
    b.output(N, dv, lay.OUT, dvp)
    return b.build(shape=(N, dv))


def linear_attention_job(q, k, v, lut_q, lut_k, m_t, sh_t, m_l, sh_l, *, config=None,
                         pes=None, lanes=None):
    """One linear-attention head (golden :func:`sim.golden.linear_attention`): int8 q, k
    (N × d) and v (N × dv) → int9 (N × dv). q and k are A operands (LOAD_A); φ is applied by the ACT epilogue of a MATMUL with the d × d identity
    (φq → AMEM, φkᵀ → AMEM_T); [v | 1] is a B operand. AMEM: q, k, φq, φkᵀ; BBUF: the T8 slot,
    then the ring; CMEM: the denominators, then the output."""
    cfg = make_config(config, pes, lanes)
    L, P = cfg.lanes, cfg.pes
    q, k, v = _head_operands(q, k, v)
    (N, d), dv = q.shape, v.shape[1]
    R, dp, Np, dvp = _ceil(N, P), _pad(d, L), _pad(N, L), _pad(dv, L)
    t1 = _ceil(dv + 1, L)
    if R > RS_ENTRIES:
        raise InputError(f"{R} rows per PE: the row scales hold {RS_ENTRIES}")
    QA, KA0, PQ = 0, R * dp, 2 * R * dp
    KT = _pad(3 * R * dp, L)
    amem = KT + _ceil(d, P) * Np
    cmem = R * L + R * dvp
    if amem > cfg.amem_depth or cmem > cfg.cmem_depth or t1 * d >= cfg.bbuf_depth:
        raise InputError(f"linear attention over {N} tokens (d = {d}, dv = {dv}) needs {amem} "
                         f"AMEM and {cmem} CMEM elements per PE and {t1 * d} BBUF words; the "
                         f"accelerator has {cfg.amem_depth}, {cfg.cmem_depth} and "
                         f"{cfg.bbuf_depth}")
    b = Builder(cfg, bbuf_ring=t1 * d)
    b.input_a("q", q, QA, dp)
    b.input_a("k", k, KA0, dp)
    b.set_section("linear_attention")
    t_q, t_k = b.t_item("phi_q", lut_q), b.t_item("phi_k", lut_k)
    if d > 256:
        raise InputError(f"linear attention takes heads of at most 256 columns, not {d}")
    eye = b.b_item("eye", np.eye(d, dtype=np.int64))
    pe = b.p_item("eye.p", 0, 1, 0, d)
    b.op("matmul", b=eye, p=pe, t=t_q, rows=N, k=d, tiles=_ceil(d, L), n=d, a_base=QA,
         a_stride=dp, dst=Dst.AMEM, out_base=PQ, out_stride=dp, sat=Sat.INT8, act=True)
    b.op("matmul", b=eye, p=pe, t=t_k, rows=N, k=d, tiles=_ceil(d, L), n=d, a_base=KA0,
         a_stride=dp, dst=Dst.AMEM_T, out_base=KT, out_stride=Np, sat=Sat.INT8, act=True)
    v1 = b.b_item("v1", np.concatenate([v, np.ones((N, 1), np.int64)], axis=1))
    b.op("matmul", b=v1, p=b.p_item("pt", 0, m_t, sh_t, dv + 1), rows=d, k=N, tiles=t1,
         n=dv + 1, a_base=KT, a_stride=Np, dst=Dst.BBUF_ROWS, out_base=0, out_stride=d,
         sat=Sat.INT8, macs=d * N * (dv + 1))
    dt, lane = dv // L, dv % L
    b.op("matmul", rows=N, k=d, tiles=1, n=lane + 1, a_base=PQ, a_stride=dp, b_base=dt * d,
         dst=Dst.CMEM, out_base=0, out_stride=L, macs=N * d)
    b.op("recip", rows=N, a_base=lane, a_stride=L)
    b.op("matmul", p=b.p_item("pl", 0, m_l, sh_l, dv), rows=N, k=d, tiles=_ceil(dv, L), n=dv,
         a_base=PQ, a_stride=dp, b_base=0, dst=Dst.CMEM, out_base=R * L, out_stride=dvp,
         rscale=True, req=True, sat=Sat.INT9, macs=N * d * dv)
    b.output(N, dv, R * L, dvp)
    return b.build(shape=(N, dv), notes=["φ(q), φ(k) by MATMULs with the identity and ACT"])


def mhsa_job(x, p, heads, *, config=None, pes=None, lanes=None):
    """Multi-head self-attention with its projections on int8 x (N × D) → the int16 Wo output
    (N × D): ``requant(mha(q, k, v)·Woᵀ + bo)`` as in :func:`sim.golden.encoder_layer`
    (reference :func:`sim.ops.mhsa_reference`). ``p``: an object with the attention fields of
    :class:`sim.qmodel.QLayer` (wqkv, m_qkv, sh_qkv, c_e, sh_e, m_a, sh_a, wo, bo, m_o, sh_o)."""
    cfg = make_config(config, pes, lanes)
    x = _int_array(x, "x", *INT8, ndim=2)
    N, D = x.shape

    def make(lay):
        b = Builder(cfg, bbuf_ring=lay.bbuf_fixed)
        b.input_a("x", x, lay.XA, lay.Dp)
        b.set_section("mhsa")
        if getattr(p, "linear", False):
            lower_linear_attention(b, lay, rows=N, wqkv=p.wqkv, m_qkv=p.m_qkv, sh_qkv=p.sh_qkv,
                                   phi_q=p.phi_q, phi_k=p.phi_k, m_t=p.m_t, sh_t=p.sh_t,
                                   m_l=p.m_l, sh_l=p.sh_l,
                                   x_base=lay.XA, name="mhsa")
        else:
            lower_attention(b, lay, rows=N, wqkv=p.wqkv, m_qkv=p.m_qkv, sh_qkv=p.sh_qkv,
                            c_e=p.c_e, sh_e=p.sh_e, m_a=p.m_a, sh_a=p.sh_a, x_base=lay.XA,
                            name="mhsa")
        lower_out_proj(b, lay, rows=N, wo=p.wo, bo=p.bo, m_o=p.m_o, sh_o=p.sh_o, name="mhsa")
        b.output(N, D, lay.HC, lay.Dp)
        job = b.build(shape=(N, D))
        job.info.update(layout=lay.describe())
        return job

    return compile_with(kwt_layouts(cfg, N=N, D=D, H=heads, F=1, ffn=False,
                                    linear=getattr(p, "linear", False)), make)


def ffn_job(x, p, *, config=None, pes=None, lanes=None):
    """The feed-forward block (golden :func:`sim.golden.ffn` with ``out`` int16) on int8 x
    (N × D); ``p`` has the FFN fields of :class:`sim.qmodel.QLayer` (w1, b1, m_1, sh_1, gelu,
    w2, b2, m_2, sh_2)."""
    cfg = make_config(config, pes, lanes)
    x = _int_array(x, "x", *INT8, ndim=2)
    N, D = x.shape
    F = np.asarray(p.w1).shape[0]

    def make(lay):
        b = Builder(cfg, bbuf_ring=lay.bbuf_fixed)
        b.input_a("x", x, lay.XB, lay.Dp)
        b.set_section("ffn")
        lower_ffn(b, lay, rows=N, x_base=lay.XB, w1=p.w1, b1=p.b1, m_1=p.m_1, sh_1=p.sh_1,
                  gelu=p.gelu, w2=p.w2, b2=p.b2, m_2=p.m_2, sh_2=p.sh_2, name="ffn")
        b.output(N, D, lay.HC, lay.Dp)
        job = b.build(shape=(N, D))
        job.info.update(layout=lay.describe())
        return job

    return compile_with(kwt_layouts(cfg, N=N, D=D, H=1, F=F, attention=False), make)


def encoder_job(x, layer, heads, *, config=None, pes=None, lanes=None):
    """One encoder layer (golden :func:`sim.golden.encoder_layer`) on int8 x (N × D) → int9
    (N × D); LN2 writes CMEM, which is stored."""
    cfg = make_config(config, pes, lanes)
    x = _int_array(x, "x", *INT8, ndim=2)
    N, D = x.shape
    F = np.asarray(layer.w1).shape[0]

    def make(lay):
        b = Builder(cfg, bbuf_ring=lay.bbuf_fixed)
        b.input_a("x", x, lay.XA, lay.Dp)
        b.set_section("encoder")
        lower_layer(b, lay, layer, rows=N, heads=heads, name="enc",
                    out=dict(dst=Dst.CMEM, out_base=lay.OUT, out_stride=lay.Dp))
        b.output(N, D, lay.OUT, lay.Dp)
        job = b.build(shape=(N, D))
        job.info.update(layout=lay.describe())
        return job

    return compile_with(kwt_layouts(cfg, N=N, D=D, H=heads, F=F,
                                    linear=getattr(layer, "linear", False)), make)
