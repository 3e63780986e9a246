"""The classification export replayed in time order, with retirement and (optionally) a machine agent.

Galaxy Zoo Express (Beck et al. 2018) replayed a project's classifications in the order they were
made and asked how soon each subject could have left the queue. Here a replay walks the
export's classifications by ``created_at`` and, every ``check_every`` arrivals, runs the
consensus of this workflow (:func:`clumpfinder.crowd.consensus.run_consensus`: SWAP and the EM
box consensus) on the classifications used so far. A subject *retires* when

* at least ``min_humans`` human classifications of it were used,
* its EM consensus is finished: its risk below ``finished.max_risk`` and its expected false,
  inaccurate and missed boxes each below ``finished.max_expected`` (the ``consensus.em.finished``
  test, with thresholds of its own: with fewer viewers the EM opens clumps more easily, so a
  subject retired on the consensus's own thresholds gains false boxes), and
* it has a consensus box, or SWAP has rejected it (P(clumps) <= the rejection threshold). The
  EM's risk weighs the boxes it found and the lone boxes it did not believe, but not a clump that
  nobody marked: for a subject without boxes SWAP's posterior is that chance, so it must be low.

A classification that arrives after its subject retired is not used: the live project would have
shown that volunteer another subject. Three strategies:

* ``fixed``: nothing retires; every classification is used (Clump Scout's 20 per subject);
* ``retirement``: humans only, retiring as above;
* ``machine``: as ``retirement``, and every ``machine.every`` used human classifications the
  detector is trained on the retired subjects' consensus and classifies the subjects still in
  the queue (:mod:`clumpfinder.partnership.machine`). Its boxes enter the EM as one more
  volunteer and its "marked anything" enters SWAP as one more agent; their skills (p_fp, p_fn,
  positional variance; PL, PD) are learned like anyone's. It classifies every subject in the
  queue, seen or not, but its classification of a subject counts from the subject's first human
  classification on (before it, nobody could agree or disagree with it, and the EM would count
  its boxes there as false positives): it enters SWAP at the later of its round's time and that
  classification's, in the humans' click frame. Its latest classification of a subject replaces
  its earlier ones. It never retires a subject by itself: ``min_humans`` humans must
  have seen it, and the joint posterior must clear the thresholds.

Times are parsed from the export (Zooniverse writes "2019-06-01 11:17:45 UTC"; ISO 8601 with or
without zone is read too). Rows whose time cannot be read have no place in a replay: they are
left out and counted (``unparseable_time``). Rows whose time is earlier than that of a row with a
smaller classification id (Zooniverse numbers classifications as they arrive) are counted as
``out_of_order`` and replayed at their time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd

from clumpfinder.crowd.consensus import ConsensusResult, ConsensusSpec, run_consensus
from clumpfinder.data.zooniverse import ParsedExport
from clumpfinder.io import known_fields

log = logging.getLogger(__name__)

STRATEGIES = ("fixed", "retirement", "machine")
#: the machine agent's name in the volunteer tables (a Zooniverse login has no spaces)
MACHINE_USER = "machine: detector"
#: how every time of a replay is written (sorts as text in time order, as SWAP orders rows)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class MachineSpec:
    """The ``partnership.machine`` section of the configuration."""

    every: int
    backbone: str | None
    min_subjects: int
    validation_fraction: float
    steps: int
    eval_every: int
    fine_tune: bool
    predict_batch: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "MachineSpec":
        spec = cls(**known_fields(cls, cfg, "partnership.machine"))
        if spec.every < 1 or spec.min_subjects < 2 or not 0 < spec.validation_fraction < 1:
            raise ValueError("partnership.machine needs every >= 1, min_subjects >= 2 and 0 < validation_fraction < 1")
        return spec


@dataclass(frozen=True)
class PartnershipSpec:
    """The ``partnership`` section of the configuration."""

    report: bool
    labels_for_training: bool
    check_every: int
    min_humans: int
    finished: dict[str, float]
    score_every: int
    f1_tolerance: float
    bootstrap: dict[str, Any]
    machine: MachineSpec

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "PartnershipSpec":
        kw = known_fields(cls, cfg, "partnership")
        kw["machine"] = MachineSpec.from_config(cfg["machine"])
        spec = cls(**kw)
        if spec.check_every < 1 or spec.score_every < 1 or spec.min_humans < 1:
            raise ValueError("partnership: check_every, score_every and min_humans must be >= 1")
        return spec


def arrival_times(classifications: pd.DataFrame) -> tuple[pd.Series, dict[str, Any]]:
    """Each classification's ``created_at`` as a UTC time (NaT when it cannot be read) and a
    report: rows with an unreadable time (left out of the replay, with a few examples) and rows
    that arrived out of order (earlier than a row with a smaller classification id)."""
    raw = classifications["created_at"]
    text = raw.astype("string").str.strip()
    # Zooniverse's own format ends in " UTC"; the rest of it is ISO 8601, which parses fast
    times = pd.to_datetime(text.str.replace(r"\s*UTC$", "", regex=True), utc=True, errors="coerce",
                           format="ISO8601")
    retry = times.isna() & text.notna() & (text != "")
    if retry.any():
        times[retry] = pd.to_datetime(text[retry], utc=True, errors="coerce", format="mixed")
    bad = times.isna()
    cid = classifications["classification_id"].to_numpy()
    by_id = np.argsort(cid, kind="stable")
    ns = times.to_numpy(dtype="datetime64[ns]").astype(np.int64)[by_id]
    valid = ~bad.to_numpy()[by_id]
    # the latest time of the valid rows before each row, in classification id order
    latest = np.maximum.accumulate(np.where(valid, ns, np.iinfo(np.int64).min))
    before = np.r_[np.iinfo(np.int64).min, latest[:-1]]
    late = valid & (ns < before)
    report = {
        "classifications": len(classifications),
        "unparseable_time": int(bad.sum()),
        "unparseable_examples": [
            {"classification_id": int(c), "created_at": None if pd.isna(v) else str(v)}
            for c, v in zip(classifications.loc[bad, "classification_id"].head(5), raw[bad].head(5))
        ],
        "out_of_order": int(late.sum()),
        "first": None if bad.all() else times.min().strftime(TIME_FORMAT),
        "last": None if bad.all() else times.max().strftime(TIME_FORMAT),
    }
    return times, report


@dataclass
class Point:
    """One point of an effort curve: the state of a strategy after some arrivals."""

    arrivals: int  # classifications replayed so far (used or not)
    human_classifications: int  # of those, used
    subjects_seen: int
    subjects_decided: int  # retired (fixed: every classification of the subject arrived)
    machine_rounds: int
    time: str
    score: dict[str, Any] | None = None  # a scorer's output (label F1 against a truth)


@dataclass
class ReplayResult:
    """The strategy's effort curve, its final consensus, and what happened to each subject."""

    strategy: str
    points: list[Point]
    consensus: ConsensusResult
    subjects: pd.DataFrame  # subject_id, n_arrived, n_used, retired, retired_as, retired_after
    machine: list[dict[str, Any]]
    report: dict[str, Any]


def retirable(subjects: pd.DataFrame, n_humans: pd.Series, spec: ConsensusSpec, min_humans: int,
              finished: dict[str, float]) -> pd.Series:
    """Which subjects of a consensus table may retire (see module doc), as a boolean Series by
    subject_id; ``n_humans``: used human classifications by subject_id."""
    s = subjects.set_index("subject_id")
    humans = n_humans.reindex(s.index, fill_value=0)
    rejected = s["swap_prob"].to_numpy(float) <= spec.swap.rejection_threshold
    most = finished["max_expected"]
    finished = ((s["risk"] < finished["max_risk"]) & (s["expected_false_pos"] < most)
                & (s["expected_inaccurate"] < most) & (s["expected_missed"] < most)).to_numpy()
    return pd.Series((humans.to_numpy() >= min_humans) & finished & ((s["n_boxes"].to_numpy() >= 1) | rejected),
                     index=s.index)


class MachineRounds(Protocol):
    """What a replay asks of a machine agent (:class:`clumpfinder.partnership.machine.MachineAgent`):
    given the consensus so far, the retired and the active subjects, the time and the round
    number, its classifications and clicks (export columns, user :data:`MACHINE_USER`) and a
    report, or None when it sits the round out."""

    def __call__(self, consensus: ConsensusResult, retired: np.ndarray, active: np.ndarray, when: str,
                 round_no: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]] | None: ...


def replay(parsed: ParsedExport, consensus_spec: ConsensusSpec, spec: PartnershipSpec, strategy: str,
           gold: pd.Series | None = None, scorer: Callable[[ConsensusResult], dict[str, Any]] | None = None,
           machine: MachineRounds | None = None, all_subjects: np.ndarray | None = None) -> ReplayResult:
    """Replay ``parsed`` in time order under ``strategy`` (see module doc).

    ``scorer`` turns a consensus into a score (label F1 against the truth), taken every
    ``spec.score_every`` used human classifications and at the end; ``machine`` is the machine
    agent (strategy ``machine`` only); ``all_subjects``: every subject of the survey (the machine
    classifies those not yet seen too; default: the export's).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    if consensus_spec.method != "em":
        raise ValueError("the partnership replay retires subjects on the EM consensus's risk: "
                         f"consensus.method must be 'em', not {consensus_spec.method!r}")
    if (strategy == "machine") != (machine is not None):
        raise ValueError("strategy 'machine' needs a machine agent, and only it")
    # the replay decides retirement itself: SWAP uses every classification it is given
    consensus_spec = dataclasses.replace(consensus_spec,
                                         swap=dataclasses.replace(consensus_spec.swap, stop_at_retirement=False))
    cls = parsed.classifications
    times, time_report = arrival_times(cls)
    ok = times.notna().to_numpy()
    order = np.lexsort((cls["classification_id"].to_numpy()[ok], times.to_numpy(dtype="datetime64[ns]")[ok]))
    arrivals = cls[ok].iloc[order].reset_index(drop=True)
    stamps = times[ok].iloc[order].dt.strftime(TIME_FORMAT).to_numpy()
    arrivals["created_at"] = stamps
    clicks = parsed.clicks[parsed.clicks["classification_id"].isin(arrivals["classification_id"])]
    subject_ids = np.unique(arrivals["subject_id"].to_numpy())
    if all_subjects is not None:
        subject_ids = np.union1d(subject_ids, np.asarray(all_subjects, np.int64))
    code = np.searchsorted(subject_ids, arrivals["subject_id"].to_numpy())
    n_subj, n = len(subject_ids), len(arrivals)
    arrived_total = np.bincount(code, minlength=n_subj)
    retired = np.zeros(n_subj, bool)
    retired_as = np.full(n_subj, "", dtype=object)
    retired_after = np.zeros(n_subj, np.int64)  # used human classifications when it retired
    n_arrived = np.zeros(n_subj, np.int64)
    n_used = np.zeros(n_subj, np.int64)
    used = np.zeros(n, bool)
    machine_cls = machine_clicks = None
    rounds: list[dict[str, Any]] = []
    points: list[Point] = []
    last_round = 0
    next_score = spec.score_every
    current: ConsensusResult | None = None

    def run(upto: int) -> ConsensusResult:
        rows = arrivals[:upto][used[:upto]]
        ids = rows["classification_id"]
        marks = clicks[clicks["classification_id"].isin(ids)]
        if machine_cls is not None:
            mine, my_marks = _in_the_queue(machine_cls, machine_clicks, rows)
            rows = pd.concat([rows, mine], ignore_index=True)
            marks = pd.concat([marks, my_marks], ignore_index=True)
        return run_consensus(ParsedExport(rows, marks, {}), consensus_spec, gold)

    for start in range(0, n, spec.check_every):
        stop = min(start + spec.check_every, n)
        c = code[start:stop]
        accept = ~retired[c]
        used[start:stop] = accept
        np.add.at(n_arrived, c, 1)
        np.add.at(n_used, c[accept], 1)
        current = None
        total_used = int(n_used.sum())
        if machine is not None and total_used - last_round >= spec.machine.every:
            current = run(stop)
            out = machine(current, subject_ids[retired], subject_ids[~retired], stamps[stop - 1], len(rounds) + 1)
            last_round = total_used
            info = {"round": len(rounds) + 1, "human_classifications": total_used, "time": stamps[stop - 1]}
            if out is not None:
                new_cls, new_clicks, details = out
                info.update(details)
                # its latest classification of a subject replaces the earlier ones
                if machine_cls is not None:
                    keep = ~machine_cls["subject_id"].isin(new_cls["subject_id"])
                    new_clicks = pd.concat([machine_clicks[machine_clicks["classification_id"].isin(
                        machine_cls.loc[keep, "classification_id"])], new_clicks], ignore_index=True)
                    new_cls = pd.concat([machine_cls[keep], new_cls], ignore_index=True)
                machine_cls, machine_clicks = new_cls, new_clicks
                current = None
            rounds.append(info)
        if strategy != "fixed":
            current = current or run(stop)
            humans = pd.Series(n_used, index=subject_ids)
            can = retirable(current.subjects, humans, consensus_spec, spec.min_humans, spec.finished)
            ids = can.index[can.to_numpy()]
            pos = np.searchsorted(subject_ids, ids)
            new = pos[~retired[pos]]
            if len(new):
                retired[new] = True
                boxes = current.subjects.set_index("subject_id").loc[subject_ids[new], "n_boxes"].to_numpy()
                retired_as[new] = np.where(boxes > 0, "clumps", "none")
                retired_after[new] = n_used[new]
        if total_used >= next_score or stop == n:
            current = current or run(stop)
            decided = retired if strategy != "fixed" else (n_arrived == arrived_total) & (arrived_total > 0)
            point = Point(arrivals=stop, human_classifications=total_used, subjects_seen=int((n_arrived > 0).sum()),
                          subjects_decided=int(decided.sum()), machine_rounds=len(rounds), time=stamps[stop - 1])
            if scorer is not None:
                point.score = scorer(current)
            points.append(point)
            log.info("%s: %d of %d classifications replayed, %d used, %d subjects decided%s", strategy, stop, n,
                     total_used, point.subjects_decided,
                     f", label F1 {point.score['f1']:.3f}" if point.score and not math.isnan(point.score["f1"]) else "")
            while next_score <= total_used:
                next_score += spec.score_every
    if current is None:  # an empty export (every time unreadable): nothing was replayed
        raise ValueError("no classification has a readable created_at time: nothing to replay "
                         f"({time_report['unparseable_time']} unreadable, e.g. {time_report['unparseable_examples'][:2]})")
    subjects = pd.DataFrame({"subject_id": subject_ids, "n_arrived": n_arrived, "n_used": n_used, "retired": retired,
                             "retired_as": retired_as, "retired_after": retired_after})
    report = {"strategy": strategy, "times": time_report, "classifications_replayed": n,
              "human_classifications_used": int(used.sum()), "classifications_not_used": int((~used).sum()),
              "subjects": n_subj, "subjects_retired": int(retired.sum()),
              "retired_as": {k: int((retired_as == k).sum()) for k in ("clumps", "none")},
              "machine_rounds": len(rounds)}
    return ReplayResult(strategy, points, current, subjects, rounds, report)


def _in_the_queue(machine_cls: pd.DataFrame, machine_clicks: pd.DataFrame,
                  humans: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The machine's classifications that count beside the ``humans`` used so far: those of
    subjects a human has classified (on a subject nobody saw, nobody could agree or disagree with
    it, and the EM would count its boxes as false positives), in the humans' click frame (it
    classified a subject nobody had seen in the image's pixels), entering SWAP no earlier than the
    subject's first human classification."""
    g = humans.groupby("subject_id")
    first, width, height = g["created_at"].min(), g["width"].median(), g["height"].median()
    cls = machine_cls[machine_cls["subject_id"].isin(first.index)].copy()
    fx = (cls["subject_id"].map(width) / cls["width"]).fillna(1.0).to_numpy()
    fy = (cls["subject_id"].map(height) / cls["height"]).fillna(1.0).to_numpy()
    cls["width"] = cls["width"] * fx
    cls["height"] = cls["height"] * fy
    cls["fwhm_px"] = cls["fwhm_px"] * fx
    entry = cls["subject_id"].map(first)
    cls["created_at"] = cls["created_at"].where(cls["created_at"] >= entry, entry)  # ISO strings sort as times
    scale = pd.DataFrame({"classification_id": cls["classification_id"].to_numpy(), "fx": fx, "fy": fy})
    clicks = machine_clicks.merge(scale, on="classification_id")
    clicks["x"] = clicks["x"] * clicks.pop("fx")
    clicks["y"] = clicks["y"] * clicks.pop("fy")
    return cls, clicks


def run_partnership(parsed: ParsedExport, consensus_spec: ConsensusSpec, spec: PartnershipSpec,
                    gold: pd.Series | None = None, scorer: Callable[[ConsensusResult], dict[str, Any]] | None = None,
                    machine: MachineRounds | None = None,
                    all_subjects: np.ndarray | None = None) -> dict[str, ReplayResult]:
    """The three strategies on one export (``machine`` None: the first two only)."""
    results = {}
    em_log = logging.getLogger("clumpfinder.crowd.boxem")
    level = em_log.level
    em_log.setLevel(logging.WARNING)  # hundreds of consensus runs: their EM iterations would drown the log
    try:
        for strategy in STRATEGIES if machine is not None else STRATEGIES[:2]:
            log.info("replaying the export: strategy %s", strategy)
            results[strategy] = replay(parsed, consensus_spec, spec, strategy, gold, scorer,
                                       machine if strategy == "machine" else None, all_subjects)
    finally:
        em_log.setLevel(level)
    return results
