# amaranth: UnusedElaboratable=no
"""The board top in the Amaranth simulator, driven only through its UART pins by the host code
of sim/board.py: the protocol commands, resynchronization, and a whole matmul job (program and
operands written into the ext memory, start, poll, results read back and compared with
``sim.golden.matmul``). Plus request encodings, argument checks, ``python -m hw.build``
argument errors, and (slow) real FPGA builds.

Simulated clock 4 MHz with 1 Mbaud: 4 cycles per bit, 40 per byte.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hw.board import ACK, INFO_MAGIC, NAK, BoardTop, HostBridge, HostCmd
from hw.isa import ID_MAGIC, Csr, ErrorCode
from sim import board as host
from sim.golden import matmul
from sim.program import AccelConfig, AcceleratorError, Assembler, ImageBuilder, Job, matmul_program
from tb.runner import emit, lint

REPO = Path(__file__).resolve().parent.parent
CLK, BAUD = 4_000_000, 1_000_000
SMALL = dict(amem_depth=256, cmem_depth=256, bbuf_depth=256, pbuf_depth=16, imem_depth=32)


def _top(pes=1, lanes=4, mem_depth=256, **kw):
    return BoardTop(clk_hz=CLK, baud=BAUD, mem_depth=mem_depth, pes=pes, lanes=lanes,
                    **{**SMALL, **kw})


# ------------------------------------------------------------------ host-side encodings
def test_request_encodings():
    r = host.csr_write(Csr.PROG_LEN, 0x01020304)
    assert r.data == bytes([HostCmd.CSR_WRITE, 6, 4, 3, 2, 1]) and r.reply_len == 1
    assert r.parse(bytes([ACK])) is None
    with pytest.raises(host.LinkError, match="NAK"):
        r.parse(bytes([NAK]))
    r = host.csr_read(Csr.STATUS)
    assert r.data == bytes([HostCmd.CSR_READ, 3]) and r.parse(b"\x05\x03\x00\x00") == 0x305
    r = host.mem_read(0x12345, 3, 4)
    assert r.data == bytes([HostCmd.MEM_READ, 0x45, 0x23, 0x01, 0, 2, 0]) and r.reply_len == 12
    assert r.parse(bytes(range(12))).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    w = np.arange(8, dtype=np.uint8).reshape(2, 4)
    r = host.mem_write(7, w)
    assert r.data == bytes([HostCmd.MEM_WRITE, 7, 0, 0, 0, 1, 0]) + bytes(range(8))
    r = host.info()
    assert r.parse(bytes([INFO_MAGIC, 1, 16, 12])) == host.BoardInfo(1, 16, 4096)
    with pytest.raises(host.LinkError, match="version"):
        r.parse(bytes([INFO_MAGIC, 9, 16, 12]))
    for bad in (lambda: host.csr_read(256), lambda: host.mem_read(0, 0, 4),
                lambda: host.mem_read(0, host.MAX_WORDS + 1, 4), lambda: host.csr_write(0, -1),
                lambda: host.mem_write(0, np.zeros((0, 4), np.uint8)),
                lambda: host.mem_write(0, np.zeros((2, 4), np.int8))):
        with pytest.raises(host.InputError):
            bad()


def test_serial_link_on_a_fake_port():
    # SerialLink against a port that replays canned replies: bytes out, short reply → LinkError.
    class Port:
        def __init__(self, replies):
            self.out, self.replies = bytearray(), bytearray(replies)

        def write(self, data):
            self.out += data

        def read(self, n):
            got, self.replies = bytes(self.replies[:n]), self.replies[n:]
            return got

    port = Port(bytes([INFO_MAGIC, 1, 4, 8]) + (0x4B575431).to_bytes(4, "little") + bytes([ACK]))
    link = host.SerialLink(port)
    assert link.info() == host.BoardInfo(1, 4, 256)
    assert link.csr_read(Csr.ID) == ID_MAGIC
    link.mem_write(3, np.ones((2, 4), np.uint8))
    assert bytes(port.out) == (bytes([HostCmd.INFO, HostCmd.CSR_READ, 0, HostCmd.MEM_WRITE, 3, 0, 0, 0, 1, 0])
                               + bytes([1] * 8))
    with pytest.raises(host.LinkError, match="expected 4 reply bytes, got 0"):
        link.csr_read(Csr.STATUS)


def test_host_cli_errors_are_one_line(capsys):
    # No board here: pyserial missing or the device absent, either way one line and exit 2.
    assert host.main(["--port", "/dev/kwt-no-such-port", "info"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_board_arguments():
    with pytest.raises(ValueError, match="too fast"):
        BoardTop(clk_hz=CLK, baud=2_000_000, mem_depth=256, pes=1, lanes=4)
    with pytest.raises(ValueError, match="depth"):
        BoardTop(clk_hz=CLK, baud=BAUD, mem_depth=100, pes=1, lanes=4)
    with pytest.raises(ValueError, match="timeout_ms"):
        BoardTop(clk_hz=CLK, baud=BAUD, mem_depth=256, pes=1, lanes=4, timeout_ms=-1)
    with pytest.raises(ValueError, match="pes"):
        BoardTop(clk_hz=CLK, baud=BAUD, mem_depth=256, pes=0, lanes=4)
    with pytest.raises(TypeError, match="amem"):
        BoardTop(clk_hz=CLK, baud=BAUD, mem_depth=256, pes=1, lanes=4, amem=16)
    with pytest.raises(ValueError, match="lanes"):
        HostBridge(lanes=5, mem_depth=16)
    with pytest.raises(ValueError, match="mem_depth"):
        HostBridge(lanes=4, mem_depth=48)


def test_host_bridge_lint():
    lint(emit(HostBridge(lanes=4, mem_depth=1024, timeout=1000), "host_bridge"), "host_bridge")


# ------------------------------------------------------------------ through the UART pins
def _bad_job():
    """A program the hardware rejects at PC 0 (MATMUL with k = 0), then HALT."""
    cfg = AccelConfig(pes=1, lanes=4, **SMALL)
    asm = Assembler(cfg, check=False)
    asm.raw(0x20, rows=1, k=0, tiles=1)
    asm.halt()
    img = ImageBuilder(4)
    reg = img.put_program("program", asm.program)
    return Job(config=cfg, image=img.build(), program=asm.program, prog_base=reg.addr, shape=(1, 1),
               blocks=[], regions=dict(img.regions), mac_ops=0)


def test_protocol_commands_resync_and_errors():
    """INFO, CSR read/write, memory round trip with wrap-around, NAK, the inter-byte timeout,
    and a program the accelerator rejects (reported as AcceleratorError)."""
    top = _top(mem_depth=64, timeout_ms=0.5)            # 2000 cycles

    def ops():
        out = {"info": (yield host.info()), "id": (yield host.csr_read(Csr.ID)),
               "config": (yield host.csr_read(Csr.CONFIG))}
        yield host.csr_write(Csr.PROG_BASE, 0xDEADBEEF)
        out["prog_base"] = yield host.csr_read(Csr.PROG_BASE)
        out["unknown_csr"] = yield host.csr_read(0x3F)
        words = np.arange(24, dtype=np.uint8).reshape(6, 4) + 100
        yield host.mem_write(61, words)                     # 61…63 then wraps to 0…2
        out["wrapped"] = yield host.mem_read(0, 3, 4)
        out["tail"] = yield host.mem_read(60, 4, 4)
        out["nak"] = yield host.Request(bytes([0x7E]), 1, lambda r: r[0])
        # A command cut short: nothing comes back; after the timeout the bridge takes commands.
        out["cut"] = yield host.Request(bytes([HostCmd.CSR_WRITE, Csr.PROG_LEN, 1]), 0, bytes)
        out["after_cut"] = yield from host.resync_ops(timeout_s=0.0005)
        out["prog_len"] = yield host.csr_read(Csr.PROG_LEN)
        try:
            yield from host.run_job_ops(_bad_job(), max_polls=20)
        except AcceleratorError as e:
            out["error"] = e
        return out

    out, _ = host.run_on_sim(top, ops(), max_cycles=60_000)
    assert out["info"] == host.BoardInfo(1, 4, 64)
    assert out["id"] == ID_MAGIC and out["config"] & 0xFFFF == 1 | 4 << 8
    assert out["prog_base"] == 0xDEADBEEF and out["unknown_csr"] == 0
    words = np.arange(24, dtype=np.uint8).reshape(6, 4) + 100
    assert out["wrapped"].tolist() == words[3:].tolist()
    assert out["tail"][1:].tolist() == words[:3].tolist()
    assert out["nak"] == NAK and out["cut"] == b""
    assert out["after_cut"] == host.BoardInfo(1, 4, 64)
    assert out["prog_len"] == 0                          # the cut write never happened
    assert out["error"].code == ErrorCode.BAD_FIELD and out["error"].pc == 0


@pytest.mark.slow  # ≈ 45 s; the default run has the same job through the Verilator pins (SDRAM)
def test_matmul_job_through_uart():
    """A 3×8 · 8×6 int8 matmul on P = 2, L = 4 (rows 2+1 over the PEs, 2 column tiles, the
    last one half used): program + operands over the UART, start, poll, read back C."""
    P, L = 2, 4
    cfg = AccelConfig(pes=P, lanes=L, **SMALL)
    rng = np.random.default_rng(2024)
    a = rng.integers(-128, 128, (3, 8))
    b = rng.integers(-128, 128, (8, 6))
    a[0, :] = -128                                       # the extreme products
    b[:, 0] = -128
    job = matmul_program(a, b, config=cfg)
    top = _top(pes=P, lanes=L, mem_depth=128)
    assert (top.divisor, top.pes, top.lanes, top.mem_depth) == (4, P, L, 128)
    assert top.bridge.info_word == INFO_MAGIC | 1 << 8 | L << 16 | 7 << 24
    out, cycles = host.run_on_sim(top, host.run_job_ops(job, max_polls=20), max_cycles=40_000)
    np.testing.assert_array_equal(out["result"], matmul(a, b))
    assert out["status"] == 2 and out["pc"] == job.prog_len - 1      # halted at the HALT
    assert out["mac_cycles"] == 2 * 2 * 8 and out["instret"] == job.prog_len
    assert out["cycles"] < 1000 and cycles < 25_000


def test_sdram_board_through_uart():
    """BoardTop(memory="sdram") with the behavioural SDRAM (every timing rule checked) on its
    sdram pins: INFO reports the chip's size, a memory round trip across a row and bank
    boundary over the UART (the whole matmul job with SDRAM runs on Verilator:
    tests/test_board_verilator.py)."""
    from tb.sdram_model import SdramModel
    top = BoardTop(clk_hz=CLK, baud=BAUD, memory="sdram", pes=1, lanes=4,
                   sdram={"rows": 16, "cols": 16}, **SMALL)
    assert top.memory_kind == "sdram" and top.mem_depth == 8 * 4 * 16
    model = SdramModel(top.memory, pins=top.sdram)
    words = np.random.default_rng(3).integers(0, 256, (4, 4), dtype=np.uint8)

    def ops():
        out = {"info": (yield host.info())}
        yield from host.write_words_ops(30, words)       # rows of 8 words: bank 3 → bank 0
        out["back"] = yield from host.read_words_ops(30, 4, 4)
        return out

    out, _ = host.run_on_sim(top, ops(), max_cycles=20_000, background=[model.process])
    assert out["info"] == host.BoardInfo(1, 4, 512)
    assert out["back"].tolist() == words.tolist()
    want = [int.from_bytes(bytes(w), "little") for w in words]
    assert model.words(30, 4) == want and model.refreshes > 30
    with pytest.raises(TypeError, match="no mem_depth"):
        BoardTop(clk_hz=CLK, baud=BAUD, memory="sdram", mem_depth=256, pes=1, lanes=4)
    with pytest.raises(ValueError, match="memory must be"):
        BoardTop(clk_hz=CLK, baud=BAUD, memory="dram", mem_depth=256, pes=1, lanes=4)


# ------------------------------------------------------------------ python -m hw.build
@pytest.mark.parametrize("args, message", [
    (["--board", "de10"], "argument --board: invalid choice"),
    (["--board", "ulx3s-85f", "--pes", "0"], "--pes must be at least 1, not 0"),
    (["--board", "icebreaker", "--lanes", "6"], "--lanes must be one of 4, 8, 16, 32; not 6"),
    (["--board", "icebreaker", "--mem-depth", "1000"], "--mem-depth must be a power of two ≥ 16, not 1000"),
    (["--board", "icebreaker", "--baud", "6000000"], "too fast"),
    (["--board", "ulx3s-85f", "--amem-depth", "x"], "--amem-depth must be an integer, not 'x'"),
    (["--board", "icebreaker", "--memory", "sdram"], "the icebreaker has no SDRAM"),
    (["--board", "ulx3s-85f", "--memory", "sdram", "--mem-depth", "4096"], "does not apply"),
    (["--board", "ulx3s-85f", "--memory", "flash"], "argument --memory: invalid choice"),
    (["--board", "ulx3s-85f", "--timeout", "-5"], "--timeout must be a whole number of seconds ≥ 0 (0: no limit), not -5"),
    (["--board", "ulx3s-85f", "--timeout", "1h"], "--timeout must be an integer, not '1h'"),
])
def test_build_bad_arguments_exit_2(args, message, capsys):
    from hw.build import main
    try:
        code = main(args)
    except SystemExit as e:          # argparse's own errors
        code = e.code
    assert code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert out == ""


def test_build_timeout_kills_the_tools(tmp_path):
    # The build script's tools run in their own process group: a timeout stops them all.
    from hw.synth import run_tool
    pid_file = tmp_path / "child.pid"
    t0 = time.monotonic()
    code = run_tool(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path, None,
                    tmp_path / "build.log", 1)
    assert code is None and time.monotonic() - t0 < 30
    assert _gone(int(pid_file.read_text())), "the build script's child survived the timeout"
    assert run_tool(["sh", "-c", "exit 3"], tmp_path, None, tmp_path / "build.log", 10) == 3


def _gone(pid, seconds=5):
    """The process ``pid`` has ended (or is a zombie nobody reaps, as in containers)."""
    for _ in range(int(seconds / 0.05)):
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_build_sigterm_kills_the_tools(tmp_path):
    # `kill` of a running `python -m hw.build` must not leave nextpnr running on its own.
    pid_file = tmp_path / "child.pid"
    code = ("from hw.synth import run_tool; "
            f"run_tool(['sh', '-c', 'sleep 60 & echo $! > {pid_file}; wait'], r'{tmp_path}', None, "
            f"r'{tmp_path}/build.log')")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    for _ in range(400):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + 15
    assert _gone(int(pid_file.read_text())), "the build script's child survived SIGTERM"


def test_build_partial_report(tmp_path):
    # nextpnr finished, the packer was cut off: the report is written, without a bitstream.
    from hw.build import _write_report
    (tmp_path / "stat.json").write_text(json.dumps({"modules": {"\\top": {"num_cells_by_type": {
        "LUT4": 100, "CCU2C": 10, "TRELLIS_DPR16X4": 2, "TRELLIS_FF": 50, "MULT18X18D": 3,
        "DP16KD": 4}}}}))
    (tmp_path / "nextpnr_report.json").write_text(json.dumps({
        "fmax": {"$glbnet$clk": {"achieved": 58.04, "constraint": 25.0}},
        "utilization": {"TRELLIS_COMB": {"used": 130, "available": 167280}}}))
    (tmp_path / "top.bit").write_bytes(b"stale")
    info = {"board": "ulx3s-85f", "device": "LFE5U-85F-CABGA381", "clock_mhz": 25.0, "pll": None,
            "params": {"pes": 1}}
    r = _write_report(tmp_path, "ecp5", info, 25.0, time.monotonic(), complete=False)
    assert json.loads((tmp_path / "report.json").read_text()) == r
    assert r["complete"] is False and r["bitstream"] is None
    assert (r["fmax_mhz"], r["timing_met"], r["luts"], r["ffs"], r["dsps"], r["brams"]) == \
        (58.04, True, 100 + 20 + 8, 50, 3, 4)
    assert r["critical_path"] == "no clocked path"


# ------------------------------------------------------------------ real builds (slow)
def _build(board, *args):
    res = subprocess.run([sys.executable, "-m", "hw.build", "--board", board, *args], cwd=REPO,
                         capture_output=True, text=True, timeout=7200)
    assert res.returncode == 0, res.stderr
    report = Path(res.stdout.strip().splitlines()[-1])
    data = json.loads(report.read_text())
    assert {"fmax_mhz", "luts", "ffs", "dsps", "brams", "critical_path"} <= set(data)
    assert Path(data["bitstream"]).stat().st_size > 0
    return data


@pytest.mark.slow  # ≈ 2 min warm on the 2-core machine
@pytest.mark.xfail(strict=True, reason="does not fit the UP5K: 18,771 LUT4 of 5,280; the "
                   "controller and the DMA engine alone take 6,684 (benchmarks/ice40_fit.py, "
                   "docs/board.md)")
def test_build_icebreaker():
    r = _build("icebreaker")
    p = r["params"]
    assert r["dsps"] == p["pes"] * p["lanes"] + 2 * p["pes"]        # the PE multipliers only
    assert r["utilization"].get("ICESTORM_SPRAM") == 4              # 128 KiB of ext memory
    assert r["fmax_mhz"] >= r["clock_mhz"]


@pytest.mark.slow  # ≈ 2 min warm
def test_build_icebreaker_reports_what_does_not_fit(capsys):
    from hw.build import main
    assert main(["--board", "icebreaker"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit the iCE40UP5K" in err[0] and "ICESTORM_LC" in err[0]


@pytest.mark.slow  # ≈ 5 min warm
def test_build_ulx3s_p1():
    r = _build("ulx3s-85f", "--pes", "1", "--lanes", "16", "--out-dir", "build/board/test_ulx3s_p1")
    assert r["cells"]["MULT18X18D"] >= 16 + 2
    assert r["fmax_mhz"] >= r["clock_mhz"] and r["bitstream"].endswith(".bit")
