"""``python -m sim.run matmul`` and the backends: the CLI round trip and its bad-input errors,
the harness/testbench logic on a mock top, and — once ``hw.accelerator`` builds — the amaranth
backend (P×L = 2×4, 3×4) and the verilator backend (8×16) bit-exact against the golden backend,
including chained and BBUF_T/BBUF_ROWS programs and the error flag (fixed seeds)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from hw.isa import ErrorCode, Op
from sim.backends import (AmaranthBackend, GoldenBackend, VerilatorBackend, get_backend,
                          hardware_status, run_job)
from sim.errors import InputError
from sim.golden import matmul
from hw.isa import Sat
from sim.program import (AccelConfig, AcceleratorError, Assembler, ImageBuilder,
                         SimulationError, Stage, chain_program, chain_reference, interpret,
                         matmul_program)
from sim.run import main

from .test_program import N_BAD, SHAPES, attention_case, bad_program_cases, build_bad, rand

HW_OK, HW_WHY = hardware_status()
needs_hw = pytest.mark.skipif(not HW_OK, reason=f"hardware top not available: {HW_WHY}")


def save(path, arr):
    np.save(path, arr)
    return str(path)


@pytest.fixture
def ab(tmp_path):
    rng = np.random.default_rng(42)
    a = rand(rng, (29, 37))
    b = rand(rng, (37, 23))
    return a, b, save(tmp_path / "a.npy", a), save(tmp_path / "b.npy", b)


# ---- CLI, golden backend

def test_cli_round_trip(tmp_path, ab, capsys):
    a, b, pa, pb = ab
    out, stats = tmp_path / "c.npy", tmp_path / "s.json"
    main(["matmul", "--backend", "golden", "--pes", "3", "--lanes", "4", "--a", pa, "--b", pb,
          "--out", str(out), "--stats", str(stats)])
    c = np.load(out)
    assert c.dtype == np.int32 and np.array_equal(c, matmul(a, b))
    s = json.loads(stats.read_text())
    assert s["mac_ops"] == 29 * 37 * 23
    assert s["utilization"] == pytest.approx(s["mac_ops"] / (s["cycles"] * 3 * 4))
    assert s["cycles"] == s["counters"]["CYCLES"] > 0
    assert {"MAC_CYCLES", "STALL_DMA", "STALL_WB", "INSTRET", "STATUS"} <= set(s["counters"])
    assert "cost model" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "c.npy", "s.json"]


def test_cli_bias_and_other_int_dtypes(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (5, 9)).astype(np.int32)   # any integer dtype inside int8
    b = rng.integers(-128, 128, (9, 4)).astype(np.int16)
    bias = rng.integers(-2**20, 2**20, 4).astype(np.int32)
    out = tmp_path / "c.npy"
    main(["matmul", "--pes", "2", "--lanes", "4", "--a", save(tmp_path / "a.npy", a), "--b",
          save(tmp_path / "b.npy", b), "--bias", save(tmp_path / "bias.npy", bias), "--out",
          str(out), "-q"])
    assert np.array_equal(np.load(out), matmul(a, b, bias))


def test_cli_exit_code_in_a_subprocess(tmp_path, ab):
    _, _, pa, _ = ab
    res = subprocess.run([sys.executable, "-m", "sim.run", "matmul", "--pes", "2", "--a", pa,
                          "--b", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "c.npy")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("error:") and res.stderr.count("\n") == 1
    assert "missing.npy" in res.stderr and "Traceback" not in res.stderr


def _bad_cases():
    def arr(x):
        return lambda d: save(d / "bad.npy", x)
    return [
        ("missing file", "a", lambda d: str(d / "nope.npy"), "nope.npy"),
        ("not an npy", "a",
         lambda d: (d / "g.npy").write_bytes(b"garbage") and str(d / "g.npy"), "not a .npy"),
        ("float dtype", "a", arr(np.zeros((29, 37), np.float32)), "float32"),
        ("NaN", "b", arr(np.full((37, 23), np.nan)), "NaN"),
        ("out of range", "a", arr(np.full((29, 37), 128, np.int16)), "[-128, 127]"),
        ("out of range low", "b", arr(np.full((37, 23), -129, np.int32)), "[-128, 127]"),
        ("3-D", "a", arr(np.zeros((2, 29, 37), np.int8)), "dimension"),
        ("empty", "a", arr(np.zeros((0, 37), np.int8)), "empty"),
        ("K mismatch", "b", arr(np.zeros((36, 23), np.int8)), "K differs"),
        ("bool", "a", arr(np.zeros((29, 37), bool)), "bool"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())), ids=[c[0] for c in _bad_cases()])
def test_cli_bad_input(tmp_path, ab, capsys, case):
    _, _, pa, pb = ab
    name, which, make, message = _bad_cases()[case]
    paths = {"a": pa, "b": pb}
    paths[which] = make(tmp_path)
    out, stats = tmp_path / "c.npy", tmp_path / "s.json"
    with pytest.raises(SystemExit) as e:
        main(["matmul", "--pes", "2", "--lanes", "4", "--a", paths["a"], "--b", paths["b"],
              "--out", str(out), "--stats", str(stats)])
    err = capsys.readouterr().err
    assert e.value.code == 2, name
    assert err.startswith("error:") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not stats.exists()


@pytest.mark.parametrize("extra, message", [
    (["--pes", "0"], "at least 1"),
    (["--lanes", "3"], "lanes"),
    (["--amem-depth", "100"], "power of two"),
    (["--backend", "fpga"], "invalid choice"),
    (["--waves"], "hardware backend"),
    (["--out", "c.txt"], ".npy"),
    (["--out", "/nonexistent/dir/c.npy"], "does not exist"),
    (["--bias", "BIAS3"], "expected 23 values"),
    (["--bias", "BIASBIG"], "[-2147483648, 2147483647]"),
    (["--amem-depth", "32"], "does not fit AMEM"),
])
def test_cli_bad_options(tmp_path, ab, capsys, extra, message):
    _, _, pa, pb = ab
    save(tmp_path / "b3.npy", np.zeros(3, np.int32))
    save(tmp_path / "bbig.npy", np.array([2**40] * 23))
    extra = [{"BIAS3": str(tmp_path / "b3.npy"), "BIASBIG": str(tmp_path / "bbig.npy"),
              "c.txt": str(tmp_path / "c.txt")}.get(x, x) for x in extra]
    args = ["matmul", "--pes", "2", "--lanes", "4", "--a", pa, "--b", pb, "--out",
            str(tmp_path / "c.npy")]
    with pytest.raises(SystemExit) as e:
        main(args + extra)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and message in err, err
    assert not (tmp_path / "c.npy").exists()


def test_cli_k_too_large(tmp_path, capsys):
    a = save(tmp_path / "a.npy", np.zeros((2, 5000), np.int8))
    b = save(tmp_path / "b.npy", np.zeros((5000, 3), np.int8))
    with pytest.raises(SystemExit) as e:
        main(["matmul", "--pes", "2", "--a", a, "--b", b, "--out", str(tmp_path / "c.npy")])
    assert e.value.code == 2 and "K = 5000 does not fit AMEM" in capsys.readouterr().err


def test_backend_interface_golden():
    with pytest.raises(InputError, match="unknown backend"):
        get_backend("nope")
    rng = np.random.default_rng(0)
    a, b = rand(rng, (9, 8)), rand(rng, (8, 5))
    job = matmul_program(a, b, pes=2, lanes=4)
    c, res = run_job(job, "golden")
    assert np.array_equal(c, matmul(a, b)) and res.backend == "golden"
    with pytest.raises(InputError, match="uint8"):
        GoldenBackend().run(job.image.astype(np.int16), job.program, job.config,
                            prog_base=job.prog_base)


# ---- harness and testbench logic on a mock top (no real hardware needed)

def _mock_program(cfg):
    asm = Assembler(cfg, check=False)
    asm.nop()
    asm.raw(Op.NOP, ext_addr=3, imm=0xAB, count=0b0101)   # masked write (mock only)
    asm.halt()
    img = ImageBuilder(cfg.lanes)
    img.place("d", np.arange(8 * cfg.lanes, dtype=np.uint8).reshape(8, cfg.lanes))
    pg = img.put_program("p", asm.program)
    return img.build(), asm.program, pg.addr


@pytest.mark.parametrize("backend", ["amaranth", pytest.param("verilator", marks=pytest.mark.slow)])
def test_backend_plumbing_on_mock(backend):
    from tb.mock_accel import MockAccelerator, MockSimSystem
    be = (AmaranthBackend(sim_system=MockSimSystem) if backend == "amaranth"
          else VerilatorBackend(accelerator=MockAccelerator))
    cfg = AccelConfig(pes=2, lanes=16, mem_latency=3)
    image, program, base = _mock_program(cfg)
    res = be.run(image, program, cfg, prog_base=base)
    assert res.counters["STATUS"] == 2 and res.counters["INSTRET"] == 3 and res.counters["PC"] == 2
    expect = image.copy()
    expect[3, [0, 2]] = 0xAB
    assert np.array_equal(res.ext, expect)
    bad = Assembler(cfg, check=False)
    bad.nop()
    bad.raw(0x55)
    bad.halt()
    img = ImageBuilder(16)
    pg = img.put_program("p", bad.program)
    with pytest.raises(AcceleratorError) as e:
        be.run(img.build(), bad.program, cfg, prog_base=pg.addr)
    assert e.value.code == ErrorCode.ILLEGAL_OPCODE and e.value.pc == 1
    assert backend in str(e.value)


# ---- the real hardware

AMARANTH_SHAPES = [(1, 1, 1), (2, 3, 5), (7, 13, 17), (6, 16, 8)]
AMARANTH_SLOW = [(31, 37, 41), (99, 64, 19), (16, 256, 9), (99, 99, 10)]


def _check_backend(backend, P, L, shape, seed, bias=False):
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    bv = rng.integers(-2**20, 2**20, N) if bias else None
    job = matmul_program(a, b, pes=P, lanes=L, bias=bv)
    c, res = run_job(job, backend)
    assert np.array_equal(c, matmul(a, b, bv)), (backend, P, L, shape)
    gold_ext, gold = interpret(job.image, job.prog_base, job.prog_len, job.config)
    assert np.array_equal(res.ext, gold_ext)          # the whole ext memory, not only C
    assert res.counters["INSTRET"] == gold["INSTRET"]
    assert res.counters["CYCLES"] >= res.counters["MAC_CYCLES"] > 0
    return res


@needs_hw
@pytest.mark.parametrize("pl", [(2, 4), (3, 4)])
@pytest.mark.parametrize("shape", AMARANTH_SHAPES)
def test_amaranth_backend_matmul(pl, shape):
    _check_backend(AmaranthBackend(), *pl, shape, seed=sum(shape), bias=shape[0] % 2 == 1)


@needs_hw
@pytest.mark.slow
@pytest.mark.parametrize("pl", [(2, 4), (3, 4)])
@pytest.mark.parametrize("shape", AMARANTH_SLOW)
def test_amaranth_backend_matmul_slow(pl, shape):
    _check_backend(AmaranthBackend(), *pl, shape, seed=sum(shape), bias=True)


@needs_hw
@pytest.mark.parametrize("shape", SHAPES)
def test_verilator_backend_matmul(shape):
    _check_backend(VerilatorBackend(), 8, 16, shape, seed=sum(shape), bias=shape[1] % 2 == 1)


@needs_hw
def test_amaranth_backend_back_pressure():
    _check_backend(AmaranthBackend(stall=40), 3, 4, (7, 13, 17), seed=5, bias=True)


@needs_hw
def test_verilator_backend_back_pressure():
    _check_backend(VerilatorBackend(stall=40, seed=7), 8, 16, (99, 64, 99), seed=1, bias=True)


def _chain_case(P, L, M=37, K=40):
    rng = np.random.default_rng(P * 100 + L)
    a = rand(rng, (M, K))
    stages = [
        Stage(rand(rng, (K, 24)), rng.integers(-3000, 3000, 24), rng.integers(1, 2**15, 24),
              rng.integers(16, 22, 24), Sat.INT9),
        Stage(rand(rng, (24, 9)), None, rng.integers(1, 2**15, 9), rng.integers(16, 22, 9),
              Sat.UINT8, relu=True),
        Stage(rand(rng, (9, 13)), rng.integers(-100, 100, 13)),
    ]
    return chain_program(a, stages, pes=P, lanes=L), chain_reference(a, stages)


@needs_hw
@pytest.mark.parametrize("backend, pl", [pytest.param("amaranth", (2, 4), marks=pytest.mark.slow),
                                         ("verilator", (8, 16))])
def test_hw_chained_matmul(backend, pl):
    job, expected = _chain_case(*pl)
    c, _ = run_job(job, backend)
    assert np.array_equal(c, expected)


@needs_hw
@pytest.mark.parametrize("backend, pl", [pytest.param("amaranth", (3, 4), marks=pytest.mark.slow),
                                         ("verilator", (8, 16))])
def test_hw_bbuf_t_and_bbuf_rows(backend, pl):
    cfg, image, program, base, read, expected = attention_case(*pl, M=13 if backend == "amaranth" else 21)
    res = get_backend(backend).run(image, program, cfg, prog_base=base)
    got = read(res.ext)
    assert np.array_equal(got["S"], expected["S"]) and np.array_equal(got["O"], expected["O"])


def _error_config(backend, pl):
    """Small memories for the Amaranth simulator (quick to elaborate); for Verilator the
    default depths, so that every Verilator test shares one harness build."""
    if backend == "verilator":
        return AccelConfig(pes=pl[0], lanes=pl[1])
    return AccelConfig(pes=pl[0], lanes=pl[1], amem_depth=64, cmem_depth=64, bbuf_depth=64,
                       pbuf_depth=4, imem_depth=16)


@needs_hw
@pytest.mark.parametrize("backend, pl", [("amaranth", (2, 4)), ("verilator", (8, 16))])
@pytest.mark.parametrize("case", [0, 2, 5, 7, 10, 11, 17] + [pytest.param(c, marks=pytest.mark.slow)
                                  for c in (1, 3, 4, 6, 8, 9, 12, 13, 14, 15, 16)])
def test_hw_error_flag(backend, pl, case):
    cfg = _error_config(backend, pl)
    name, step, code, pc = bad_program_cases(cfg)[case]
    image, program, base = build_bad(cfg, step)
    with pytest.raises(AcceleratorError) as e:
        get_backend(backend).run(image, program, cfg, prog_base=base)
    assert (e.value.code, e.value.pc) == (code, pc), name
    assert code.name in str(e.value) and backend in str(e.value)


@needs_hw
@pytest.mark.parametrize("backend", ["amaranth", "verilator"])
def test_hw_program_range(backend):
    cfg = _error_config(backend, (2, 4) if backend == "amaranth" else (8, 16))
    image, program, base = build_bad(cfg, lambda s: s.nop(), halt=False)
    for length, pc in ((0, 0), (len(program), len(program))):
        with pytest.raises(AcceleratorError) as e:
            get_backend(backend).run(image, length, cfg, prog_base=base)
        assert e.value.code == ErrorCode.PROGRAM_RANGE and e.value.pc == pc


@needs_hw
@pytest.mark.parametrize("backend, pl", [("amaranth", (2, 4)), ("verilator", (8, 16))])
def test_hw_watchdog(backend, pl):
    rng = np.random.default_rng(0)
    job = matmul_program(rand(rng, (16, 64)), rand(rng, (64, 16)), pes=pl[0], lanes=pl[1])
    with pytest.raises(SimulationError, match="not halted after 300 cycles"):
        run_job(job, backend, max_cycles=300)


@needs_hw
def test_cli_verilator(tmp_path, ab):
    a, b, pa, pb = ab
    out, stats = tmp_path / "c.npy", tmp_path / "s.json"
    main(["matmul", "--backend", "verilator", "--pes", "8", "--a", pa, "--b", pb, "--out",
          str(out), "--stats", str(stats), "-q"])
    assert np.array_equal(np.load(out), matmul(a, b))
    s = json.loads(stats.read_text())
    assert s["cycles_source"] == "hardware CYCLES counter" and s["sim_cycles_per_s"] > 0


assert N_BAD == 18
