# amaranth: UnusedElaboratable=no
"""``python -m hw.generate``: one Verilog file for the whole accelerator, checked parameters,
lint-clean output."""
import re
import subprocess
import sys

import pytest

from hw import generate as gen
from hw.accelerator import Accelerator
from tb.runner import lint

SMALL = ["--amem-depth", "64", "--cmem-depth", "64", "--bbuf-depth", "64", "--pbuf-depth", "4",
         "--imem-depth", "16"]


def _ports(text, name):
    """Port name → width from the emitted module header and declarations."""
    body = text[text.index(f"module {name}("):]
    body = body[:body.index("endmodule")]
    ports = {}
    for m in re.finditer(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", body, re.M):
        ports[m.group(3)] = (m.group(1), int(m.group(2)) + 1 if m.group(2) else 1)
    return ports


@pytest.mark.parametrize("pes, lanes", [(1, 4), (2, 4), pytest.param(3, 8, marks=pytest.mark.slow),
                                        pytest.param(1, 32, marks=pytest.mark.slow)])
def test_emits_small_and_lints(tmp_path, capsys, pes, lanes):
    out = tmp_path / "sub" / "acc.v"
    assert gen.main(["--pes", str(pes), "--lanes", str(lanes), *SMALL, "--name", "acc",
                     "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out)
    text = out.read_text()
    ports = _ports(text, "acc")
    L = lanes
    assert ports == {
        "clk": ("input", 1), "rst": ("input", 1),
        "bus__cyc": ("input", 1), "bus__stb": ("input", 1), "bus__we": ("input", 1),
        "bus__adr": ("input", 8), "bus__dat_w": ("input", 32),
        "bus__dat_r": ("output", 32), "bus__ack": ("output", 1),
        "mem__cmd__valid": ("output", 1), "mem__cmd__ready": ("input", 1),
        "mem__cmd__payload": ("output", 33 + 9 * L),
        "mem__rsp__valid": ("input", 1), "mem__rsp__ready": ("output", 1),
        "mem__rsp__payload": ("input", 8 * L),
    }
    assert not list(out.parent.glob("*.tmp"))
    lint(out, "acc")


@pytest.mark.slow  # ≈ 95 s; the default run builds this configuration with Verilator anyway
def test_emits_p8_l16_default_and_lints(tmp_path, capsys):
    """The KWT-1 configuration with default depths (``make demo``'s command)."""
    out = tmp_path / "accel.v"
    assert gen.main(["--pes", "8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert "module accel_p8_l16(" in out.read_text()
    lint(out, "accel_p8_l16")


@pytest.mark.parametrize("args, message", [
    (["--pes", "0"], "--pes must be at least 1, not 0"),
    (["--pes", "65"], "--pes must be at most 64"),
    (["--pes", "two"], "--pes must be an integer"),
    (["--pes", "2", "--lanes", "12"], "--lanes must be one of 4, 8, 16, 32"),
    (["--pes", "2", "--amem-depth", "1000"], "--amem-depth must be a power of two"),
    (["--pes", "2", "--lanes", "32", "--amem-depth", "32"], "--amem-depth must be at least 64"),
    (["--pes", "2", "--bbuf-depth", "131072"], "--bbuf-depth must be at most 65536"),
    (["--pes", "2", "--cmem-depth", "-4"], "--cmem-depth must be at least"),
    (["--pes", "2", "--imem-depth", "1"], "--imem-depth must be at least 2"),
    (["--pes", "2", "--pbuf-depth", "3"], "--pbuf-depth must be a power of two"),
    (["--pes", "2", "--name", "9bad"], "--name must be a Verilog identifier"),
    ([], "required: --pes"),
    (["--pes", "2", "--frobnicate"], "unrecognized arguments"),
])
def test_bad_parameters_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "x.v"
    with pytest.raises(SystemExit) if not args or "--frobnicate" in args else _noop():
        code = gen.main([*args, "--out", str(out)] if args else [])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_command_line_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "hw.generate", "--pes", "3", "--lanes", "7"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --lanes must be one of 4, 8, 16, 32; not 7"
    res = subprocess.run([sys.executable, "-m", "hw.generate", "--help"], capture_output=True,
                         text=True)
    assert res.returncode == 0
    for opt in ("--pes", "--lanes", "--amem-depth", "--cmem-depth", "--bbuf-depth",
                "--pbuf-depth", "--imem-depth", "--name", "--out"):
        assert opt in res.stdout


def test_atomic_write(tmp_path, monkeypatch, capsys):
    """A failing emission leaves the previous file untouched and no temporary behind."""
    out = tmp_path / "acc.v"
    out.write_text("previous")

    def boom(*a, **k):
        raise OSError("disk full")
    import amaranth.back.verilog
    monkeypatch.setattr(amaranth.back.verilog, "convert", boom)
    assert gen.main(["--pes", "1", "--lanes", "4", *SMALL, "--out", str(out)]) == 2
    assert "error: disk full" in capsys.readouterr().err
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["acc.v"]


def test_accelerator_constructor_checks():
    a = Accelerator(pes=3, lanes=8, amem_depth=256, cmem_depth=128, bbuf_depth=512,
                    pbuf_depth=8, imem_depth=32)
    assert (a.pes, a.lanes, a.amem_depth, a.cmem_depth, a.bbuf_depth, a.pbuf_depth,
            a.imem_depth) == (3, 8, 256, 128, 512, 8, 32)
    assert a.config_word == 3 | 8 << 8 | 8 << 16 | 9 << 24
    with pytest.raises(AttributeError):
        a.pes = 4
    with pytest.raises(TypeError):
        Accelerator(3)
    with pytest.raises(TypeError, match="pes must be an integer"):
        Accelerator(pes=True)
    with pytest.raises(ValueError, match="lanes must be one of"):
        Accelerator(pes=2, lanes=2)
    with pytest.raises(ValueError, match="imem_depth must be a power of two"):
        Accelerator(pes=2, imem_depth=100)
