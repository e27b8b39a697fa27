"""The int8 model file: round trip, and a clear ModelError for every kind of damage."""
import json
import zipfile

import numpy as np
import pytest

from sim.errors import ModelError
from sim.kws import DEFAULT_MODEL
from sim.qmodel import load_qmodel, save_qmodel


@pytest.fixture(scope="module")
def model():
    return load_qmodel(DEFAULT_MODEL)


def test_shipped_model_loads(model):
    assert model.config["dim"] == 64 and model.config["num_layers"] == 12 and model.config["heads"] == 1
    assert model.layers[0].wqkv.shape == (192, 64) and model.embed_c0.shape == (99, 64)
    assert model.layers[0].wqkv.min() >= -127 and model.layers[0].wqkv.max() <= 127


def test_round_trip(model, tmp_path):
    p = save_qmodel(model, tmp_path / "m.npz")
    m2 = load_qmodel(p)
    for a, b in zip(model.layers, m2.layers):
        np.testing.assert_array_equal(a.wqkv, b.wqkv)
        np.testing.assert_array_equal(a.ln2["G"], b.ln2["G"])
        assert a.c_e == b.c_e
    assert not list(tmp_path.glob("*.tmp"))


def _rewrite(src, dst, edit):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda a: a.pop("layers.3.wo"), "lacks array"),
    (lambda a: a.__setitem__("layers.0.gelu", np.zeros(255, np.int16)), "shape"),
    (lambda a: a.__setitem__("layers.0.wqkv", np.full((192, 64), 300, np.int16)), "outside"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps({"format": "other", "version": 1}))), "format"),
    (lambda a: a.__setitem__("meta", np.array("{not json")), "meta"),
    (lambda a: a.__setitem__("s_in", -np.ones(40)), "scales"),
])
def test_damaged_files_raise_model_error(tmp_path, damage, message):
    p = _rewrite(DEFAULT_MODEL, tmp_path / "bad.npz", damage)
    with pytest.raises(ModelError, match=message):
        load_qmodel(p)


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_qmodel(tmp_path / "none.npz")
    data = DEFAULT_MODEL.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_qmodel(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 1000)
    with pytest.raises(ModelError, match="zip"):
        load_qmodel(tmp_path / "junk.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ModelError):
        load_qmodel(tmp_path / "empty.npz")
