"""Galaxy-Zoo-style morphology votes: the labels of the galaxy-pretraining stage.

Galaxy Zoo asks volunteers a decision tree of questions; a galaxy's label is the number of votes
for each answer. Zoobot (Walmsley et al.) learns these counts for hundreds of thousands of galaxies
and its encoder then serves other tasks. Here the same idea runs inside the workflow:

* :func:`simulate_votes` draws vote counts for a simulated *pretraining population*: galaxies
  simulated with their own seed and subject ids, never in the detection survey (as Zoobot learnt
  from other galaxies than the ones it is applied to). Each vote comes from a simulated volunteer
  who looks at the galaxy: the host's look (bulge size, inclination, spiral arms, brightness) sets
  the answer probabilities of the shape questions, and the clump and odd-feature questions are
  answered from what that volunteer *notices*, with the same perception model that decides what
  Clump Scout volunteers click (:func:`clumpfinder.data.volunteers.visibility`,
  :func:`clumpfinder.data.volunteers.odd_look`, each voter with their own skill). The votes never read
  the truth's flux fractions or classes, so pretraining cannot learn the evaluation's definition
  of a clump. Volunteer noise: per-galaxy disagreement on the shape questions, a fraction of
  random answers, a random number of volunteers, and the tree (a question is only asked of
  volunteers who gave its parent answer);
* :func:`read_vote_catalogue` reads the same table from a real Galaxy Zoo catalogue (CSV).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from clumpfinder.io import known_fields
from clumpfinder.data.volunteers import CrowdSpec, appearance, odd_look, visibility

# question -> (answers, (parent question, parent answer) or None): a Galaxy Zoo DECaLS-like tree
QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, str] | None]] = {
    "smooth_or_featured": (("smooth", "featured"), None),
    "edge_on": (("yes", "no"), ("smooth_or_featured", "featured")),
    "bulge_size": (("none", "small", "large"), ("edge_on", "no")),
    "spiral_arms": (("yes", "no"), ("edge_on", "no")),
    "clumpy": (("yes", "no"), ("edge_on", "no")),
    "clump_count": (("one_or_two", "three_plus"), ("clumpy", "yes")),
    "odd_feature": (("yes", "no"), None),
}
#: the questions answered from what each voter notices (the rest from the host's look)
PERCEIVED = ("clumpy", "clump_count", "odd_feature")
#: what the votes may read of the survey's subject table: the host's look, nothing about its objects
HOST_COLUMNS = ["subject_id", "bulge_to_total", "inclination_deg", "mag_r", "n_arms", "arm_light_fraction"]


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
        return cls(**known_fields(cls, cfg, "morphology", elsewhere=("population",)))  # simulated by simulate


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def host_answer_probabilities(hosts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per shape question, the (n_galaxies, n_answers) probabilities that an attentive volunteer
    gives each answer, from the host's look (rows in ``hosts`` order)."""
    bt = hosts["bulge_to_total"].to_numpy(float)
    incl = hosts["inclination_deg"].to_numpy(float)
    mag = hosts["mag_r"].to_numpy(float)
    arms = hosts["arm_light_fraction"].to_numpy(float) * (hosts["n_arms"].to_numpy(float) > 0)
    # arms show when they carry light, on galaxies not seen edge-on, brighter ones more clearly
    p_arms = _sigmoid((arms - 0.12) / 0.04 - 0.08 * (incl - 45.0) / 5.0 - 0.5 * (mag - 16.5))
    featured = _sigmoid(2.0 - 9.0 * bt + 3.0 * arms - 0.6 * (mag - 16.5))
    centres = np.array([0.05, 0.2, 0.35])
    bulge = np.exp(-(((bt[:, None] - centres[None, :]) / 0.08) ** 2))
    return {
        "smooth_or_featured": np.stack([1.0 - featured, featured], axis=1),
        "edge_on": np.stack([_sigmoid((incl - 60.0) / 4.0), 1.0 - _sigmoid((incl - 60.0) / 4.0)], axis=1),
        "bulge_size": bulge / bulge.sum(axis=1, keepdims=True),
        "spiral_arms": np.stack([p_arms, 1.0 - p_arms], axis=1),
    }


def _noticed(rng: np.random.Generator, objects: dict[str, np.ndarray] | None, n_voters: int,
             crowd: CrowdSpec) -> tuple[np.ndarray, np.ndarray]:
    """For ``n_voters`` volunteers with skills drawn from the crowd's distributions: how many
    clump-like and how many odd-looking objects each of them notices."""
    if objects is None or n_voters == 0:
        return np.zeros(n_voters, int), np.zeros(n_voters, int)
    c50 = 10 ** rng.normal(np.log10(crowd.c50["median"]), crowd.c50["sigma_dex"], (n_voters, 1))
    miss = rng.beta(crowd.miss_prob["a"], crowd.miss_prob["b"], (n_voters, 1))
    p = (1.0 - miss) * visibility(objects["contrast"][None, :], objects["snr_g"][None, :], c50, crowd.snr50)
    seen = rng.uniform(size=p.shape) < p
    odd = rng.uniform(size=p.shape) < odd_look(objects["colour_gr"], crowd.odd_look)[None, :]
    return (seen & ~odd).sum(axis=1), (seen & odd).sum(axis=1)


def simulate_votes(manifest: pd.DataFrame, objects: pd.DataFrame, spec: VoteSpec, crowd: CrowdSpec) -> pd.DataFrame:
    """Vote counts per galaxy: ``subject_id`` then one column per answer (see :data:`QUESTIONS`).

    Reads only :data:`HOST_COLUMNS` of ``manifest`` and the appearance columns of ``objects``
    (:data:`clumpfinder.data.volunteers.APPEARANCE_COLUMNS`, via :func:`~clumpfinder.data.volunteers.appearance`); ``crowd`` gives the voters' perception
    skills (the ``volunteers`` section)."""
    missing = [c for c in HOST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"subject table lacks column(s) {', '.join(missing)} that the votes need")
    hosts = manifest[HOST_COLUMNS]
    seen = appearance(objects)
    rng = np.random.default_rng(spec.seed)
    probs = host_answer_probabilities(hosts)
    n = len(hosts)
    n_votes = np.maximum(rng.poisson(spec.votes_per_galaxy, n), spec.min_votes)
    ids = hosts["subject_id"].to_numpy()
    out: dict[str, Any] = {"subject_id": ids}
    asked: dict[tuple[str, str], np.ndarray] = {}
    rand = spec.random_answer_fraction

    def record(q: str, counts: np.ndarray) -> None:
        for j, a in enumerate(QUESTIONS[q][0]):
            out[f"{q}_{a}"] = counts[:, j].astype(int)
            asked[(q, a)] = counts[:, j].astype(int)

    for q, (answers, parent) in QUESTIONS.items():
        if q in PERCEIVED:
            continue
        p = probs[q]
        # galaxies differ in how much volunteers agree: jitter the logits per galaxy and question
        logits = np.log(np.clip(p, 1e-6, 1.0)) + rng.normal(0.0, spec.disagreement, p.shape)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p = (1.0 - rand) * p + rand / len(answers)
        n_q = n_votes if parent is None else asked[parent]
        record(q, np.stack([rng.multinomial(k, pk) for k, pk in zip(n_q, p)]) if n else np.zeros((0, len(answers))))
    # the perceived questions: each asked voter answers from what they notice (or at random)
    clumpy = np.zeros((n, 2), int)
    count = np.zeros((n, 2), int)
    odd = np.zeros((n, 2), int)
    n_clumpy = asked[QUESTIONS["clumpy"][1]]
    for i, sid in enumerate(ids):
        objs = seen.get(int(sid))
        k = int(n_clumpy[i])
        clumps, _ = _noticed(rng, objs, k, crowd)
        guess = rng.uniform(size=k) < rand
        yes = np.where(guess, rng.uniform(size=k) < 0.5, clumps > 0)
        clumpy[i] = yes.sum(), k - yes.sum()
        many = np.where(rng.uniform(size=yes.sum()) < rand, rng.uniform(size=yes.sum()) < 0.5, clumps[yes] >= 3)
        count[i] = yes.sum() - many.sum(), many.sum()
        _, odd_seen = _noticed(rng, objs, int(n_votes[i]), crowd)
        guess = rng.uniform(size=n_votes[i]) < rand
        yes = np.where(guess, rng.uniform(size=n_votes[i]) < 0.5, odd_seen > 0)
        odd[i] = yes.sum(), n_votes[i] - yes.sum()
    record("clumpy", clumpy)
    record("clump_count", count)
    record("odd_feature", odd)
    return pd.DataFrame(out)[["subject_id"] + vote_columns()]


def read_vote_catalogue(path: str | Path, required: Iterable[str] | None = None,
                        ) -> tuple[pd.DataFrame, dict[str, tuple[tuple[str, ...], Any]]]:
    """A vote-count catalogue (CSV: ``subject_id`` and ``<question>_<answer>`` counts, as
    :func:`simulate_votes` writes and as a real Galaxy Zoo table can be renamed to). Questions
    whose columns are all absent are left out; a partly present question, a missing or repeated
    ``subject_id`` or a negative or non-numeric count is an error naming the file, column and row.
    With ``required`` (the configuration's ``pretrain.questions``) the table is cut to those
    questions, and one the table has no vote for (no columns, or no galaxy with a vote) is an
    error naming the question and the file. Returns the table and the questions it answers."""
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
    if required is not None:
        required = list(required)
        unknown = [q for q in required if q not in QUESTIONS]
        if unknown:
            raise ValueError(f"pretrain.questions: {unknown} are not questions of the tree ({list(QUESTIONS)})")
        for q in required:
            cols = vote_columns({q: QUESTIONS[q]})
            if q not in questions or not df[cols].to_numpy().sum() > 0:
                raise ValueError(f"vote catalogue {path}: no votes for question {q!r} (columns {cols}), which "
                                 "pretrain.questions asks for: give the votes or leave the question out of the list")
        questions = {q: (answers, parent if parent is None or parent[0] in required else None)
                     for q, (answers, parent) in questions.items() if q in required}
    return df[["subject_id"] + vote_columns(questions)], questions
