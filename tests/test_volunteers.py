"""The simulated volunteers: what they mark of a subject."""

from __future__ import annotations

import dataclasses

import numpy as np

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
