# amaranth: UnusedElaboratable=no
"""Builds without the delta datapath (``Accelerator(delta=False)``, ``--no-delta``): dense
programs run as before, a DMATMUL stops with ILLEGAL_OPCODE (RTL and interpreter), CONFIG
bit 31 says so, and the software side refuses delta programs for such a configuration."""
import numpy as np
import pytest

from hw.accelerator import Accelerator
from hw.isa import CONFIG_NO_DELTA, Csr, Dst, ErrorCode, Flag, Op, Sat
from sim.errors import InputError
from sim.golden import matmul
from sim.program import AccelConfig, Assembler, interpret, static_check
from tests.test_accelerator import SMALL, Program, c_from_words, load_and_store_matmul, tiles
from tests.test_dmatmul import delta_program, image_of


def dense_program(rng, L, P, M=5, K=9, N=7):
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    bias = rng.integers(-1000, 1000, N)
    pg = Program(L)
    out = load_and_store_matmul(pg, A, B, pes=P, bias=bias)
    return pg, out, matmul(A, B, bias[None, :])


def test_config_word():
    a = Accelerator(pes=3, lanes=8, amem_depth=256, bbuf_depth=512)
    b = Accelerator(pes=3, lanes=8, amem_depth=256, bbuf_depth=512, delta=False)
    assert a.config_word & CONFIG_NO_DELTA == 0
    assert b.config_word == a.config_word | CONFIG_NO_DELTA
    with pytest.raises(TypeError, match="delta must be True or False"):
        Accelerator(pes=1, lanes=4, delta=0)


def test_dense_program_unchanged():
    """The same dense program on both builds: equal results and equal CYCLES."""
    P, L = 2, 4
    runs = []
    for delta in (True, False):
        pg, out, want = dense_program(np.random.default_rng(3), L, P)
        pg(Op.HALT)
        r = pg.run(pes=P, delta=delta)
        assert r["halted"] and not r["error"], r["code"]
        M, N = want.shape
        np.testing.assert_array_equal(c_from_words(r["mem"], M, tiles(N, L), L, out)[:, :N], want)
        assert bool(r["config"] & CONFIG_NO_DELTA) == (not delta)
        runs.append(r)
    assert runs[0]["cycles"] == runs[1]["cycles"]
    assert runs[0]["mac_cycles"] == runs[1]["mac_cycles"]


def test_dmatmul_is_illegal_without_delta():
    """A DMATMUL after dense work stops the program with ILLEGAL_OPCODE at its PC (no hang);
    the interpreter agrees."""
    P, L = 2, 4
    rng = np.random.default_rng(7)
    M, K, N = 4, 8, 6
    X = rng.integers(-128, 128, (M, K))
    W = rng.integers(-128, 128, (K, N))
    bias, m, sh = rng.integers(-100, 100, N), np.full(N, 1 << 10), np.full(N, 12)
    pg, _ = delta_program(L, P, X, W, 0, bias, m, sh, dst=Dst.CMEM, sat=Sat.INT16,
                          flags=Flag.BIAS | Flag.REQ, out_base=0)
    pc_dm = len(pg.prog) - 1
    pg(Op.HALT)
    r = pg.run(pes=P, delta=False, max_cycles=20_000)
    assert r["error"] and not r["halted"]
    assert r["code"] == ErrorCode.ILLEGAL_OPCODE
    assert r["pc"] == pc_dm
    assert r["instret"] == pc_dm          # the loads before it retired
    img, base, n = image_of(pg)
    cfg = AccelConfig(pes=P, lanes=L, mem_latency=3, delta=False, **SMALL)
    from sim.program import AcceleratorError
    with pytest.raises(AcceleratorError) as e:
        interpret(img.reshape(-1), base, n, cfg)
    assert e.value.code == ErrorCode.ILLEGAL_OPCODE and e.value.pc == pc_dm


def test_software_refuses_delta_programs():
    cfg = AccelConfig(pes=2, lanes=4, delta=False)
    assert cfg.key().endswith("_nodelta") and not AccelConfig(pes=2, lanes=4).key().endswith("_nodelta")
    with pytest.raises(InputError, match="delta must be True or False"):
        AccelConfig(pes=2, lanes=4, delta="no")
    fields = dict(op=int(Op.DMATMUL), rows=4, k=8, tiles=1, a_stride=8, dst=int(Dst.AMEM))
    from sim.program import _full
    i = dict(op=fields.pop("op"), **_full(fields))
    assert static_check(i, cfg)[0] == ErrorCode.ILLEGAL_OPCODE
    assert static_check(i, cfg.replace(delta=True)) is None
    asm = Assembler(cfg)
    with pytest.raises(InputError, match="ILLEGAL_OPCODE.*no-delta"):
        asm.dmatmul(rows=4, k=8, tiles=1)
    # a program assembled without checks: every backend refuses it before running
    raw = Assembler(cfg, check=False)
    raw.dmatmul(rows=4, k=8, tiles=1)
    raw.halt()
    from sim.backends import GoldenBackend
    img = np.zeros((64, 4), np.uint8)
    with pytest.raises(InputError, match=r"DMATMUL \(PC 0\).*--no-delta"):
        GoldenBackend().run(img, raw.program, cfg)


def test_compiler_refuses_delta_thresholds():
    from sim.compiler import compile_kwt
    from sim.kws import DEFAULT_MODEL
    from sim.qmodel import load_qmodel
    model = load_qmodel(DEFAULT_MODEL)
    mfcc9 = np.zeros((98, 40), np.int64)
    cfg = AccelConfig(pes=8, lanes=16, delta=False)
    with pytest.raises(InputError, match="no delta datapath"):
        compile_kwt(model, mfcc9, config=cfg, delta=4)


def test_board_config_reads_bit31():
    from sim.board import board_config

    class Fake:
        def __init__(self, word):
            self.word = word

        def csr_read(self, adr):
            assert adr == Csr.CONFIG
            return self.word

    for delta in (True, False):
        word = Accelerator(pes=2, lanes=8, amem_depth=512, bbuf_depth=1024, delta=delta).config_word
        c = board_config(Fake(word))
        assert (c.pes, c.lanes, c.amem_depth, c.bbuf_depth, c.delta) == (2, 8, 512, 1024, delta)


def test_generate_no_delta(tmp_path):
    from hw.generate import main
    small = ["--pes", "2", "--lanes", "4", "--amem-depth", "64", "--cmem-depth", "64",
             "--bbuf-depth", "64", "--pbuf-depth", "4", "--imem-depth", "16"]
    texts = {}
    for flag in ([], ["--no-delta"]):
        out = tmp_path / f"a{len(flag)}.v"
        assert main(small + flag + ["--out", str(out)]) == 0
        texts[bool(flag)] = out.read_text()
    # the delta sequencer's X̂ buffer exists only in the full build
    assert "delta_xhat" in texts[False] and "delta_xhat" not in texts[True]
    assert len(texts[True]) < len(texts[False])
