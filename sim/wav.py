"""Strict reader for the model's input format: 1 s of 16 kHz mono 16-bit PCM WAV.

The RIFF container is parsed here rather than with the stdlib ``wave`` module so that every
defect (truncation, a wrong format field, a missing chunk) gets a message naming the file,
what was expected and what was found.
"""

import os
import struct
from pathlib import Path

import numpy as np

from sim.errors import InputError
from sim.paths import LABELS

SAMPLE_RATE = 16000
NUM_SAMPLES = 16000

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_MAX_FILE_BYTES = 1 << 20  # the samples take 32,000 bytes; the rest could only be metadata chunks


def _check_fmt(path: Path, body: bytes) -> None:
    """Check that a ``fmt `` chunk describes integer PCM, mono, 16 kHz, 16 bits."""
    if len(body) < 16:
        raise InputError(f"{path}: corrupt WAV: 'fmt ' chunk has {len(body)} bytes, expected at least 16")
    fmt_tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if fmt_tag == _WAVE_FORMAT_EXTENSIBLE:
        # The real format code is the first two bytes of the sub-format GUID (offset 24).
        if len(body) < 40:
            raise InputError(
                f"{path}: corrupt WAV: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk has {len(body)} bytes, expected 40"
            )
        (fmt_tag,) = struct.unpack_from("<H", body, 24)
    if fmt_tag != _WAVE_FORMAT_PCM:
        raise InputError(f"{path}: WAV sample format code is {fmt_tag:#06x}, expected 0x0001 (integer PCM)")
    if channels != 1:
        raise InputError(f"{path}: WAV has {channels} channels, expected 1 (mono)")
    if rate != SAMPLE_RATE:
        raise InputError(f"{path}: WAV sample rate is {rate} Hz, expected {SAMPLE_RATE} Hz")
    if bits != 16:
        raise InputError(f"{path}: WAV has {bits} bits per sample, expected 16")
    if block_align != 2 or byte_rate != 2 * SAMPLE_RATE:
        raise InputError(
            f"{path}: corrupt WAV: block align {block_align} and byte rate {byte_rate} do not fit "
            f"16-bit mono at {SAMPLE_RATE} Hz (expected 2 and {2 * SAMPLE_RATE})"
        )


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """Read a 1-s 16 kHz mono 16-bit PCM WAV file.

    Parameters
    ----------
    path : str or path-like
        The WAV file.

    Returns
    -------
    numpy.ndarray
        float32, shape (16000,), the samples divided by 32768 (so in [-1, 1)).

    Raises
    ------
    sim.errors.InputError
        If the file is missing or unreadable, is not RIFF/WAVE, has truncated or corrupt
        chunks, or is not integer PCM, mono, 16 kHz, 16-bit with exactly 16000 samples.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise InputError(f"{path}: {what}; expected a WAV file")
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise InputError(f"{path}: {size} bytes is far too large for a 1-s 16 kHz 16-bit clip (about 32 kB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc

    if len(raw) < 12 or raw[0:4] != b"RIFF" or raw[8:12] != b"WAVE":
        found = "an empty file" if not raw else f"a file starting with {raw[:12]!r}"
        raise InputError(f"{path}: not a WAV file: expected a RIFF/WAVE header, found {found}")
    (riff_size,) = struct.unpack_from("<I", raw, 4)
    if riff_size + 8 != len(raw):
        problem = "truncated" if riff_size + 8 > len(raw) else "corrupt"
        raise InputError(
            f"{path}: {problem} WAV: the RIFF header declares {riff_size + 8} bytes, the file has {len(raw)}"
        )

    have_fmt = False
    data = None
    pos = 12
    while pos < len(raw):
        if pos + 8 > len(raw):
            raise InputError(f"{path}: truncated WAV: incomplete chunk header at byte {pos}")
        chunk_id, size = struct.unpack_from("<4sI", raw, pos)
        body = raw[pos + 8 : pos + 8 + size]
        if len(body) != size:
            raise InputError(
                f"{path}: truncated WAV: chunk {chunk_id!r} at byte {pos} declares {size} bytes, "
                f"only {len(body)} remain"
            )
        if chunk_id == b"fmt ":
            if have_fmt:
                raise InputError(f"{path}: corrupt WAV: more than one 'fmt ' chunk")
            _check_fmt(path, body)
            have_fmt = True
        elif chunk_id == b"data":
            if not have_fmt:
                raise InputError(f"{path}: corrupt WAV: 'data' chunk comes before the 'fmt ' chunk")
            if data is not None:
                raise InputError(f"{path}: corrupt WAV: more than one 'data' chunk")
            data = body
        # Chunks are word-aligned: an odd-sized chunk is followed by one pad byte.
        pos += 8 + size + (size & 1)

    if not have_fmt:
        raise InputError(f"{path}: corrupt WAV: no 'fmt ' chunk")
    if data is None:
        raise InputError(f"{path}: corrupt WAV: no 'data' chunk")
    if len(data) % 2:
        raise InputError(f"{path}: corrupt WAV: 'data' chunk has {len(data)} bytes, not a whole number of 16-bit samples")
    n = len(data) // 2
    if n != NUM_SAMPLES:
        raise InputError(
            f"{path}: WAV has {n} samples ({n / SAMPLE_RATE:.3f} s), expected exactly {NUM_SAMPLES} (1 s at 16 kHz)"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def list_dataset(directory: str | os.PathLike) -> list[tuple[Path, str]]:
    """List the clips of a folder laid out like Speech Commands: one subfolder per label.

    Parameters
    ----------
    directory : str or path-like
        A folder whose subfolders are named after labels (a subset of ``sim.paths.LABELS``),
        each holding ``.wav`` files. Files at the top level (README, LICENSE) and hidden entries
        are ignored, as are non-``.wav`` files inside the label folders.

    Returns
    -------
    list of (pathlib.Path, str)
        (clip path, label) pairs sorted by label folder then file name.

    Raises
    ------
    sim.errors.InputError
        If the folder does not exist, has a subfolder that is not a known label, or holds no
        ``.wav`` file at all.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a folder; expected a folder with one subfolder per label")
    items = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in LABELS:
            raise InputError(
                f"{sub}: unknown label folder {sub.name!r}; expected one of {', '.join(LABELS)}"
            )
        clips = sorted(p for p in sub.iterdir() if p.suffix.lower() == ".wav" and not p.name.startswith("."))
        items.extend((p, sub.name) for p in clips)
    if not items:
        raise InputError(f"{directory}: no .wav files found in label subfolders")
    return items
