"""``python -m sim.run {softmax,layernorm,attention,mhsa,ffn,encoder}``: float npz in, the
compiled program on a backend, dequantized npz out — bit-exact with the golden model on the
interpreter and on amaranth at P×L = 2×4; bad input is one ``error:`` line and exit 2 (fixed seeds)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from sim.backends import hardware_status
from sim.ops import OPS, prepare
from sim.program import AccelConfig
from sim.run import main

from .test_compiler import op_inputs

import hw.isa

HW_OK, HW_WHY = hardware_status()
if HW_OK and not hasattr(hw.isa.Op, "SOFTMAX"):
    HW_OK, HW_WHY = False, "hw.isa has no transformer instructions yet"


def save_npz(path, arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("op", OPS)
def test_cli_op_round_trip(tmp_path, op, capsys):
    arrays = op_inputs(np.random.default_rng(3))[op]
    inp = save_npz(tmp_path / "in.npz", arrays)
    out, stats = tmp_path / "out.npz", tmp_path / "stats.json"
    main([op, "--backend", "golden", "--pes", "3", "--lanes", "8", "--inputs", inp,
          "--out", str(out), "--stats", str(stats)])
    ref = prepare(op, arrays, config=AccelConfig(pes=3, lanes=8))
    with np.load(out) as z:
        assert set(z.files) == {"y", "y_int", "scale", "reference"}
        np.testing.assert_array_equal(z["y_int"], ref.golden)
        np.testing.assert_allclose(z["y"], z["y_int"] * z["scale"])
        np.testing.assert_allclose(z["reference"], ref.reference)
    s = json.loads(stats.read_text())
    assert s["bit_exact_vs_golden"] is True and s["rel_rms_vs_float"] < 0.05
    assert s["cycles"] == s["counters"]["CYCLES"] > 0 and s["cycles_source"] == "cost model"
    assert s["utilization"] == pytest.approx(s["mac_ops"] / (s["cycles"] * 3 * 8))
    assert sum(s["section_cycles"].values()) == s["cycles"]
    assert "bit-exact with the golden model: yes" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz", "stats.json"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sim.run", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_op_errors(tmp_path, capsys):
    ok = save_npz(tmp_path / "ok.npz", op_inputs(np.random.default_rng(4))["layernorm"])
    bad = save_npz(tmp_path / "bad.npz", dict(x=np.ones((3, 4)), gamma=np.ones(4)))
    extra = save_npz(tmp_path / "extra.npz", dict(x=np.ones((3, 4)), gamma=np.ones(4),
                                                  beta=np.ones(4), beta2=np.ones(4)))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    base = ["layernorm", "--pes", "2", "--lanes", "4"]
    for args, message in [
        (base + ["--inputs", bad, "--out", tmp_path / "o.npz"], "lack 'beta'"),
        (base + ["--inputs", extra, "--out", tmp_path / "o.npz"], "beta2"),
        (base + ["--inputs", tmp_path / "none.npz", "--out", tmp_path / "o.npz"], "none.npz"),
        (base + ["--inputs", tmp_path / "junk.npz", "--out", tmp_path / "o.npz"], "junk.npz"),
        (base + ["--inputs", ok, "--out", tmp_path / "o.npy"], ".npz"),
        (base + ["--inputs", ok, "--out", tmp_path / "nodir" / "o.npz"], "nodir"),
        (base + ["--inputs", ok, "--out", tmp_path / "o.npz", "--waves"], "--waves"),
        (["softmax", "--pes", "2", "--lanes", "4", "--inputs",
          save_npz(tmp_path / "wide.npz", dict(x=np.ones((2, 2000)))), "--out",
          tmp_path / "o.npz"], "row unit"),
        (["encoder", "--pes", "1", "--lanes", "4", "--cmem-depth", "16", "--inputs",
          save_npz(tmp_path / "enc.npz", op_inputs(np.random.default_rng(4))["encoder"]),
          "--out", tmp_path / "o.npz"], "CMEM"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(list(map(str, args)))
        err = capsys.readouterr().err
        assert e.value.code == 2, (args, err)
        assert err.startswith("error:") and message in err, err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()
    res = run_cli(*base, "--inputs", bad, "--out", tmp_path / "o.npz")
    assert res.returncode == 2 and res.stderr.startswith("error:")
    assert "Traceback" not in res.stderr


def test_cli_op_help_lists_the_keys():
    res = run_cli("encoder", "--help")
    assert res.returncode == 0
    for key in ("gamma1", "beta2", "w1", "heads", "eps"):
        assert key in res.stdout


@pytest.mark.skipif(not HW_OK, reason=f"hardware top not available: {HW_WHY}")
@pytest.mark.parametrize("op", OPS)
def test_cli_op_on_amaranth(tmp_path, op):
    """Every operation through the CLI on the Amaranth simulator at P×L = 2×4 (small shapes:
    about 1.5 s each for softmax/layernorm/attention, more for the layer blocks)."""
    rng = np.random.default_rng(6)

    def w(*s, sc=1.0):
        return rng.normal(0, sc, s)
    N, D, F = 5, 8, 16
    att = dict(x=w(N, D), wq=w(D, D, sc=D ** -.5), wk=w(D, D, sc=D ** -.5),
               wv=w(D, D, sc=D ** -.5), wo=w(D, D, sc=D ** -.5), bo=w(D, sc=.1), heads=2)
    ff = dict(w1=w(F, D, sc=D ** -.5), b1=w(F, sc=.1), w2=w(D, F, sc=F ** -.5), b2=w(D, sc=.1))
    arrays = {"softmax": dict(x=w(5, 7, sc=3)),
              "layernorm": dict(x=w(5, 6, sc=2), gamma=np.ones(6), beta=np.zeros(6)),
              "attention": dict(q=w(5, 4), k=w(5, 4), v=w(5, 4)),
              "linear_attention": dict(q=w(5, 4), k=w(5, 4), v=w(5, 3)),
              "mhsa": att,
              "ffn": dict(x=w(N, D), **ff),
              "encoder": dict(**att, **ff, gamma1=1 + w(D, sc=.1), beta1=w(D, sc=.1),
                              gamma2=1 + w(D, sc=.1), beta2=w(D, sc=.1))}[op]
    inp = save_npz(tmp_path / "in.npz", arrays)
    stats = tmp_path / "s.json"
    main([op, "--backend", "amaranth", "--pes", "2", "--lanes", "4", "--inputs", inp,
          "--out", str(tmp_path / "o.npz"), "--stats", str(stats)])
    s = json.loads(stats.read_text())
    assert s["bit_exact_vs_golden"] and s["cycles_source"] == "hardware CYCLES counter"
