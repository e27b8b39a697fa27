"""The strict WAV reader and the dataset lister."""

import struct
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.errors import InputError
from sim.paths import LABELS, shipped_clips_dir
from sim.wav import list_dataset, read_wav


def write_wav(path, samples, rate=16000, channels=1, width=2):
    """Write integer samples with the stdlib writer (an independent encoder)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples).astype({1: "u1", 2: "<i2", 3: "u1", 4: "<i4"}[width]).tobytes())
    return path


@pytest.fixture
def good_wav(tmp_path):
    samples = np.random.default_rng(1).integers(-32768, 32768, 16000)
    return write_wav(tmp_path / "good.wav", samples), samples


def test_reads_samples_exactly(good_wav):
    path, samples = good_wav
    audio = read_wav(path)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    np.testing.assert_array_equal(audio, samples.astype(np.float32) / 32768)
    assert audio.min() >= -1.0 and audio.max() < 1.0


def extensible_wav(subformat: int, samples: bytes = bytes(32000)) -> bytes:
    """A WAVE_FORMAT_EXTENSIBLE file (40-byte fmt chunk) whose sub-format GUID starts with ``subformat``."""
    guid = struct.pack("<H", subformat) + bytes.fromhex("000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 16000, 32000, 2, 16, 22, 16, 0x4) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_reads_extensible_pcm(tmp_path):
    samples = np.arange(-8000, 8000, dtype="<i2")
    path = tmp_path / "ext.wav"
    path.write_bytes(extensible_wav(1, samples.tobytes()))
    np.testing.assert_array_equal(read_wav(path), samples / np.float32(32768))


def test_shipped_clips_read_like_stdlib_wave():
    items = list_dataset(shipped_clips_dir())
    assert [label for _, label in items] == sorted(LABELS)  # one clip per label, sorted folders
    for path, _ in items:
        with wave.open(str(path)) as w:
            ref = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
        np.testing.assert_array_equal(read_wav(path), ref.astype(np.float32))


def _patch(raw: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _good_bytes() -> bytes:
    path = shipped_clips_dir() / "yes" / "022cd682_nohash_0.wav"
    return path.read_bytes()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: write_wav(p, np.zeros(16000), rate=8000), "8000 Hz"),
        (lambda p: write_wav(p, np.zeros(32000), channels=2), "2 channels"),
        (lambda p: write_wav(p, np.full(16000, 128), width=1), "8 bits"),
        (lambda p: write_wav(p, np.zeros(48000), width=3), "24 bits"),
        (lambda p: write_wav(p, np.zeros(15999)), "15999 samples"),
        (lambda p: write_wav(p, np.zeros(16001)), "16001 samples"),
        (lambda p: write_wav(p, np.zeros(0)), "0 samples"),
        (lambda p: write_wav(p, np.zeros(16000 * 40)), "far too large"),
        (lambda p: p.write_bytes(extensible_wav(subformat=3)), "0x0003"),
        (lambda p: p.write_bytes(_good_bytes()[:20000]), "truncated"),
        (lambda p: p.write_bytes(_good_bytes()[:30]), "truncated"),
        (lambda p: p.write_bytes(_good_bytes() + b"junk"), "declares"),
        (lambda p: p.write_bytes(np.random.default_rng(2).bytes(32044)), "RIFF/WAVE"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(_good_bytes()[:8] + b"AVI " + _good_bytes()[12:]), "RIFF/WAVE"),
        (lambda p: p.write_bytes(_patch(_good_bytes(), 20, "<H", 3)), "0x0003"),  # IEEE float
        (lambda p: p.write_bytes(_patch(_good_bytes(), 36, "4s", b"LIST")), "no 'data' chunk"),
        (lambda p: p.write_bytes(_patch(_good_bytes(), 12, "4s", b"junk")), "before the 'fmt ' chunk"),
        (lambda p: p.write_bytes(_patch(_good_bytes(), 40, "<I", 40000)), "truncated"),
        (lambda p: p.write_bytes(_patch(_good_bytes(), 32, "<H", 4)), "block align"),
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "not a regular file"),
    ],
)
def test_bad_files_raise_input_error(tmp_path, make, expected):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(InputError) as info:
        read_wav(path)
    message = str(info.value)
    assert expected in message and str(path) in message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 32043), offset=st.integers(0, 80), byte=st.integers(0, 255))
def test_damaged_files_never_crash(tmp_path, cut, offset, byte):
    """Any truncation or header byte change gives either a valid clip or an InputError."""
    raw = bytearray(_good_bytes()[: 32044 - cut])
    if offset < len(raw):
        raw[offset] = byte
    path = tmp_path / "damaged.wav"
    path.write_bytes(bytes(raw))
    try:
        audio = read_wav(path)
    except InputError:
        return
    assert audio.shape == (16000,) and audio.dtype == np.float32


def test_list_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        list_dataset(tmp_path / "missing")
    with pytest.raises(InputError, match="no .wav files"):
        list_dataset(tmp_path)
    (tmp_path / "maybe").mkdir()
    with pytest.raises(InputError, match="unknown label folder 'maybe'"):
        list_dataset(tmp_path)


def test_list_dataset_ignores_top_level_files_and_is_sorted(tmp_path):
    for label, name in [("yes", "b.wav"), ("yes", "a.wav"), ("_silence_", "z.wav")]:
        (tmp_path / label).mkdir(exist_ok=True)
        write_wav(tmp_path / label / name, np.zeros(16000))
    (tmp_path / "README.md").write_text("not a clip")
    (tmp_path / "yes" / "notes.txt").write_text("not a clip")
    items = list_dataset(tmp_path)
    assert [(p.parent.name, p.name, label) for p, label in items] == [
        ("_silence_", "z.wav", "_silence_"),
        ("yes", "a.wav", "yes"),
        ("yes", "b.wav", "yes"),
    ]
