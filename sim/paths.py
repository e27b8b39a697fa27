"""Where the project's files live: the repository, the shared model and data, the shipped clips.

The shared folder (model release and Speech Commands clips) sits beside the repository as
``<repo root>/../shared``; set the environment variable ``KWS_SHARED`` to use another place.
"""

import os
from pathlib import Path

#: The 12 KWT-1 classes in the order of the model's output logits (checked against the
#: release's labels.txt by the tests).
LABELS: tuple[str, ...] = (
    "_silence_",
    "_unknown_",
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "on",
    "off",
    "stop",
    "go",
)


def repo_root() -> Path:
    """Return the repository's root folder (the one holding ``sim/``)."""
    return Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """Return the shared data folder: ``$KWS_SHARED`` if set, else ``<repo root>/../shared``.

    The folder may not exist (e.g. on a machine without the shared data); callers check.
    """
    env = os.environ.get("KWS_SHARED")
    return Path(env) if env else repo_root().parent / "shared"


def kwt1_dir() -> Path:
    """Return the folder of the KWT-1 release (model, labels, flags)."""
    return shared_dir() / "models" / "kwt1"


def kwt1_tflite() -> Path:
    """Return the path of the float32 KWT-1 TFLite model."""
    return kwt1_dir() / "non_stream.tflite"


def speech_commands_dir() -> Path:
    """Return the shared Speech Commands folder (one subfolder per label)."""
    return shared_dir() / "data" / "speech_commands"


def shipped_clips_dir() -> Path:
    """Return ``data/clips``: one real clip per class, shipped with the repository."""
    return repo_root() / "data" / "clips"


def labels() -> tuple[str, ...]:
    """Return the 12 class labels in the model's output order."""
    return LABELS
