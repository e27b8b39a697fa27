# amaranth: UnusedElaboratable=no
"""The board top under Verilator (tb/verilator/board_harness.cpp), driven only through its
UART pins by ``sim.board.VerilatorLink``: the same request and session code as SerialLink
(a real board) and SimLink (Amaranth).

Default run (two small builds, P = 2, L = 4, ≈ 20–90 s each the first time): the protocol commands,
resynchronization, an accelerator error and a matmul job through the pins.
``-m slow``: keyword inference of real clips at P = 8, L = 16 with the whole KWT-1 image loaded
over the simulated UART (4 cycles per bit), logits equal to ``sim.golden.kwt`` bit for bit.
"""
import json

import numpy as np
import pytest

from hw.isa import ID_MAGIC, Csr, ErrorCode
from sim import board as host
from sim.golden import kwt, matmul
from sim.program import AccelConfig, AcceleratorError, SimulationError, matmul_program

from .test_board import SMALL, _bad_job

P, L = 2, 4
TOP = dict(pes=P, lanes=L, mem_depth=128, timeout_ms=0.5, **SMALL)      # one harness build


@pytest.fixture(scope="module")
def link():
    with host.VerilatorLink(**TOP) as lk:
        yield lk


def test_protocol_through_verilator_pins(link):
    assert link.info() == host.BoardInfo(1, L, 128)
    assert link.csr_read(Csr.ID) == ID_MAGIC
    assert link.csr_read(Csr.CONFIG) & 0xFFFF == P | L << 8
    link.csr_write(Csr.PROG_BASE, 0xDEADBEEF)
    assert link.csr_read(Csr.PROG_BASE) == 0xDEADBEEF
    words = (np.arange(24, dtype=np.uint8).reshape(6, L) + 100)
    link.mem_write(125, words)                             # 125…127, then wraps to 0…2
    assert link.mem_read(0, 3, L).tolist() == words[3:].tolist()
    assert link.transact(host.Request(bytes([0x7E]), 1, lambda r: r[0])) == host.NAK
    # A command cut short: no reply; after the board's timeout INFO works again.
    with pytest.raises(TimeoutError, match="0 of 1 reply bytes"):
        link.transact(host.Request(bytes([host.HostCmd.CSR_WRITE, Csr.PROG_LEN, 1]), 1, bytes))
    assert link.run(host.resync_ops(timeout_s=0.0005)) == host.BoardInfo(1, L, 128)
    assert link.csr_read(Csr.PROG_LEN) == 0
    with pytest.raises(AcceleratorError) as e:
        link.run_job(_bad_job(), max_polls=20)
    assert e.value.code == ErrorCode.BAD_FIELD and e.value.pc == 0


def test_matmul_job_through_verilator_pins(link):
    cfg = host.board_config(link, depths=SMALL)
    assert (cfg.pes, cfg.lanes, cfg.amem_depth, cfg.bbuf_depth) == (P, L, 256, 256)
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (5, 12))
    b = rng.integers(-128, 128, (12, 7))
    a[0] = -128
    b[:, 0] = -128
    job = matmul_program(a, b, config=AccelConfig(pes=P, lanes=L, **SMALL))
    c0 = link.cycles
    out = link.run_job(job, max_polls=50)
    np.testing.assert_array_equal(out["result"], matmul(a, b))
    assert out["status"] == 2 and out["instret"] == job.prog_len
    assert link.cycles - c0 > 10 * 4 * len(job.image) * L        # every byte went over the pins


def test_harness_errors():
    # The watchdog over the whole run ends the harness with one clear error.
    with host.VerilatorLink(max_cycles=200, **TOP) as lk:
        with pytest.raises(SimulationError, match="max-cycles"):
            lk.mem_write(0, np.zeros((16, L), np.uint8))
    with pytest.raises(ValueError, match="too fast"):
        host.VerilatorLink(baud=2_000_000, **TOP)


def test_matmul_job_with_sdram_through_verilator_pins():
    """The same job on BoardTop(memory="sdram"): the SDRAM controller against the C++ SDRAM
    model of the harness (timing rules checked at every edge, a violation ends the run)."""
    cfg = AccelConfig(pes=P, lanes=L, **SMALL)
    rng = np.random.default_rng(8)
    a = rng.integers(-128, 128, (5, 12))
    b = rng.integers(-128, 128, (12, 7))
    job = matmul_program(a, b, config=cfg)
    with host.VerilatorLink(pes=P, lanes=L, memory="sdram", **SMALL) as lk:
        # INFO arrives during the SDRAM's 200 µs initialization (800 cycles): the board starts
        # it only once the memory is ready (a MEM_WRITE sent now would not stall in the FIFO).
        assert lk.info() == host.BoardInfo(1, L, (32 << 20) // L)
        assert lk.cycles > 800
        words = np.arange(64, dtype=np.uint8).reshape(16, L)
        lk.mem_write((1 << 20) - 8, words)                 # across banks and rows
        assert lk.mem_read((1 << 20) - 8, 16, L).tolist() == words.tolist()
        out = lk.run_job(job, max_polls=50)
    np.testing.assert_array_equal(out["result"], matmul(a, b))


@pytest.mark.slow  # build (4–9 min) + 30 M simulated cycles: 19 min on the loaded 2-core machine
def test_kws_with_sdram_through_verilator_pins(capsys):
    """KWT-1 with its weights in the SDRAM (the controller on the C++ SDRAM model, ULX3S timing
    at 25 MHz, every rule checked): one real clip through the UART pins, logits equal to
    ``sim.golden.kwt`` bit for bit."""
    from sim.kws import DEFAULT_MODEL
    from sim.mfcc import mfcc
    from sim.paths import shipped_clips_dir
    from sim.qmodel import load_qmodel
    from sim.wav import list_dataset, read_wav

    path = str(list_dataset(shipped_clips_dir())[4][0])
    assert host.main(["--sim-verilator", "--memory", "sdram", "--sim-clk-hz", "25000000",
                      "kws", path, "--json"]) == 0
    r, = json.loads(capsys.readouterr().out)
    model = load_qmodel(DEFAULT_MODEL)
    want = kwt(model, model.quantize_input(mfcc(read_wav(path))[None]))[0]
    assert r["logits_int"] == want.tolist() and r["equal_golden"]


@pytest.mark.slow  # build (4–9 min) + 30 M simulated cycles: 19 min on the loaded 2-core machine
def test_kws_through_verilator_pins(capsys):
    """``python -m sim.board --sim-verilator kws`` on two real clips: the first loads the whole
    KWT-1 image through the simulated UART pins, the second only its input; logits equal to
    ``sim.golden.kwt`` bit for bit and the label equal."""
    from sim.kws import DEFAULT_MODEL
    from sim.mfcc import mfcc
    from sim.paths import labels, shipped_clips_dir
    from sim.qmodel import load_qmodel
    from sim.wav import list_dataset, read_wav

    clips = list_dataset(shipped_clips_dir())
    paths = [str(clips[4][0]), str(clips[9][0])]
    assert host.main(["--sim-verilator", "kws", *paths, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = load_qmodel(DEFAULT_MODEL)
    for path, r in zip(paths, results):
        x9 = model.quantize_input(mfcc(read_wav(path))[None])
        want = kwt(model, x9)[0]
        assert r["logits_int"] == want.tolist() and r["equal_golden"]
        assert r["label"] == labels()[int(np.argmax(want))]
        assert (r["pes"], r["lanes"]) == (8, 16) and r["cycles"] > 100_000
    # The second clip sends its input region and the STATUS polls only.
    assert results[0]["bytes_sent"] > 700_000 > 30_000 > results[1]["bytes_sent"]
