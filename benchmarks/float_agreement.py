"""Compare the float64 NumPy KWT-1 reference with the TFLite interpreter over a folder of clips.

Every clip goes through the project's WAV reader; TFLite gets the raw audio (its own MFCC front
end), the reference gets ``sim.mfcc`` then ``sim.kwt_float``. Prints the number of clips, the
top-1 accuracy of each, their top-1 agreement and the largest logit error relative to the
clip's largest |TFLite logit|.

Usage::

    python benchmarks/float_agreement.py [FOLDER] [--limit N] [--json]

FOLDER defaults to the shared Speech Commands clips; any folder with one subfolder per label
works (e.g. ``data/clips``).
"""

import os

# Small matrices: BLAS threads only add wake-up cost, and they thrash when the CPUs are shared.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sim import paths  # noqa: E402
from sim.errors import InputError, KwsError  # noqa: E402
from sim.kwt_float import predict_float  # noqa: E402
from sim.tflite_import import TfliteKwt, read_kwt_weights  # noqa: E402
from sim.wav import list_dataset, read_wav  # noqa: E402


def select(items: list, limit: int | None) -> list:
    """Return ``limit`` clips evenly spread over the sorted list (so every label is sampled)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def evaluate(folder: Path, model: Path, limit: int | None = None, batch_size: int = 128) -> dict:
    """Run both models over the clips of ``folder``; return the figures as a dict."""
    items = select(list_dataset(folder), limit)
    weights = read_kwt_weights(model)
    tflite = TfliteKwt(model)
    label_index = {name: i for i, name in enumerate(paths.labels())}
    truth = np.array([label_index[label] for _, label in items])
    ref_logits, float_logits = [], []
    start = time.perf_counter()
    with tqdm(total=len(items), unit="clip", desc="clips", file=sys.stderr) as bar:
        for s in range(0, len(items), batch_size):
            audio = np.stack([read_wav(p) for p, _ in items[s : s + batch_size]])
            ref_logits.append(tflite.logits(audio).astype(np.float64))
            float_logits.append(predict_float(weights, audio, batch_size=batch_size))
            bar.update(len(audio))
    ref, got = np.concatenate(ref_logits), np.concatenate(float_logits)
    rel_err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    ref_top, got_top = ref.argmax(axis=1), got.argmax(axis=1)
    return {
        "folder": str(folder),
        "n": len(items),
        "tflite_top1_accuracy": float(np.mean(ref_top == truth)),
        "float_top1_accuracy": float(np.mean(got_top == truth)),
        "top1_agreement": float(np.mean(ref_top == got_top)),
        "disagreements": int(np.sum(ref_top != got_top)),
        "max_rel_logit_error": float(rel_err.max()),
        "median_rel_logit_error": float(np.median(rel_err)),
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_table(r: dict) -> str:
    rows = [
        ("folder", r["folder"]),
        ("clips (n)", f"{r['n']}"),
        ("TFLite top-1 accuracy", f"{100 * r['tflite_top1_accuracy']:.2f} %"),
        ("float top-1 accuracy", f"{100 * r['float_top1_accuracy']:.2f} %"),
        ("top-1 agreement", f"{100 * r['top1_agreement']:.3f} % ({r['disagreements']} differ)"),
        ("max relative logit error", f"{r['max_rel_logit_error']:.2e}"),
        ("median relative logit error", f"{r['median_rel_logit_error']:.2e}"),
        ("time", f"{r['seconds']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=None,
                        help="folder with one subfolder per label (default: the shared Speech Commands clips)")  # fmt: skip
    parser.add_argument("--model", type=Path, default=None, help="TFLite model (default: the shared KWT-1)")
    parser.add_argument("--limit", type=int, default=None, help="use N clips evenly spread over the folder")
    parser.add_argument("--batch-size", type=int, default=128, help="clips per float forward pass")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
        result = evaluate(
            args.folder or paths.speech_commands_dir(), args.model or paths.kwt1_tflite(), args.limit, args.batch_size
        )
    except KwsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
