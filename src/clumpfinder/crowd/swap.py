"""SWAP: Bayesian "does this galaxy have clumps?" per subject, as in Space Warps / Galaxy Zoo Express.

Each volunteer is an agent with PL = P(says yes | has clumps) and PD = P(says no | no clumps),
starting at ``initial_pl``/``initial_pd`` with pseudo-count N = 2 + ``skepticism``. A volunteer's
vote is, by default, whether they marked anything (a click kept by the export reader: yes; none:
no). With a ``question`` (a yes/no question task of the workflow, "Does this galaxy have
clumps?", :class:`~clumpfinder.data.zooniverse.Question`) the vote is the answer to it instead (the
``question_answer`` column the reader fills); a classification without an answer is no vote and
is skipped by SWAP (its marks still go to the box consensus), but its subject and volunteer keep a
row in the tables. Classifications are applied in time order. Each subject starts at ``prior``
and is updated by Bayes' rule with the classifying agent's PL/PD:

    yes:  P <- P PL / (PL P + (1 - PD)(1 - P))
    no:   P <- P (1 - PL) / ((1 - PL) P + PD (1 - P))

Agents learn in one of two modes: ``supervised`` updates an agent only on gold subjects of known
truth, ``PL <- (PL N + [vote right]) / (N + 1), N <- N + 1`` (PD likewise on subjects without
clumps), as the classifications come in; ``unsupervised`` has no gold and estimates PL/PD by
expectation maximisation over all classifications (Dawid & Skene 1979: subject posteriors from
the agents, agents from the posterior-weighted votes with the same pseudo-count prior, starting
from the majority vote so that "yes" keeps its meaning), then replays the classifications in time
order with those agents. Updating online with the subject's current probability as the weight
(Space Warps' unsupervised variant) was tried and rejected: from uninformative agents it drifts to
the inverted solution (PD -> 0) when most subjects have clumps. A subject retires as "yes" once P >= ``detection_threshold`` and as "no" once
P <= ``rejection_threshold``; with ``stop_at_retirement`` the classifications that arrive after
retirement are not used (the live system would not have shown the subject again), which is what
the effort-saved figure measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd

from clumpfinder.io import known_fields
from clumpfinder.data.zooniverse import ANSWER_YES, Question, time_order

MODES = ("supervised", "unsupervised")


@dataclass(frozen=True)
class SwapSpec:
    """The ``consensus.swap`` section of the configuration."""

    mode: str
    prior: float
    initial_pl: float
    initial_pd: float
    skepticism: float
    detection_threshold: float
    rejection_threshold: float
    probability_floor: float
    agent_clip: float
    stop_at_retirement: bool
    question: Question | None = None  # None: the vote is "marked anything"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "SwapSpec":
        spec = cls(**{**known_fields(cls, cfg, "consensus.swap"), "question": Question.from_config(cfg.get("question"))})
        if spec.mode not in MODES:
            raise ValueError(f"consensus.swap.mode {spec.mode!r} is not one of {', '.join(MODES)}")
        if not 0 < spec.rejection_threshold < spec.prior < spec.detection_threshold < 1:
            raise ValueError(
                "consensus.swap needs 0 < rejection_threshold < prior < detection_threshold < 1, got "
                f"{spec.rejection_threshold}, {spec.prior}, {spec.detection_threshold}"
            )
        return spec


@numba.njit(cache=True)
def _swap_kernel(subj, vol, vote, gold, n_subjects, supervised, prior, pl, pd_, n0, det, rej, floor, clip,
                 stop):  # pragma: no cover - compiled
    p = np.full(n_subjects, prior)
    n_used = np.zeros(n_subjects, np.int64)
    retired = np.zeros(n_subjects, np.int8)  # 0 active, 1 retired yes, -1 retired no
    retired_at = np.zeros(n_subjects, np.int64)
    n_volunteers = pl.shape[0]
    pl = pl.copy()
    pd_ = pd_.copy()
    nl = np.full(n_volunteers, n0)
    nd = np.full(n_volunteers, n0)
    n_train = np.zeros(n_volunteers)
    for k in range(subj.shape[0]):
        s, v = subj[k], vol[k]
        if stop and retired[s] != 0:
            continue
        prev = p[s]
        if vote[k]:
            new = prev * pl[v] / (pl[v] * prev + (1.0 - pd_[v]) * (1.0 - prev))
        else:
            new = prev * (1.0 - pl[v]) / ((1.0 - pl[v]) * prev + pd_[v] * (1.0 - prev))
        p[s] = min(max(new, floor), 1.0 - floor)
        n_used[s] += 1
        # the agent learns from this classification after it has been used
        if supervised:
            if gold[s] >= 0:
                if gold[s] == 1:
                    pl[v] = (pl[v] * nl[v] + (1.0 if vote[k] else 0.0)) / (nl[v] + 1.0)
                    nl[v] += 1.0
                else:
                    pd_[v] = (pd_[v] * nd[v] + (0.0 if vote[k] else 1.0)) / (nd[v] + 1.0)
                    nd[v] += 1.0
                n_train[v] += 1.0
        pl[v] = min(max(pl[v], clip), 1.0 - clip)
        pd_[v] = min(max(pd_[v], clip), 1.0 - clip)
        if retired[s] == 0:
            if p[s] >= det:
                retired[s] = 1
                retired_at[s] = n_used[s]
            elif p[s] <= rej:
                retired[s] = -1
                retired_at[s] = n_used[s]
    return p, n_used, retired, retired_at, pl, pd_, n_train


def run_swap(
    classifications: pd.DataFrame, spec: SwapSpec, gold: pd.Series | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SWAP over ``classifications`` (columns subject_id, user, n_marks, created_at,
    classification_id; with ``spec.question`` also question_answer); ``gold``: known truth
    (1 has clumps, 0 not) indexed by subject_id.

    Returns (per subject: swap_prob, swap_n_used, swap_retired, swap_retired_as, swap_retired_at,
    gold; per volunteer: swap_pl, swap_pd, swap_n_trained). Every subject and volunteer of
    ``classifications`` has a row, also one without a vote (prior, starting PL/PD).
    """
    cls = classifications.iloc[time_order(classifications["created_at"], classifications["classification_id"])]
    subj_codes, subjects = pd.factorize(cls["subject_id"], sort=True)
    vol_codes, users = pd.factorize(cls["user"], sort=True)
    if spec.question is None:
        votes = cls["n_marks"].to_numpy() > 0
    else:
        if "question_answer" not in cls:
            raise ValueError(f"consensus.swap.question is set (task {spec.question.task!r}) but the classifications "
                             "have no question_answer column; read the export with the question")
        answer = cls["question_answer"].to_numpy()
        voted = answer >= 0  # ANSWER_YES or ANSWER_NO; the others are no vote
        votes = answer[voted] == ANSWER_YES
        subj_codes, vol_codes = subj_codes[voted], vol_codes[voted]
    gold_arr = np.full(len(subjects), -1, np.int8)
    if gold is not None and len(gold):
        g = pd.Series(np.asarray(gold, dtype=np.int8), index=np.asarray(gold.index, dtype=np.int64))
        known = g.reindex(subjects)
        gold_arr = known.fillna(-1).to_numpy().astype(np.int8)
    if spec.mode == "supervised" and not (gold_arr >= 0).any():
        raise ValueError("consensus.swap.mode is 'supervised' but no gold subjects were given; "
                         "provide gold subjects or use mode 'unsupervised'")
    n0 = 2.0 + spec.skepticism
    subj_codes, vol_codes = subj_codes.astype(np.int64), vol_codes.astype(np.int64)
    pl = np.full(len(users), spec.initial_pl)
    pd_ = np.full(len(users), spec.initial_pd)
    n_em = np.zeros(len(users))
    if spec.mode == "unsupervised":
        pl, pd_, n_em = _dawid_skene(subj_codes, vol_codes, votes, len(subjects), spec, len(users))
    p, n_used, retired, retired_at, pl, pd_, n_train = _swap_kernel(
        subj_codes, vol_codes, votes, gold_arr, len(subjects), spec.mode == "supervised", spec.prior, pl, pd_,
        n0, spec.detection_threshold, spec.rejection_threshold, spec.probability_floor, spec.agent_clip,
        spec.stop_at_retirement,
    )
    n_train = n_train + n_em
    subj_table = pd.DataFrame(
        {
            "subject_id": np.asarray(subjects, dtype=np.int64),
            "swap_prob": p,
            "swap_n_used": n_used,
            "swap_retired": retired != 0,
            "swap_retired_as": np.select([retired == 1, retired == -1], ["yes", "no"], ""),
            "swap_retired_at": np.where(retired != 0, retired_at, 0),
            "gold": gold_arr,
        }
    )
    vol_table = pd.DataFrame({"user": np.asarray(users), "swap_pl": pl, "swap_pd": pd_,
                              "swap_n_trained": n_train})
    return subj_table, vol_table


def _dawid_skene(subj: np.ndarray, vol: np.ndarray, votes: np.ndarray, n_subjects: int, spec: SwapSpec,
                 n_vol: int | None = None, iterations: int = 50,
                 tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Agents' PL/PD by EM without gold; returns (PL, PD, effective number of votes learned from),
    for ``n_vol`` volunteers (default: the highest code in ``vol`` + 1)."""
    if n_vol is None:
        n_vol = int(vol.max()) + 1 if len(vol) else 0
    n0 = 2.0 + spec.skepticism
    y = votes.astype(float)
    # start from the majority vote, so that the solution keeps "yes" meaning yes
    post = (np.bincount(subj, y, n_subjects) / np.maximum(np.bincount(subj, minlength=n_subjects), 1) > 0.5).astype(float)
    prior = spec.prior
    pl = pd_ = None
    for _ in range(iterations):
        w = post[subj]
        pl = (spec.initial_pl * n0 + np.bincount(vol, w * y, n_vol)) / (n0 + np.bincount(vol, w, n_vol))
        pd_ = (spec.initial_pd * n0 + np.bincount(vol, (1 - w) * (1 - y), n_vol)) / (n0 + np.bincount(vol, 1 - w, n_vol))
        pl = np.clip(pl, spec.agent_clip, 1 - spec.agent_clip)
        pd_ = np.clip(pd_, spec.agent_clip, 1 - spec.agent_clip)
        # log-odds of each subject from all its votes (logs per volunteer, not per vote: 21 k, not 1.7 M)
        llr = np.where(votes, np.log(pl / (1 - pd_))[vol], np.log((1 - pl) / pd_)[vol])
        logit = np.log(prior / (1 - prior)) + np.bincount(subj, llr, n_subjects)
        new = 1.0 / (1.0 + np.exp(-np.clip(logit, -700, 700)))
        done = np.abs(new - post).max() < tol
        post = new
        if done:
            break
    return pl, pd_, np.bincount(vol, minlength=n_vol).astype(float)
