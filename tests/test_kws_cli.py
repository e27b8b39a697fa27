"""``python -m sim.kws``: JSON outputs, and one clear error line plus exit 2 for bad input."""
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from sim.kws import main
from sim.paths import labels, shipped_clips_dir

CLIPS = sorted(shipped_clips_dir().glob("*/*.wav"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sim.kws", *map(str, args)], capture_output=True, text=True)


def test_predict_json(capsys):
    main(["predict", *map(str, CLIPS[:3]), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 3
    for o, clip in zip(out, CLIPS):
        assert o["file"] == str(clip) and o["label"] in labels() and len(o["logits"]) == 12
        assert o["label"] == labels()[int(np.argmax(o["logits"]))]


def test_eval_json_on_shipped_clips(capsys):
    main(["eval", str(shipped_clips_dir()), "--json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == len(CLIPS) and 0 <= out["accuracy"] <= 1
    assert set(out["per_class"]) == set(labels())
    main(["eval", str(shipped_clips_dir()), "--json", "--no-progress", "--limit", "5", "--float"])
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 5 and out["backend"] == "float"


def _wav(path, rate=16000, channels=1, width=2, n=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * (n * channels * width // 2))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: _wav(d / "r.wav", rate=8000), "8000"),
    (lambda d: _wav(d / "c.wav", channels=2), "channel"),
    (lambda d: _wav(d / "s.wav", n=15999), "15999"),
    (lambda d: (d / "g.wav").write_bytes(b"garbage" * 10) and d / "g.wav", "RIFF"),
    (lambda d: d / "missing.wav", "missing.wav"),
])
def test_bad_wav_is_a_clear_error(tmp_path, make, message):
    res = run_cli("predict", make(tmp_path))
    assert res.returncode == 2
    assert res.stderr.startswith("error:") and message in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_model_and_folder_are_clear_errors(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"PK\x03\x04 truncated")
    for args, message in [(["predict", CLIPS[0], "--model", tmp_path / "none.npz"], "does not exist"),
                          (["predict", CLIPS[0], "--model", tmp_path / "m.npz"], "m.npz"),
                          (["eval", tmp_path / "nodir"], "nodir"),
                          (["predict", CLIPS[0], "--backend", "fpga"], "unknown backend"),
                          (["eval", shipped_clips_dir(), "--limit", "0"], "--limit")]:
        res = run_cli(*args)
        assert res.returncode == 2, args
        assert res.stderr.startswith("error:") and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_unknown_label_folder(tmp_path):
    shutil.copytree(shipped_clips_dir() / "yes", tmp_path / "maybe")
    res = run_cli("eval", tmp_path)
    assert res.returncode == 2 and "maybe" in res.stderr


def test_predict_interp_matches_golden_with_figures(capsys):
    """The compiled program on the ISA interpreter gives the golden model's logits; both report
    cycles, MACs, utilization and a per-layer breakdown that adds up to the cycles."""
    main(["predict", str(CLIPS[1]), "--json"])
    gold = json.loads(capsys.readouterr().out)[0]
    main(["predict", str(CLIPS[1]), "--backend", "interp", "--json"])
    out = json.loads(capsys.readouterr().out)[0]
    assert out["logits_int"] == gold["logits_int"] and out["label"] == gold["label"]
    for o in (gold, out):
        assert {"file", "label", "logits", "cycles", "mac_ops", "mac_utilization",
                "layer_cycles"} <= set(o)
        assert o["cycles"] == sum(o["layer_cycles"].values()) > 0
        assert list(o["layer_cycles"])[:2] == ["embed", "layer0"] and "head" in o["layer_cycles"]
        assert 0 < o["mac_utilization"] < 1 and o["pes"] == 8 and o["lanes"] == 16
    assert out["cycles_source"] == "cost model"
    main(["predict", str(CLIPS[1]), "--backend", "interp", "--pes", "4"])
    text = capsys.readouterr().out
    assert "P=4 L=16" in text and "per layer" in text and "layer11" in text


def test_eval_interp_summary(capsys):
    main(["eval", str(shipped_clips_dir()), "--backend", "interp", "--limit", "2", "--json",
          "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["backend"] == "interp"
    assert out["cycles_mean"] > 0 and 0 < out["mac_utilization_mean"] < 1
    assert set(out["layer_cycles_mean"]) >= {"embed", "layer0", "head"}


def test_accelerator_that_cannot_hold_the_model_is_a_clear_error():
    res = run_cli("predict", CLIPS[0], "--backend", "interp", "--pes", "1")
    assert res.returncode == 2 and res.stderr.startswith("error:") and "MEM needs" in res.stderr
    assert "Traceback" not in res.stderr


def test_delta_threshold_zero_equals_dense_and_reports_macs(capsys):
    main(["predict", *map(str, CLIPS[:2]), "--json"])
    dense = json.loads(capsys.readouterr().out)
    main(["predict", *map(str, CLIPS[:2]), "--json", "--delta-threshold", "0"])
    delta = json.loads(capsys.readouterr().out)
    for d, o in zip(dense, delta):
        assert o["logits_int"] == d["logits_int"]
        assert 0 < o["macs_executed"] < o["macs_dense"]
    main(["eval", str(shipped_clips_dir()), "--json", "--no-progress", "--limit", "3",
          "--delta-threshold", "recommended"])
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["macs_skipped"] < 1 and out["macs_executed"] < out["macs_dense"]
    main(["eval", str(shipped_clips_dir()), "--json", "--no-progress", "--limit", "3",
          "--delta-threshold", "qkv=255,ffn1=4"])
    out = json.loads(capsys.readouterr().out)
    assert out["delta_threshold"] == {"qkv": 255, "ffn1": 4}


def test_delta_threshold_on_the_compiled_program(capsys):
    """interp: DMATMUL at qkv/wo/ffn1/ffn2, logits equal golden kwt_delta, fewer cycles than
    the dense program at θ = 16 (scores/pv stay dense and are reported)."""
    args = ["predict", str(CLIPS[0]), "--json", "--backend", "interp", "--amem-depth", "16384"]
    main(args)
    dense = json.loads(capsys.readouterr().out)[0]
    main(args + ["--delta-threshold", "16"])
    o = json.loads(capsys.readouterr().out)[0]
    assert o["golden_match"] and o["delta_sites_dense"] == ["pv", "scores"]
    assert o["delta_threshold"] == {"qkv": 16, "wo": 16, "ffn1": 16, "ffn2": 16}
    assert 0 < o["cycles"] < dense["cycles"] and o["macs_executed"] < o["macs_dense"]


@pytest.mark.parametrize("args, message", [
    (["--delta-threshold", "300"], "bad --delta-threshold"),
    (["--delta-threshold", "nope=3"], "unknown delta sites"),
    (["--delta-threshold", "x"], "bad --delta-threshold"),
    (["--delta-threshold", "4", "--backend", "verilator"], "--amem-depth 16384"),
    (["--delta-threshold", "embed=4", "--backend", "interp"], "names no site the accelerator"),
    (["--delta-threshold", "4", "--float"], "not to --float"),
])
def test_bad_delta_threshold_is_a_clear_error(args, message):
    r = run_cli("predict", CLIPS[0], *args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_waves_need_a_hardware_backend():
    res = run_cli("predict", CLIPS[0], "--waves")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == \
        "error: --waves needs a hardware backend (amaranth or verilator)"


@pytest.mark.slow
def test_waves_one_file_per_clip_verilator(tmp_path):
    """A 1-layer KWT-1 at P = 4 on Verilator: `--waves DIR` writes one non-empty wave file per
    clip, named after it, and the run's JSON names it."""
    from sim.backends import hardware_status
    from sim.kws import DEFAULT_MODEL
    ok, why = hardware_status()
    if not ok:
        pytest.skip(why)
    from sim.qmodel import load_qmodel, save_qmodel
    model = load_qmodel(DEFAULT_MODEL)
    small = type(model)(**{**model.__dict__, "layers": model.layers[:1],
                           "config": {**model.config, "num_layers": 1}})
    save_qmodel(small, tmp_path / "one_layer.npz")
    res = run_cli("predict", *CLIPS[:2], "--backend", "verilator", "--pes", "4", "--json",
                  "--model", tmp_path / "one_layer.npz", "--waves", tmp_path / "w")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    files = sorted((tmp_path / "w").iterdir())
    assert [Path(o["waves"]) for o in out] == files and len(files) == 2
    for i, (o, clip) in enumerate(zip(out, CLIPS)):
        assert Path(o["waves"]).stem == f"kws_{i}_{clip.stem}"
        assert Path(o["waves"]).stat().st_size > 1000
