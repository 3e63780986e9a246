"""Simulated Clump Scout volunteers clicking on the simulated survey.

Volunteers see what is in the image, not the truth table: every object (giant clump, knot, star,
background galaxy) has an *appearance* (:data:`APPEARANCE_COLUMNS`: position, local contrast,
signal-to-noise, colour) and volunteers decide from it alone whether they notice it and which tool
they use. The same perception model drives the simulated Galaxy Zoo votes of the pretraining
stage (:mod:`clumpfinder.data.morphology`). Because everyone looks at the same image, errors are
correlated as in the real project: a star-forming knot that stands out is marked by many
volunteers although it is far below any giant-clump definition, and a bluish foreground star is
called a clump by most.

Each volunteer has an individual skill drawn once, with wide, heavy-tailed spreads:

* ``miss``: chance to overlook even an obvious object;
* ``c50``: the local contrast (object peak over the host's surface brightness where it sits) they
  notice half of the time: the eye picks out knots that stand out from the disc around them, so a
  faint clump in the outskirts is seen and a brighter one on the bulge is missed; visibility also
  falls with the object's signal-to-noise;
* ``false_rate``: mean number of spurious clicks per subject, placed on the galaxy's light
  (bright disc patches, noise); gamma-distributed over volunteers with shape
  ``false_clicks_shape`` (below 1: most click little, a few a lot);
* ``scatter``: positional scatter of their clicks in units of the PSF FWHM;
* ``confusion``: chance to pick the other tool than the object's look suggests (a red object
  looks odd: :func:`odd_look`);
* flags: centre clickers (mark the bulge), spammers (random clicks anywhere), colluders (all mark
  one shared false spot per subject, an adversarial test of the consensus), logged-out.

Volunteers are drawn for each subject without repetition with probabilities proportional to a
heavy-tailed activity (a few volunteers do most of the work, as on Zooniverse). The output is a
classification export in the real Zooniverse format, so the same reader handles real exports.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from clumpfinder.io import known_fields
from clumpfinder.data.kinds import ODD_KINDS, STAR_FORMING
from clumpfinder.data.zooniverse import classification_row, write_export


EPOCH = dt.datetime(2019, 6, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class CrowdSpec:
    """The ``volunteers`` section of the configuration."""

    seed: int
    n_volunteers: int
    classifications_per_subject: int
    activity_sigma: float
    logged_out_fraction: float
    spammer_fraction: float
    centre_clicker_fraction: float
    colluder_fraction: float
    miss_prob: dict[str, float]
    c50: dict[str, float]
    snr50: float
    false_clicks_per_subject: float
    false_clicks_shape: float
    scatter_fwhm: dict[str, float]
    odd_look: dict[str, float]
    odd_confusion: dict[str, float]
    duplicate_tap_prob: float
    corrupt_fraction: float
    workflow: dict[str, Any]
    gold: dict[str, float]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "CrowdSpec":
        return cls(**known_fields(cls, cfg, "volunteers"))


def draw_population(spec: CrowdSpec, rng: np.random.Generator) -> pd.DataFrame:
    """The volunteers' true skills (also written out, so consensus methods can be scored)."""
    n = spec.n_volunteers
    kind = np.full(n, "normal", dtype=object)
    u = rng.uniform(size=n)
    edges = np.cumsum([spec.spammer_fraction, spec.centre_clicker_fraction, spec.colluder_fraction])
    kind[u < edges[0]] = "spammer"
    kind[(u >= edges[0]) & (u < edges[1])] = "centre_clicker"
    kind[(u >= edges[1]) & (u < edges[2])] = "colluder"
    logged_out = rng.uniform(size=n) < spec.logged_out_fraction
    pop = pd.DataFrame(
        {
            "volunteer": np.arange(n),
            "user_id": np.where(logged_out, -1, 1_000_000 + rng.permutation(n)),
            "kind": kind,
            "logged_in": ~logged_out,
            "activity": rng.lognormal(0.0, spec.activity_sigma, n),
            "miss": rng.beta(spec.miss_prob["a"], spec.miss_prob["b"], n),
            "c50": 10 ** rng.normal(np.log10(spec.c50["median"]), spec.c50["sigma_dex"], n),
            "false_rate": rng.gamma(spec.false_clicks_shape, spec.false_clicks_per_subject / spec.false_clicks_shape, n),
            "scatter": 10 ** rng.normal(np.log10(spec.scatter_fwhm["median"]), spec.scatter_fwhm["sigma_dex"], n),
            "confusion": rng.beta(spec.odd_confusion["a"], spec.odd_confusion["b"], n),
        }
    )
    pop["user_name"] = [
        f"volunteer_{i:05d}" if li else "not-logged-in-" + hashlib.sha1(f"{spec.seed}-{i}".encode()).hexdigest()[:20]
        for i, li in zip(pop["volunteer"], pop["logged_in"])
    ]
    return pop


#: what a volunteer can see of an object (truth columns with no flux fraction and no class)
APPEARANCE_COLUMNS = ["subject_id", "x", "y", "contrast_g", "contrast_r", "snr_g", "colour_gr"]


def appearance(objects: pd.DataFrame) -> dict[int, dict[str, np.ndarray]]:
    """Per subject, arrays ``x``, ``y``, ``contrast`` (the larger of the g and r local contrasts:
    a blue knot stands out in g, a red star in r), ``snr_g`` and ``colour_gr`` of its objects.

    Reads only :data:`APPEARANCE_COLUMNS`: what volunteers do never depends on an object's class
    or flux fraction, only on how it looks."""
    missing = [c for c in APPEARANCE_COLUMNS if c not in objects.columns]
    if missing:
        raise ValueError(f"object table lacks appearance column(s) {', '.join(missing)}")
    seen = objects[APPEARANCE_COLUMNS]
    contrast = np.maximum(seen["contrast_g"].to_numpy(float), seen["contrast_r"].to_numpy(float))
    out = {}
    for sid, idx in seen.groupby("subject_id").indices.items():
        out[int(sid)] = {"x": seen["x"].to_numpy(float)[idx], "y": seen["y"].to_numpy(float)[idx],
                         "contrast": contrast[idx], "snr_g": seen["snr_g"].to_numpy(float)[idx],
                         "colour_gr": seen["colour_gr"].to_numpy(float)[idx]}
    return out


def visibility(contrast: np.ndarray, snr: np.ndarray, c50: float, snr50: float) -> np.ndarray:
    """Probability of noticing an object: logistic in log contrast and in log S/N."""
    contrast = np.maximum(contrast, 1e-6)
    snr = np.maximum(snr, 1e-6)
    return 1.0 / (1.0 + (c50 / contrast) ** 3) / (1.0 + (snr50 / snr) ** 2)


def odd_look(colour_gr: np.ndarray, look: dict[str, float]) -> np.ndarray:
    """Probability that an object looks odd (red against the blue star-forming knots): logistic in
    its g - r colour around ``look['colour_gr']`` with width ``look['width']``."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(colour_gr, float) - look["colour_gr"]) / look["width"]))


def _disc_points(rng, subj: dict[str, Any], k: int) -> np.ndarray:
    """``k`` points following the inclined disc's light (PNG pixel coordinates)."""
    rd = subj["half_light_arcsec"] / 1.678 / subj["pixel_scale_arcsec"]
    r = rng.gamma(2.0, rd, k)
    th = rng.uniform(0, 2 * np.pi, k)
    x, y = r * np.cos(th), r * np.sin(th) * np.cos(np.radians(subj["inclination_deg"]))
    pa = np.radians(subj["position_angle_deg"])
    dx, dy = x * np.cos(pa) - y * np.sin(pa), x * np.sin(pa) + y * np.cos(pa)
    return np.column_stack([subj["width"] / 2 + dx, subj["height"] / 2 - dy])


def volunteer_marks(
    rng: np.random.Generator, vol: dict[str, Any], subj: dict[str, Any],
    objects: dict[str, np.ndarray] | None, spec: "CrowdSpec",
) -> list[tuple[float, float, int]]:
    """The clicks (x, y, tool) one volunteer makes on one subject.

    ``objects``: the subject's objects as :func:`appearance` gives them (None for a subject
    without any).
    """
    w, h, fwhm = subj["width"], subj["height"], subj["psf_fwhm_pixels"]
    marks: list[tuple[float, float, int]] = []
    if vol["kind"] == "spammer":
        k = rng.poisson(4.0)
        for x, y, t in zip(rng.uniform(0, w, k), rng.uniform(0, h, k), rng.integers(0, 2, k)):
            marks.append((x, y, int(t)))
        return marks
    if objects is not None:
        n = len(objects["x"])
        p = (1.0 - vol["miss"]) * visibility(objects["contrast"], objects["snr_g"], vol["c50"], spec.snr50)
        seen = np.flatnonzero(rng.uniform(size=n) < p)
        sigma = vol["scatter"] * fwhm
        tools = (rng.uniform(size=seen.size) < odd_look(objects["colour_gr"][seen], spec.odd_look)).astype(int)
        flip = rng.uniform(size=seen.size) < vol["confusion"]
        tools = np.where(flip, 1 - tools, tools)
        xs = objects["x"][seen] + rng.normal(0, sigma, seen.size)
        ys = objects["y"][seen] + rng.normal(0, sigma, seen.size)
        marks.extend(zip(xs.tolist(), ys.tolist(), tools.tolist()))
    k = rng.poisson(vol["false_rate"])
    if k:
        for x, y in _disc_points(rng, subj, k):
            marks.append((x, y, int(rng.uniform() < 0.15)))
    if vol["kind"] == "centre_clicker" and rng.uniform() < 0.8:
        s = vol["scatter"] * fwhm
        marks.append((w / 2 + rng.normal(0, s), h / 2 + rng.normal(0, s), 0))
    if vol["kind"] == "colluder":  # one false spot per subject, the same for every colluder
        (x, y), = _disc_points(np.random.default_rng([spec.seed, 3, int(subj["subject_id"])]), subj, 1)
        s = vol["scatter"] * fwhm
        marks.append((x + rng.normal(0, s), y + rng.normal(0, s), 0))
    taps = [m for m in marks if rng.uniform() < spec.duplicate_tap_prob]
    marks.extend((x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), t) for x, y, t in taps)
    # clicks land on the displayed image only; keep those a hair outside (the reader drops them)
    return [(float(np.clip(x, -2, w + 2)), float(np.clip(y, -2, h + 2)), t) for x, y, t in marks]


def _corrupt(row: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """Damage a row the way real exports are damaged."""
    kind = rng.integers(0, 4)
    row = dict(row)
    if kind == 0:  # truncated JSON
        row["annotations"] = row["annotations"][: max(1, len(row["annotations"]) // 2)]
    elif kind == 1:  # metadata without subject dimensions (happens when the image failed to load)
        row["metadata"] = row["metadata"].replace('"subject_dimensions"', '"subject_dimensions_"')
    elif kind == 2:  # a click far outside the image
        row["annotations"] = row["annotations"].replace('"value":[', '"value":[{"x":-500.0,"y":9999.0,"tool":0,"frame":0,"details":[]},', 1)
    else:  # a stray tap in the corner, recorded with the newer classifier's toolIndex key
        row["annotations"] = row["annotations"].replace(
            '"value":[', '"value":[{"x":10.0,"y":10.0,"toolIndex":0,"frame":0,"details":[]},', 1
        )
    return row


def simulate_classifications(
    spec: CrowdSpec, manifest: pd.DataFrame, truth: pd.DataFrame
) -> tuple[Iterator[dict[str, str]], pd.DataFrame]:
    """Return (export rows in time order, volunteer population with true skills)."""
    rng = np.random.default_rng(spec.seed)
    pop = draw_population(spec, rng)
    k = spec.classifications_per_subject
    if k > len(pop):
        raise ValueError(
            f"volunteers.classifications_per_subject ({k}) exceeds volunteers.n_volunteers ({len(pop)})"
        )
    weights = pop["activity"].to_numpy() / pop["activity"].sum()
    by_subject = appearance(truth)
    vols = pop.to_dict("records")
    subjects = manifest.to_dict("records")

    # classification times: subjects come up in random order over ~a year, each volunteer's
    # classification a few minutes apart
    events = []
    for subj in subjects:
        chosen = rng.choice(len(pop), size=k, replace=False, p=weights)
        start = rng.uniform(0, 365 * 86400)
        for v in chosen:
            events.append((start + rng.exponential(3 * 86400), subj["subject_id"], int(v)))
    events.sort()

    def rows() -> Iterator[dict[str, str]]:
        row_rng = np.random.default_rng([spec.seed, 1])
        subj_by_id = {s["subject_id"]: s for s in subjects}
        for n, (t, sid, v) in enumerate(events):
            subj, vol = subj_by_id[sid], vols[v]
            marks = volunteer_marks(row_rng, vol, subj, by_subject.get(sid), spec)
            created = EPOCH + dt.timedelta(seconds=float(t))
            duration = dt.timedelta(seconds=float(row_rng.uniform(5, 60)))
            row = classification_row(
                classification_id=200_000_000 + n,
                user_name=vol["user_name"],
                user_id=None if not vol["logged_in"] else int(vol["user_id"]),
                user_ip=hashlib.sha1(f"ip-{vol['volunteer']}".encode()).hexdigest()[:20],
                workflow=spec.workflow,
                created_at=created.strftime("%Y-%m-%d %H:%M:%S UTC"),
                started_at=(created - duration).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                finished_at=created.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                subject_id=int(sid),
                subject_meta={
                    "ra": round(subj["ra"], 6), "dec": round(subj["dec"], 6),
                    "redshift": round(subj["redshift"], 5),
                    "psf_fwhm_arcsec": round(subj["psf_fwhm_arcsec"], 4),
                    "arcsec_per_side": round(subj["arcsec_per_side"], 3),
                    "#fwhm_pixels": round(subj["psf_fwhm_pixels"], 4),
                    "origin": "real", "image": subj["png"],
                },
                width=int(subj["width"]), height=int(subj["height"]), marks=marks,
            )
            if row_rng.uniform() < spec.corrupt_fraction:
                row = _corrupt(row, row_rng)
            yield row

    return rows(), pop


def simulate_export(spec: CrowdSpec, manifest: pd.DataFrame, truth: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Write the export CSV; return the volunteer population (true skills)."""
    rows, pop = simulate_classifications(spec, manifest, truth)
    write_export(rows, path)
    return pop


def gold_subjects(spec: CrowdSpec, manifest: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """A random share of subjects with their truth, as SWAP's gold (training) subjects.

    A subject has clumps when it has an odd object (or field source) or a star-forming region (clump or knot) of at
    least ``gold.min_flux_fraction`` of the galaxy's g flux (the giant-clump definition).
    """
    rng = np.random.default_rng([spec.seed, 2])
    ids = np.sort(manifest["subject_id"].to_numpy())
    chosen = np.sort(rng.choice(ids, size=int(round(spec.gold["fraction"] * len(ids))), replace=False))
    target = truth["kind"].isin(ODD_KINDS) | (truth["kind"].isin(STAR_FORMING)
                                         & (truth["flux_fraction_g"] >= spec.gold["min_flux_fraction"]))
    has = set(truth.loc[target, "subject_id"])
    return pd.DataFrame({"subject_id": chosen, "has_clumps": [int(i in has) for i in chosen]})
