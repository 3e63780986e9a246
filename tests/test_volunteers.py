"""The simulated volunteers: what they mark of a subject."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clumpfinder.data.volunteers import CrowdSpec, volunteer_marks

SUBJECT = {"subject_id": 1, "width": 96, "height": 96, "psf_fwhm_pixels": 4.0, "half_light_arcsec": 5.0,
           "pixel_scale_arcsec": 0.25, "inclination_deg": 0.0, "position_angle_deg": 0.0}
#: an able volunteer: never misses, sees faint contrast, clicks nothing false
ABLE = {"kind": "normal", "miss": 0.0, "c50": 0.01, "scatter": 0.1, "confusion": 0.0, "false_rate": 0.0}
#: two bright blue objects: one on the galaxy (1 half-light radius out, 20 px), one beside it (2.4, 48 px)
OBJECTS = {"x": np.array([68.0, 48.0]), "y": np.array([48.0, 0.5]), "contrast": np.array([50.0, 50.0]),
           "snr_g": np.array([100.0, 100.0]), "colour_gr": np.array([0.1, 0.1])}


def _marked(spec: CrowdSpec, n: int = 30) -> np.ndarray:
    """How often each object gets a click within 2 px, over n volunteers."""
    rng = np.random.default_rng(0)
    hits = np.zeros(2)
    for _ in range(n):
        marks = np.array([(x, y) for x, y, _ in volunteer_marks(rng, ABLE, SUBJECT, OBJECTS, spec)])
        for i in range(2):
            hits[i] += bool(len(marks)) and np.hypot(*(marks - [OBJECTS["x"][i], OBJECTS["y"][i]]).T).min() < 2
    return hits / n


def test_volunteers_mark_only_what_lies_on_the_galaxy(tiny_config):
    """With max_radius_half_light set, an object beyond that many half-light radii of the centre
    (a star beside the galaxy) is never marked; without it, both are."""
    spec = dataclasses.replace(CrowdSpec.from_config(tiny_config["volunteers"]), duplicate_tap_prob=0.0)
    assert spec.max_radius_half_light is None
    assert (_marked(spec) > 0.9).all()
    near, far = _marked(dataclasses.replace(spec, max_radius_half_light=2.0))
    assert near > 0.9 and far == 0.0
    near, far = _marked(dataclasses.replace(spec, max_radius_half_light=3.0))
    assert near > 0.9 and far > 0.9


def test_morphology_voters_see_only_what_lies_on_the_galaxy(tiny_config):
    """The same rule for Galaxy Zoo's votes: a red star beside a featureless galaxy makes voters
    call it odd only while they look beyond the galaxy."""
    import pandas as pd

    from clumpfinder.data.morphology import VoteSpec, simulate_votes

    crowd = CrowdSpec.from_config(tiny_config["volunteers"])
    votes = VoteSpec.from_config(tiny_config["morphology"])
    votes = dataclasses.replace(votes, random_answer_fraction=0.0, votes_per_galaxy=200, min_votes=200)
    n = 20
    manifest = pd.DataFrame({
        "subject_id": np.arange(n), "bulge_to_total": 0.2, "inclination_deg": 30.0, "mag_r": 16.0, "n_arms": 0,
        "arm_light_fraction": 0.0, **{k: SUBJECT[k] for k in ("width", "height", "half_light_arcsec", "pixel_scale_arcsec")}})
    star = pd.DataFrame({"subject_id": np.arange(n), "x": 48.0, "y": 2.0, "contrast_g": 1e3, "contrast_r": 1e3,
                         "snr_g": 300.0, "colour_gr": 1.4})  # 2.3 half-light radii out
    odd_share = {}
    for limit in (None, 2.0):
        v = simulate_votes(manifest, star, votes, dataclasses.replace(crowd, max_radius_half_light=limit))
        odd_share[limit] = (v["odd_feature_yes"] / (v["odd_feature_yes"] + v["odd_feature_no"])).mean()
    assert odd_share[None] > 0.8 and odd_share[2.0] < 0.05
    with pytest.raises(ValueError, match="half_light_arcsec"):
        simulate_votes(manifest.drop(columns="half_light_arcsec"), star, votes,
                       dataclasses.replace(crowd, max_radius_half_light=2.0))
