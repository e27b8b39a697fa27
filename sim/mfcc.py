"""NumPy MFCC front end, identical in definition to the KWT-1 model's ``mfcc_tf`` features.

The pipeline, as the TFLite graph computes it (constants checked against the model's tensors):

1. 98 frames of 480 samples, hop 160, no padding (``(16000 - 480) // 160 + 1``);
2. each frame times a *periodic* Hann window ``0.5 - 0.5 cos(2 pi n / 480)``;
3. the 512-point DFT (frame zero-padded) **magnitude** ``|X_k|`` of bins 0..243 only: the
   model keeps only the bins the mel matrix uses (``mel_non_zero_only``); bin 244 is 7625 Hz,
   above the 7600 Hz top mel edge;
4. 80 triangular HTK-mel filters between 20 and 7600 Hz, built like TensorFlow's
   ``linear_to_mel_weight_matrix`` (mel = 1127 ln(1 + f / 700); weights from the distance, in
   mel, of each DFT bin's centre frequency to the filter's edges; DC row zero);
5. ``log(max(mel, 1e-12))``;
6. an unnormalised DCT-II, ``c_k = sum_m 2 cos(pi k (2m + 1) / 160) / sqrt(160) * x_m``,
   k = 0..39.

The graph then applies a feature normaliser ``(x - 0) * 1``, the identity, which is left out
here (``sim.tflite_import`` checks it stays the identity). Everything is computed in float64.
"""

from functools import lru_cache

import numpy as np

from sim.errors import InputError

SAMPLE_RATE = 16000
NUM_SAMPLES = 16000
FRAME_LENGTH = 480
FRAME_STEP = 160
NUM_FRAMES = (NUM_SAMPLES - FRAME_LENGTH) // FRAME_STEP + 1  # 98
FFT_LENGTH = 512
NUM_FFT_BINS = FFT_LENGTH // 2 + 1  # 257 bins of the full one-sided spectrum
NUM_USED_BINS = 244  # bins 0..243: the only ones with a non-zero mel weight
NUM_MEL_BINS = 80
MEL_LOWER_HZ = 20.0
MEL_UPPER_HZ = 7600.0
LOG_EPSILON = 1e-12
NUM_MFCC = 40


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """Return the periodic Hann window of 480 samples (float64, read-only)."""
    n = np.arange(FRAME_LENGTH)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / FRAME_LENGTH)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=1)
def mel_weight_matrix() -> np.ndarray:
    """Return the (244, 80) mel filter bank applied to the DFT magnitudes (float64, read-only).

    Row j is DFT bin j (frequency j * 16000 / 512 Hz), column i is mel band i.
    """
    freqs = np.linspace(0.0, SAMPLE_RATE / 2.0, NUM_FFT_BINS)
    bin_mel = _hz_to_mel(freqs)[:, None]
    edges = np.linspace(_hz_to_mel(MEL_LOWER_HZ), _hz_to_mel(MEL_UPPER_HZ), NUM_MEL_BINS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0  # TensorFlow zeroes the DC bin
    # Bins from 244 (7625 Hz) up lie above the top edge and have zero weight: drop them.
    weights = np.ascontiguousarray(weights[:NUM_USED_BINS])
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=1)
def dct_matrix() -> np.ndarray:
    """Return the (40, 80) unnormalised DCT-II matrix ``2 cos(pi k (2m+1) / 160) / sqrt(160)``."""
    k = np.arange(NUM_MFCC)[:, None]
    m = np.arange(NUM_MEL_BINS)[None, :]
    d = 2.0 * np.cos(np.pi * k * (2 * m + 1) / (2 * NUM_MEL_BINS)) / np.sqrt(2 * NUM_MEL_BINS)
    d.flags.writeable = False
    return d


def check_audio(audio: np.ndarray) -> np.ndarray:
    """Validate 1-s clips for the front end; return them as float64.

    Raises
    ------
    sim.errors.InputError
        If ``audio`` is not a floating-point array of shape (16000,) or (batch, 16000), or
        holds NaN/inf.
    """
    if not isinstance(audio, np.ndarray):
        raise InputError(f"audio must be a numpy array, got {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise InputError(
            f"audio must be floating point in [-1, 1), got dtype {audio.dtype} "
            "(divide 16-bit samples by 32768)"
        )
    if audio.ndim not in (1, 2) or audio.shape[-1] != NUM_SAMPLES:
        raise InputError(f"audio must have shape ({NUM_SAMPLES},) or (batch, {NUM_SAMPLES}), got {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise InputError(f"audio holds {np.count_nonzero(~np.isfinite(audio))} NaN or infinite values")
    return audio.astype(np.float64, copy=False)


def mfcc(audio: np.ndarray) -> np.ndarray:
    """Compute the model's MFCC features of 1-s clips.

    Parameters
    ----------
    audio : numpy.ndarray
        Floating-point samples in [-1, 1), shape (16000,) or (batch, 16000).

    Returns
    -------
    numpy.ndarray
        float64, shape (98, 40) or (batch, 98, 40): frames by coefficients.

    Raises
    ------
    sim.errors.InputError
        If ``audio`` is not a floating-point array of that shape or holds NaN/inf.
    """
    x = check_audio(audio)
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_LENGTH, axis=-1)[..., ::FRAME_STEP, :]
    spectrum = np.fft.rfft(frames * hann_window(), n=FFT_LENGTH, axis=-1)[..., :NUM_USED_BINS]
    mel = np.abs(spectrum) @ mel_weight_matrix()
    return np.log(np.maximum(mel, LOG_EPSILON)) @ dct_matrix().T
