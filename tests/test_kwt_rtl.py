"""Compiled transformer programs on the RTL, bit-exact with the golden model (fixed seeds).

Default suite (Verilator, P = 8, L = 16, the depths of tests/test_run_matmul.py so that both
share one harness build; every operation on Amaranth at P = 2, L = 4 is in
tests/test_run_ops.py):

* one whole encoder layer with KWT-1's layer-0 weights on the real embedding of a shipped
  clip (``encoder_job``: the whole 99 × 64 output is compared);
* KWT-1 cut to its first two layers (embedding with LOAD_C and ACCUM into AMEM, the int9
  input in int8 parts, layer 0 on every token, layer 1 with its one-row tail and the second
  GELU table, the head), also under ext-memory back-pressure;
* every standalone operation of ``sim.ops`` (softmax, layernorm, attention, mhsa, ffn,
  encoder) on Verilator.

``-m slow``: the whole KWT-1 on Verilator (the hardware's default depths, as sim.kws), and
``python -m sim.kws predict --backend verilator --json`` on a shipped clip.

A mismatch names the first wrong element (row, column, got, expected) and how many differ.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import hw.isa
from sim.backends import VerilatorBackend, hardware_status
from sim.compiler import compile_kwt, encoder_job, section_cycles
from sim.golden import encoder_layer, kwt
from sim.golden.kwt import embed
from sim.kws import DEFAULT_MODEL, HW_DEPTHS
from sim.mfcc import mfcc
from sim.ops import OPS, prepare
from sim.paths import shipped_clips_dir
from sim.program import AccelConfig, interpret
from sim.qmodel import load_qmodel
from sim.wav import list_dataset, read_wav

from .test_compiler import op_inputs

HW_OK, HW_WHY = hardware_status()
if HW_OK and not hasattr(hw.isa.Op, "SOFTMAX"):
    HW_OK, HW_WHY = False, "hw.isa has no transformer instructions yet"
needs_hw = pytest.mark.skipif(not HW_OK, reason=f"hardware top not available: {HW_WHY}")

P8 = AccelConfig(pes=8, lanes=16)                    # = tests/test_run_matmul.py's builds
P8_HW = AccelConfig(pes=8, lanes=16, **HW_DEPTHS)    # the hardware's defaults (sim.kws)


def assert_same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    bad = np.argwhere(got != want)
    if len(bad):
        first = tuple(int(v) for v in bad[0])
        raise AssertionError(f"{what}: {len(bad)} of {got.size} elements differ; first at "
                             f"{first}: got {got[first]}, expected {want[first]}; rows with "
                             f"errors {sorted({int(b[0]) for b in bad})[:20]}")


def run_hw(job, backend):
    """Run a compiled job on ``backend``; also on the ISA interpreter: the instruction count
    must agree. Returns (result, counters)."""
    res = backend.run(job.image, job.program, job.config, prog_base=job.prog_base)
    _, ref = interpret(job.image, job.prog_base, job.prog_len, job.config)
    assert res.counters["INSTRET"] == ref["INSTRET"]
    return job.read(res.ext), res.counters


@pytest.fixture(scope="module")
def kwt1():
    model = load_qmodel(DEFAULT_MODEL)
    path, _ = list_dataset(shipped_clips_dir())[4]
    return model, model.quantize_input(mfcc(read_wav(path)))


def truncated(model, layers):
    return type(model)(**{**model.__dict__, "layers": model.layers[:layers],
                          "config": {**model.config, "num_layers": layers}})


# ---- default suite

@needs_hw
def test_kwt1_encoder_layer0_verilator(kwt1):
    """Layer 0 of KWT-1 on the int8-clipped embedding of a real clip (every token)."""
    model, x = kwt1
    x8 = np.clip(embed(model, x), -128, 127)
    job = encoder_job(x8, model.layers[0], model.config["heads"], config=P8)
    y, counters = run_hw(job, VerilatorBackend())
    assert_same(y, encoder_layer(x8, model.layers[0], model.config["heads"]), "layer 0 output")
    model_cycles = section_cycles(job)[1]["CYCLES"]
    # the cost model is an estimate; a large gap points at a stall the model does not know
    assert abs(counters["CYCLES"] - model_cycles) < 0.1 * model_cycles, \
        (counters["CYCLES"], model_cycles)


@needs_hw
@pytest.mark.parametrize("stall", [0, 60])
def test_kwt1_first_two_layers_verilator(kwt1, stall):
    """Embedding, layer 0 (every token), layer 1 (K/V on every token, the rest on the class
    token; GELU table 1), head: the logits of the cut model equal the golden model's — also
    with the ext memory refusing 60 % of the cycles (back-pressure on every transfer)."""
    model, x = kwt1
    m2 = truncated(model, 2)
    job = compile_kwt(m2, x, config=P8)
    assert job.info["input_parts"] >= 2
    y, _ = run_hw(job, VerilatorBackend(stall=stall, seed=3))
    assert_same(y[0], kwt(m2, x), "logits of KWT-1 cut to 2 layers")


@needs_hw
@pytest.mark.parametrize("name", [*OPS, "mhsa_linear", "encoder_linear"])
def test_op_verilator(name):
    """Each standalone operation (sim.ops quantizes random float inputs) at P = 8, L = 16;
    ``*_linear``: the block with linear attention."""
    prep = prepare(name.removesuffix("_linear"), op_inputs(np.random.default_rng(11))[name],
                   config=P8)
    y, _ = run_hw(prep.job, VerilatorBackend())
    assert_same(y, prep.golden, name)


@pytest.fixture(scope="module")
def kwt1_linear():
    """KWT-1 with linear attention in layers 1 and 11, calibrated on the shipped clips."""
    from sim.paths import repo_root
    from sim.quantize import calibrate, quantize_kwt, with_linear_layers
    from sim.tflite_import import load_float_npz
    w = with_linear_layers(load_float_npz(repo_root() / "data" / "kwt1_float.npz"), [1, 11])
    clips = list_dataset(shipped_clips_dir())
    feats = np.stack([mfcc(read_wav(p)) for p, _ in clips])
    model = quantize_kwt(w, calibrate(w, [feats]))
    return model, model.quantize_input(feats[4])


@needs_hw
def test_kwt1_linear_layer_verilator(kwt1_linear):
    """Embedding, layer 0 (softmax), layer 1 (linear attention), head at P = 8, L = 16."""
    model, x = kwt1_linear
    m2 = truncated(model, 2)
    assert m2.layers[1].linear and not m2.layers[0].linear
    job = compile_kwt(m2, x, config=P8)
    y, _ = run_hw(job, VerilatorBackend())
    assert_same(y[0], kwt(m2, x), "logits of KWT-1 (layer 1 linear) cut to 2 layers")


# ---- slow: the whole model

@needs_hw
@pytest.mark.slow
def test_kwt1_linear_whole_model_verilator(kwt1_linear):
    """The whole KWT-1 with layers 1 and 11 in linear attention, bit-exact on Verilator."""
    model, x = kwt1_linear
    job = compile_kwt(model, x, config=P8_HW)
    y, _ = run_hw(job, VerilatorBackend())
    assert_same(y[0], kwt(model, x), "KWT-1 (linear layers 1, 11) logits")


@needs_hw
@pytest.mark.slow
def test_kwt1_whole_model_verilator(kwt1):
    model, x = kwt1
    job = compile_kwt(model, x, config=P8_HW)
    y, counters = run_hw(job, VerilatorBackend())
    assert_same(y[0], kwt(model, x), "KWT-1 logits")
    model_cycles = section_cycles(job)[1]["CYCLES"]
    assert abs(counters["CYCLES"] - model_cycles) < 0.1 * model_cycles, \
        (counters["CYCLES"], model_cycles)


@needs_hw
@pytest.mark.slow
def test_kws_predict_verilator_cli():
    path, label = list_dataset(shipped_clips_dir())[2]
    res = subprocess.run([sys.executable, "-m", "sim.kws", "predict", str(path), "--backend",
                          "verilator", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out) == 1
    r = out[0]
    model = load_qmodel(DEFAULT_MODEL)
    x = model.quantize_input(mfcc(read_wav(path)))
    assert_same(r["logits_int"], kwt(model, x), "sim.kws logits")
    assert r["cycles_source"] == "verilator CYCLES counter" and r["cycles"] > 0
    assert r["label"] == label
    assert r["mac_utilization"] == pytest.approx(r["mac_ops"] / (r["cycles"] * 8 * 16))
