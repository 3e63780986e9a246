"""The train/val/test split by galaxy and the nested order of the training pool (see
:mod:`clumpfinder.labels.coco` for how and why).

Splits are stratified on what the volunteers did with each subject with a fixed seed, drawn per
galaxy, with subjects of known truth kept out; the pool's nested order makes the subset of size n
the first n subjects of one fixed order.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from clumpfinder.labels.coco import SPLITS

MIN_STRATUM = 4


def _merge_rare(key: pd.Series, min_count: int) -> pd.Series:
    """Strata with fewer than ``min_count`` members merged into 'rare' (or, if that is still too
    small, into the largest stratum)."""
    counts = key.value_counts()
    rare = counts[counts < min_count].index
    key = key.where(~key.isin(rare), "rare")
    if (key == "rare").sum() < min_count and (key == "rare").any():
        key = key.where(key != "rare", counts.index[0])  # fold into the largest stratum
    return key


def strata(subjects: pd.DataFrame, min_count: int = MIN_STRATUM) -> pd.Series:
    """Stratum label per subject from what the volunteers did, whatever the consensus method:
    '<SWAP verdict>-<clicks per classification bin>'; rare strata merged.

    Strata do not depend on ``consensus.method``, so every method gets the same train/val/test
    galaxies and the same nested subsets, and their detectors can be compared on one test set.
    """
    p = subjects["swap_prob"].to_numpy()
    verdict = np.select([p <= 0.1, p >= 0.9], ["no", "yes"], "unsure")
    rate = subjects["n_clicks"].to_numpy() / np.maximum(subjects["n_classifications"].to_numpy(), 1)
    clicks = np.digitize(rate, [1e-9, 0.5, 1.5])  # none, < 0.5, 0.5-1.5, more per classification
    key = _merge_rare(pd.Series(verdict, dtype=object) + "-" + pd.Series(clicks).astype(str), min_count)
    return pd.Series(key.to_numpy(), index=subjects["subject_id"].to_numpy(), name="stratum")


def _empty_id(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or str(value).strip() == ""


def galaxy_codes(galaxies: Iterable[Any]) -> np.ndarray:
    """Integer galaxy code per subject, numbered in order of first appearance; a subject with an
    empty galaxy id (None, NaN, '') is a galaxy of its own. Ids compare as text (1 == '1')."""
    seen: dict[tuple[str, Any], int] = {}
    values = list(galaxies)
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        out[i] = seen.setdefault(("row", i) if _empty_id(v) else ("id", str(v)), len(seen))
    return out


def make_splits(subjects: pd.DataFrame, fractions: dict[str, float], seed: int,
                galaxies: Iterable[Any] | None = None) -> pd.DataFrame:
    """Assign each subject to train/val/test, every subject of one galaxy to the same split;
    returns subject_id, galaxy_id, split, stratum (sorted by subject_id).

    ``subjects`` needs swap_prob, n_clicks and n_classifications (the consensus subject table).
    ``galaxies``: the galaxy id of each row of ``subjects`` (default: its galaxy_id column if it
    has one, else one galaxy per subject); an empty id is a galaxy of its own, and galaxy_id then
    holds the subject id. The split is drawn over galaxies, stratified on each galaxy's most common
    subject stratum (ties: the first in alphabetical order; rare galaxy strata merged), with
    ``fractions`` of the galaxies per split: with several subjects per galaxy the subject shares
    follow only on average. ``stratum`` is the galaxy's.
    """
    total = sum(fractions[s] for s in SPLITS)
    if not np.isclose(total, 1.0):
        raise ValueError(f"labels.split_fractions must sum to 1, got {total:g}")
    key = strata(subjects)
    ids = key.index.to_numpy()
    if galaxies is None:
        galaxies = subjects["galaxy_id"] if "galaxy_id" in subjects.columns else ids
    galaxies = np.asarray(list(galaxies), dtype=object)
    if len(galaxies) != len(ids):
        raise ValueError(f"make_splits: {len(galaxies)} galaxy ids for {len(ids)} subjects")
    code = galaxy_codes(galaxies)
    n_gal = int(code.max()) + 1 if len(code) else 0
    # each galaxy's stratum: its subjects' most common one
    votes = pd.DataFrame({"g": code, "k": key.to_numpy()}).value_counts().rename("n").reset_index()
    gal_key = (votes.sort_values(["g", "n", "k"], ascending=[True, False, True]).drop_duplicates("g")
               .set_index("g")["k"].reindex(range(n_gal)).reset_index(drop=True))
    gal_key = _merge_rare(gal_key, MIN_STRATUM)
    n_test = int(round(fractions["test"] * n_gal))
    n_val = int(round(fractions["val"] * n_gal))
    if min(n_test, n_val, n_gal - n_test - n_val) < 1:
        raise ValueError(f"labels: {n_gal} galaxies ({len(ids)} subjects) are too few for split fractions {fractions}")

    def split(x, y, size, rs):
        try:
            return train_test_split(x, y, test_size=size, random_state=rs, stratify=y)
        except ValueError:  # a stratum too small for this split size: fall back to random
            return train_test_split(x, y, test_size=size, random_state=rs)

    rest, test, key_rest, _ = split(np.arange(n_gal), gal_key.to_numpy(), n_test, seed)
    train, val, _, _ = split(rest, key_rest, n_val, seed + 1)
    gal_split = np.empty(n_gal, dtype=object)
    gal_split[train], gal_split[val], gal_split[test] = "train", "val", "test"
    filled = np.array([sid if _empty_id(g) else g for g, sid in zip(galaxies, ids)], dtype=object)
    out = pd.DataFrame({"subject_id": ids, "galaxy_id": filled, "split": gal_split[code],
                        "stratum": gal_key.to_numpy()[code]})
    return out.sort_values("subject_id").reset_index(drop=True)


def nested_order(splits: pd.DataFrame, seed: int) -> np.ndarray:
    """Training subject ids in nested-subset order (stratified prefixes).

    Galaxies are ordered (stratified on the galaxy's stratum) and each brings all its training
    subjects at once, in subject id order; without a galaxy_id column every subject is a galaxy.
    """
    rng = np.random.default_rng(seed)
    train = splits[splits["split"] == "train"].sort_values("subject_id")
    sids = train["subject_id"].to_numpy()
    code = galaxy_codes(train["galaxy_id"] if "galaxy_id" in train.columns else sids)
    n_gal = int(code.max()) + 1 if len(code) else 0
    first = np.unique(code, return_index=True)[1]  # each galaxy's first (smallest) subject
    unit_stratum = train["stratum"].to_numpy()[first]
    keys = np.empty(n_gal)
    for _, idx in pd.Series(unit_stratum).groupby(unit_stratum).indices.items():
        perm = rng.permutation(len(idx))
        keys[idx[perm]] = (np.arange(len(idx)) + rng.uniform(size=len(idx))) / len(idx)
    rank = np.empty(n_gal, np.int64)
    rank[np.argsort(keys, kind="stable")] = np.arange(n_gal)
    return sids[np.lexsort((sids, rank[code]))]


def split_subjects(labelled: pd.DataFrame, manifest: pd.DataFrame, fractions: dict[str, float], seed: int,
                   group_by: str | None = "galaxy_id", gold: Iterable[int] = (), injected: Iterable[int] = (),
                   manifest_file: str = "the survey manifest",
                   one_subject_per_galaxy_without_column: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The split of a run and its report (``labels/split_report.json``).

    ``labelled``: the label stage's subject table (consensus or catalogue subjects.csv); only
    subjects with an image in ``manifest`` take part (the others are counted). The galaxy of each
    subject is the manifest's ``group_by`` column (null: one subject per galaxy). A manifest
    without that column is an error naming ``manifest_file`` and the column, unless
    ``one_subject_per_galaxy_without_column`` (a simulated survey: one subject per galaxy).

    ``gold`` (SWAP's gold subjects: ``data.gold``, or in simulation survey/gold.csv) and
    ``injected`` (real subjects with synthetic clumps, origin 'sim') are subjects whose truth is
    known: they are never detection labels. They get the split value 'gold' / 'injected' (a
    subject in both: 'gold'), which no consumer selects: not the COCO files, the nested subsets,
    the pretraining pools (``pretrain.pool`` allows train and val only) or the truth labels.

    The other subjects of a gold or injected subject's galaxy may be in any split, the test split
    included. What would make a test galaxy unfair is that the detector, or the encoder pretrained
    for it, saw that galaxy's image in training; an excluded subject is seen by neither. An injected
    subject is the real galaxy's image plus synthetic clumps, so it is the same galaxy as the real
    subject; were it a training label, the real subject would have to leave the test split, but it
    is not one. A gold subject's truth reaches the labels only through SWAP's volunteer skills,
    which weigh every subject's classifications alike, test ones included, whatever their galaxy.
    Keeping those galaxies out of the test split would only thin it and skew it towards galaxies
    shown once. How many galaxies are shared that way is in the report.
    """
    total = sum(fractions[s] for s in SPLITS)
    if not np.isclose(total, 1.0):
        raise ValueError(f"labels.split_fractions must sum to 1, got {total:g}")
    have_image = labelled["subject_id"].isin(manifest["subject_id"])
    cand = labelled[have_image.to_numpy()].reset_index(drop=True)
    man = manifest.drop_duplicates("subject_id").set_index("subject_id")
    if group_by is None:
        grouping = "none: every subject is a galaxy of its own (labels.group_by null)"
        galaxy = cand["subject_id"].astype(object)
    elif group_by in man.columns:
        grouping = f"manifest column {group_by}"
        galaxy = cand["subject_id"].map(man[group_by]).astype(object)
    elif one_subject_per_galaxy_without_column:
        grouping = f"simulated survey without a {group_by} column: one subject per galaxy"
        galaxy = cand["subject_id"].astype(object)
    else:
        raise ValueError(
            f"{manifest_file}: the survey manifest has no column '{group_by}' (labels.group_by), which names each "
            f"subject's galaxy so that all subjects of one galaxy go to one split; its columns are "
            f"{', '.join(map(str, manifest.columns))}. Set labels.group_by to one of them, or to null for one "
            "subject per galaxy")
    no_galaxy = np.array([_empty_id(g) for g in galaxy], bool)
    is_gold = cand["subject_id"].isin(list(gold)).to_numpy()
    is_injected = cand["subject_id"].isin(list(injected)).to_numpy() & ~is_gold
    keep = ~is_gold & ~is_injected
    if not keep.any():
        raise ValueError(f"labels: no subject is left for the detection splits: {len(labelled)} labelled, "
                         f"{int((~have_image).sum())} without an image, {int(is_gold.sum())} gold, "
                         f"{int(is_injected.sum())} injected (origin 'sim')")
    splits = make_splits(cand[keep].reset_index(drop=True), fractions, seed, galaxies=galaxy[keep])
    order = nested_order(splits, seed)
    splits["train_rank"] = splits["subject_id"].map({sid: k for k, sid in enumerate(order)})
    out_ids = cand["subject_id"].to_numpy()[~keep]
    excluded = pd.DataFrame({
        "subject_id": out_ids,
        "galaxy_id": [sid if _empty_id(g) else g for g, sid in zip(galaxy[~keep], out_ids)],
        "split": np.where(is_gold[~keep], "gold", "injected"),
    })
    table = pd.concat([splits, excluded], ignore_index=True) if len(excluded) else splits
    table = table.sort_values("subject_id").reset_index(drop=True)
    # galaxies per split, galaxies shown in several subjects, galaxies shared with an excluded subject
    code = galaxy_codes(galaxy)
    by_sid = dict(zip(cand["subject_id"], code))
    split_code = splits["subject_id"].map(by_sid).to_numpy()
    in_split = {s: set(split_code[(splits["split"] == s).to_numpy()]) for s in SPLITS}
    sizes = pd.Series(code[keep]).value_counts()
    excluded_galaxies = set(code[~keep])
    report = {
        "grouping": grouping,
        "subjects_labelled": len(labelled),
        "subjects_without_image": int((~have_image).sum()),
        "gold_subjects_listed": len(set(gold)),
        "gold_subjects_excluded": int(is_gold.sum()),
        "injected_subjects": int(is_injected.sum()),
        "subjects_without_galaxy_id": int(no_galaxy.sum()),
        "subjects": {s: int((splits["split"] == s).sum()) for s in SPLITS},
        "galaxies": {s: len(in_split[s]) for s in SPLITS},
        "galaxies_with_several_subjects": int((sizes > 1).sum()),
        "subjects_in_galaxies_with_several_subjects": int(sizes[sizes > 1].sum()),
        # galaxies of a split that also have a gold or injected subject (allowed: see above)
        "galaxies_shared_with_excluded_subjects": {s: len(in_split[s] & excluded_galaxies) for s in SPLITS},
    }
    if no_galaxy.any():
        report["note"] = (f"{int(no_galaxy.sum())} subject(s) without a galaxy id: each is a galaxy of its own "
                          "(galaxy_id = subject_id in splits.csv)")
    return table, report
