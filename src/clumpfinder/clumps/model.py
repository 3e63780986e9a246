"""The detector a catalogue uses: a trained model file plus what it needs to see images as it saw
them in training (the crop and the colour stretch) and where it came from (backbone, training-set
size, seed, the score threshold chosen on the validation split, config hash, commit).

``export_detector`` writes such a file from a training model file; ``load_detector`` reads it
back and refuses, naming the file, anything else. The cell of the sweep a catalogue uses is, by
default, the one with the highest F1 on the validation split (``best_cell``): never the test split.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from clumpfinder.detection.detector import DetectorSpec, load_model
from clumpfinder.io import atomic_path, json_digest

#: what a catalogue needs from training besides the weights (and, since detectors record it, the
#: field of the training images: ``field``, :class:`clumpfinder.clumps.field.Field`)
PREPROCESSING_KEYS = ("crop", "png")


def config_hash(cfg: Any) -> str:
    """Short SHA-256 of a configuration (sorted-key JSON): the same settings, the same hash."""
    return json_digest(cfg)[:16]


def git_commit(path: str | Path) -> str:
    """The commit of the checkout holding ``path`` (with '+dirty' for local changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def best_cell(metrics: dict[tuple[str, str, str], dict[str, Any]]) -> tuple[str, str, str]:
    """The (backbone, n_train, seed) with the highest F1 on the validation split at its chosen
    score threshold (ties: the first in the given order)."""
    if not metrics:
        raise ValueError("no trained detector to choose from")
    return max(metrics, key=lambda k: metrics[k]["threshold"]["val_at_score"]["f1"])


def export_detector(model_path: str | Path, out: str | Path, preprocessing: dict[str, Any],
                    provenance: dict[str, Any]) -> None:
    """Write the training model file ``model_path`` with ``preprocessing`` and ``provenance``."""
    missing = [k for k in PREPROCESSING_KEYS if k not in preprocessing]
    if missing:
        raise ValueError(f"preprocessing lacks {missing}")
    payload = _read(model_path)
    payload.update(preprocessing=dict(preprocessing), provenance=dict(provenance))
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path} is not a clumpfinder detector file (torch cannot read it: "
                         f"{type(err).__name__}: {str(err)[:160]})") from None
    need = ("state_dict", "backbone", "detector", "classes")
    if not isinstance(payload, dict) or any(k not in payload for k in need):
        have = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a clumpfinder detector file: it has {have}, a detector has {list(need)} "
                         "(an encoder from pretraining is not a detector)")
    return payload


def load_detector(path: str | Path, device: torch.device | None = None, dtype: torch.dtype | None = None
                  ) -> tuple[torch.nn.Module, DetectorSpec, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, detector settings, preprocessing, provenance) of an exported detector;
    ``dtype``: mixed precision of its backbone (None: fp32)."""
    payload = _read(path)
    if "preprocessing" not in payload:
        raise ValueError(f"{path} is a training model file without the preprocessing a catalogue needs "
                         "(crop, colour stretch): export it first (the workflow's catalogue_model rule writes "
                         "results/clumps/detector.pt, or call clumpfinder.clumps.model.export_detector)")
    try:
        model, detector = load_model(path, device, dtype)
    except (RuntimeError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: the weights do not fit the detector it describes ({str(err)[:200]})") from None
    return model, detector, payload["preprocessing"], payload.get("provenance", {})
