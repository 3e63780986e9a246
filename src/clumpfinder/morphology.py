"""Galaxy-Zoo-style morphology votes: the labels of the galaxy-pretraining stage.

Galaxy Zoo asks volunteers a decision tree of questions; a galaxy's label is the number of votes
for each answer. Zoobot (Walmsley et al.) learns these counts for hundreds of thousands of galaxies
and its encoder then serves other tasks. Here the same idea runs inside the workflow:

* :func:`simulate_votes` draws vote counts for the simulated survey from each galaxy's true
  parameters (bulge-to-total, inclination, visible clumps and odd objects) with volunteer noise:
  per-galaxy disagreement, a fraction of random answers, a random number of volunteers, and the
  tree (a question is only asked of volunteers who gave its parent answer);
* :func:`read_vote_catalogue` reads the same table from a real Galaxy Zoo catalogue (CSV).

The simulator draws no bars or spiral arms, so the tree has no questions about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# question -> (answers, (parent question, parent answer) or None): a Galaxy Zoo DECaLS-like tree
QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, str] | None]] = {
    "smooth_or_featured": (("smooth", "featured"), None),
    "edge_on": (("yes", "no"), ("smooth_or_featured", "featured")),
    "bulge_size": (("none", "small", "large"), ("edge_on", "no")),
    "clumpy": (("yes", "no"), ("edge_on", "no")),
    "clump_count": (("one_or_two", "three_plus"), ("clumpy", "yes")),
    "odd_feature": (("yes", "no"), None),
}


def vote_columns(questions: dict[str, tuple[tuple[str, ...], Any]] = QUESTIONS) -> list[str]:
    """Count columns, ``<question>_<answer>``, in tree order."""
    return [f"{q}_{a}" for q, (answers, _) in questions.items() for a in answers]


@dataclass(frozen=True)
class VoteSpec:
    """The ``morphology`` section of the configuration (simulated votes)."""

    seed: int
    votes_per_galaxy: float
    min_votes: int
    random_answer_fraction: float
    disagreement: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "VoteSpec":
        return cls(**cfg)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def true_answer_probabilities(manifest: pd.DataFrame, truth: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per question, the (n_galaxies, n_answers) probabilities that an attentive volunteer gives
    each answer, from the simulator's true parameters (rows in manifest order)."""
    ids = manifest["subject_id"].to_numpy()
    t = truth.copy()
    # an object is seen when it is both bright relative to the galaxy and above the noise
    t["visible"] = _sigmoid((np.log(t["flux_fraction_g"].clip(1e-6)) - np.log(0.03)) / 0.3) * _sigmoid(
        (t["snr_g"] - 3.0) / 1.0
    )
    vis = t.groupby(["subject_id", "kind"])["visible"].sum().unstack(fill_value=0.0)
    clumps = vis.get("clump", pd.Series(dtype=float)).reindex(ids, fill_value=0.0).to_numpy()
    odd = vis.get("odd", pd.Series(dtype=float)).reindex(ids, fill_value=0.0).to_numpy()
    bt = manifest["bulge_to_total"].to_numpy()
    incl = manifest["inclination_deg"].to_numpy()
    mag = manifest["mag_r"].to_numpy()

    def two(p: np.ndarray) -> np.ndarray:
        return np.stack([p, 1.0 - p], axis=1)

    featured = _sigmoid(2.0 - 9.0 * bt + 1.2 * clumps - 0.6 * (mag - 16.5))
    centres = np.array([0.05, 0.2, 0.35])
    bulge = np.exp(-(((bt[:, None] - centres[None, :]) / 0.08) ** 2))
    return {
        "smooth_or_featured": np.stack([1.0 - featured, featured], axis=1),
        "edge_on": two(_sigmoid((incl - 60.0) / 4.0)),
        "bulge_size": bulge / bulge.sum(axis=1, keepdims=True),
        "clumpy": two(0.05 + 0.9 * (1.0 - np.exp(-clumps))),
        "clump_count": np.stack([1.0 - _sigmoid(2.0 * (clumps - 2.5)), _sigmoid(2.0 * (clumps - 2.5))], axis=1),
        "odd_feature": two(0.05 + 0.85 * (1.0 - np.exp(-odd))),
    }


def simulate_votes(manifest: pd.DataFrame, truth: pd.DataFrame, spec: VoteSpec) -> pd.DataFrame:
    """Vote counts per galaxy: ``subject_id`` then one column per answer (see :data:`QUESTIONS`)."""
    rng = np.random.default_rng(spec.seed)
    probs = true_answer_probabilities(manifest, truth)
    n = len(manifest)
    n_votes = np.maximum(rng.poisson(spec.votes_per_galaxy, n), spec.min_votes)
    out = {"subject_id": manifest["subject_id"].to_numpy()}
    asked: dict[tuple[str, str], np.ndarray] = {}
    for q, (answers, parent) in QUESTIONS.items():
        p = probs[q]
        # galaxies differ in how much volunteers agree: jitter the logits per galaxy and question
        logits = np.log(np.clip(p, 1e-6, 1.0)) + rng.normal(0.0, spec.disagreement, p.shape)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p = (1.0 - spec.random_answer_fraction) * p + spec.random_answer_fraction / len(answers)
        n_q = n_votes if parent is None else asked[parent]
        counts = np.stack([rng.multinomial(k, pk) for k, pk in zip(n_q, p)]) if n else np.zeros((0, len(answers)))
        for j, a in enumerate(answers):
            out[f"{q}_{a}"] = counts[:, j].astype(int)
            asked[(q, a)] = counts[:, j].astype(int)
    return pd.DataFrame(out)


def read_vote_catalogue(path: str | Path) -> tuple[pd.DataFrame, dict[str, tuple[tuple[str, ...], Any]]]:
    """A vote-count catalogue (CSV: ``subject_id`` and ``<question>_<answer>`` counts, as
    :func:`simulate_votes` writes and as a real Galaxy Zoo table can be renamed to). Questions
    whose columns are all absent are left out; a partly present question, a missing or repeated
    ``subject_id`` or a negative or non-numeric count is an error naming the file, column and row.
    Returns the table and the questions it answers."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"vote catalogue {path}: cannot be read ({err})") from err
    if "subject_id" not in df.columns:
        raise ValueError(f"vote catalogue {path}: no 'subject_id' column")
    dup = df["subject_id"].duplicated()
    if dup.any():
        raise ValueError(f"vote catalogue {path}: subject_id {df['subject_id'][dup].iloc[0]} appears more than once "
                         f"(row {int(np.flatnonzero(dup)[0]) + 2})")
    questions = {}
    for q, (answers, parent) in QUESTIONS.items():
        cols = [f"{q}_{a}" for a in answers]
        present = [c for c in cols if c in df.columns]
        if not present:
            continue
        if len(present) != len(cols):
            raise ValueError(f"vote catalogue {path}: question {q!r} lacks column(s) "
                             f"{sorted(set(cols) - set(present))}")
        questions[q] = (answers, parent if parent is None or parent[0] in questions else None)
        for c in cols:
            values = pd.to_numeric(df[c], errors="coerce")
            bad = values.isna() | (values < 0)
            if bad.any():
                raise ValueError(f"vote catalogue {path}: column {c!r} row {int(np.flatnonzero(bad)[0]) + 2} is not a "
                                 f"non-negative count ({df[c][bad].iloc[0]!r})")
            df[c] = values
    if not questions:
        raise ValueError(f"vote catalogue {path}: none of the columns {vote_columns()} is present")
    return df[["subject_id"] + vote_columns(questions)], questions
