"""The NumPy MFCC front end, against first principles and against the TFLite model's own MFCC."""

import numpy as np
import pytest

from sim import paths
from sim.errors import InputError
from sim.mfcc import dct_matrix, hann_window, mel_weight_matrix, mfcc
from sim.wav import list_dataset, read_wav

RTOL = 1e-4  # relative to the largest |value| of the reference


def shipped_audio() -> np.ndarray:
    return np.stack([read_wav(p) for p, _ in list_dataset(paths.shipped_clips_dir())])


def sample_shared_clips(n: int, seed: int) -> list:
    """A fixed random sample of the shared clips, or none when shared/ is absent."""
    folder = paths.speech_commands_dir()
    if not folder.is_dir():
        return []
    items = list_dataset(folder)
    pick = np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False)
    return [items[i][0] for i in sorted(pick)]


@pytest.fixture(scope="module")
def tflite_model():
    pytest.importorskip("ai_edge_litert")
    if not paths.kwt1_tflite().is_file():
        pytest.skip(f"KWT-1 model not found at {paths.kwt1_tflite()} (shared/ absent)")
    from sim.tflite_import import TfliteKwt

    return TfliteKwt(keep_intermediates=True)


def test_shapes_and_batching():
    audio = shipped_audio()
    batch = mfcc(audio)
    assert batch.shape == (len(audio), 98, 40) and batch.dtype == np.float64
    for clip, feats in zip(audio, batch):
        np.testing.assert_allclose(mfcc(clip), feats, rtol=0, atol=1e-9)


def test_window_and_dct_definitions():
    w = hann_window()
    assert w[0] == 0 and w[240] == 1 and np.allclose(w[1:], w[:0:-1])  # periodic: w[n] = w[480 - n]
    d = dct_matrix()
    # The unnormalised DCT-II has orthogonal rows, of squared norm 2 for k = 0 and 1 otherwise.
    np.testing.assert_allclose(d @ d.T, np.diag([2.0] + [1.0] * 39), atol=1e-12)
    mel = mel_weight_matrix()
    assert mel.shape == (244, 80) and np.all(mel >= 0) and np.all(mel[0] == 0)
    assert np.all(mel.max(axis=0) > 0)  # every band has weight
    assert np.any(mel[-1] > 0)  # bin 243 (7593.75 Hz) still feeds the top band


def test_matches_direct_dft():
    """rfft + slicing equals the textbook windowed DFT magnitude of each frame."""
    audio = shipped_audio()[2].astype(np.float64)
    n = np.arange(480)
    k = np.arange(244)[:, None]
    re, im = np.cos(2 * np.pi * k * n / 512), -np.sin(2 * np.pi * k * n / 512)
    frames = np.stack([audio[160 * t : 160 * t + 480] for t in range(98)]) * hann_window()
    mag = np.hypot(frames @ re.T, frames @ im.T)
    expected = np.log(np.maximum(mag @ mel_weight_matrix(), 1e-12)) @ dct_matrix().T
    np.testing.assert_allclose(mfcc(audio), expected, rtol=0, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize(
    "audio, expected",
    [
        (np.full(16000, np.nan, np.float32), "NaN"),
        (np.where(np.arange(16000) == 7, np.inf, 0.0), "NaN or infinite"),
        (np.zeros(15999, np.float32), "shape"),
        (np.zeros((2, 3, 16000), np.float32), "shape"),
        (np.zeros(16000, np.int16), "dtype int16"),
        ([0.0] * 16000, "numpy array"),
    ],
)
def test_bad_audio_raises_input_error(audio, expected):
    with pytest.raises(InputError, match=expected):
        mfcc(audio)


def test_silence_is_finite():
    feats = mfcc(np.zeros(16000, np.float32))
    assert np.all(np.isfinite(feats))
    # Every band sits at the log floor, so only c0 is non-zero.
    np.testing.assert_allclose(feats[:, 0], 80 * np.log(1e-12) * 2 / np.sqrt(160))
    np.testing.assert_allclose(feats[:, 1:], 0, atol=1e-9)


def test_mel_matrix_equals_model_constant(tflite_model):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_model.path))
    interp.allocate_tensors()
    (mel,) = [
        interp.get_tensor(t["index"]) for t in interp.get_tensor_details()
        if t["name"] == "speech_features/magnitude_rdf_tmel/MatMul_2"
    ]  # fmt: skip
    np.testing.assert_allclose(mel.T, mel_weight_matrix(), rtol=0, atol=1e-6)


def test_matches_tflite_internal_mfcc(tflite_model):
    clips = list(shipped_audio()) + [read_wav(p) for p in sample_shared_clips(8, seed=11)]
    for clip in clips:
        ref = tflite_model.mfcc(clip).astype(np.float64)
        got = mfcc(clip)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < RTOL, f"MFCC relative error {err:.2e}"
