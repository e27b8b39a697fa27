"""``python -m sim.kws``: JSON outputs, and one clear error line plus exit 2 for bad input."""
import json
import shutil
import subprocess
import sys
import wave

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
