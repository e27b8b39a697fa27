"""compile_kwt with Delta KWT thresholds (DMATMUL at the Q/K/V, Wo, W1 and W2 inputs): the
program's logits equal sim.golden.delta_kwt.kwt_delta bit for bit on the ISA interpreter, the
program is well ordered, unsupported sites and too small an AMEM are refused clearly."""
import numpy as np
import pytest

from sim.compiler import check_program, compile_kwt
from sim.errors import InputError
from sim.golden.delta_kwt import kwt_delta
from sim.program import AccelConfig, Op
from tests.test_compiler import random_model, run

HW4 = ("qkv", "wo", "ffn1", "ffn2")


@pytest.mark.parametrize("P, L, theta", [
    (2, 4, {"qkv": 3}), (2, 4, {"wo": 2}), (2, 4, {"ffn1": 2}), (2, 4, {"ffn2": 2}),
    (2, 4, 5), (3, 8, 0), (8, 16, 12),
])
def test_delta_kwt_program_bit_exact(P, L, theta):
    model, x = random_model(32, 2, 64, tokens=20)
    cfg = AccelConfig(pes=P, lanes=L, amem_depth=8192)
    job = compile_kwt(model, x, config=cfg, delta=theta)
    th = theta if isinstance(theta, dict) else dict.fromkeys(HW4, theta)
    want, _ = kwt_delta(model, x, th)
    y, counters = run(job)
    np.testing.assert_array_equal(y[0], want)
    assert check_program(job.program, cfg) == []
    np.testing.assert_array_equal(run(job, "late")[0][0], want)
    n_dm = sum(i["op"] == Op.DMATMUL for i in job.program.instrs)
    assert n_dm == 2 * len(th)          # one per site and layer
    assert job.info["delta"] is not None


def test_delta_cycles_fall_with_theta():
    model, x = random_model(32, 2, 64, tokens=40)
    cfg = AccelConfig(pes=2, lanes=4, amem_depth=8192)
    cyc = [run(compile_kwt(model, x, config=cfg, delta=t))[1]["MAC_CYCLES"] for t in (0, 8, 64)]
    assert cyc[0] > cyc[1] > cyc[2]


def test_delta_errors():
    model, x = random_model(32, 2, 64, tokens=20)
    cfg = AccelConfig(pes=2, lanes=4, amem_depth=8192)
    with pytest.raises(InputError, match="not supported on the accelerator"):
        compile_kwt(model, x, config=cfg, delta={"scores": 3})
    with pytest.raises(InputError, match="--amem-depth"):
        compile_kwt(model, x, config=AccelConfig(pes=2, lanes=4, amem_depth=2048), delta=3)
    with pytest.raises(ValueError, match="0..255"):
        compile_kwt(model, x, config=cfg, delta=300)


@pytest.mark.slow
def test_kwt1_delta_whole_model_verilator():
    """KWT-1 on a real clip with DMATMUL at qkv, wo, ffn1, ffn2 (θ = 8) through Verilator at
    P = 8, L = 16, AMEM 16384: logits equal kwt_delta, CYCLES below the dense program's."""
    from sim.backends import VerilatorBackend, hardware_status
    from sim.compiler import run_compiled
    from sim.kws import DEFAULT_MODEL, HW_DEPTHS
    from sim.mfcc import mfcc
    from sim.paths import shipped_clips_dir
    from sim.qmodel import load_qmodel
    from sim.wav import list_dataset, read_wav
    ok, why = hardware_status()
    if not ok:
        pytest.skip(why)
    model = load_qmodel(DEFAULT_MODEL)
    path, _ = list_dataset(shipped_clips_dir())[4]
    x = model.quantize_input(mfcc(read_wav(path)))
    cfg = AccelConfig(pes=8, lanes=16, **{**HW_DEPTHS, "amem_depth": 16384})
    th = dict.fromkeys(HW4, 8)
    y, counters, _ = run_compiled(compile_kwt(model, x, config=cfg, delta=th), VerilatorBackend())
    np.testing.assert_array_equal(y[0], kwt_delta(model, x, th)[0])
    _, dense, _ = run_compiled(compile_kwt(model, x, config=cfg), "interp")
    assert counters["CYCLES"] < dense["CYCLES"]


@pytest.mark.slow
def test_small_delta_kwt_amaranth():
    """A 1-layer dim-32 KWT on 12 tokens with DMATMUL at every supported site (θ = 8) on the
    Amaranth RTL at P = 2, L = 4: logits equal kwt_delta (row operations right after a
    DMATMUL, the weight-slice ring, the q|X̂ region)."""
    from sim.backends import AmaranthBackend
    from sim.compiler import run_compiled
    from tests.test_kwt_rtl import truncated
    model, x = random_model(32, 2, 64, tokens=12)
    m1 = truncated(model, 1)
    cfg = AccelConfig(pes=2, lanes=4, amem_depth=4096, cmem_depth=1024, bbuf_depth=1024,
                      pbuf_depth=64, imem_depth=128)
    th = dict.fromkeys(HW4, 8)
    job = compile_kwt(m1, x, config=cfg, delta=th, last_rows1=False)
    y, counters, _ = run_compiled(job, AmaranthBackend())
    np.testing.assert_array_equal(y[0], kwt_delta(m1, x, th)[0])
    _, model_counters, _ = run_compiled(job, "interp")
    assert abs(counters["CYCLES"] - model_counters["CYCLES"]) < 0.01 * counters["CYCLES"]
