"""The simulated survey: geometry, WCS, physics sanity and determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from clumpfinder.imaging import fits_pixel_to_png, png_to_fits_pixel
from clumpfinder.data.simulate import BANDS, simulate_survey


def test_manifest_columns_and_files(tiny_survey):
    man = tiny_survey["manifest"]
    n = tiny_survey["spec"].n_galaxies
    assert len(man) == n and man["subject_id"].is_unique
    for col in ("subject_id", "ra", "dec", "redshift", "psf_fwhm_arcsec", "psf_fwhm_pixels",
                "pixel_scale_arcsec", "width", "height"):
        assert col in man
    assert (man["redshift"] < 0.3).all() and (man["redshift"] > 0).all()
    np.testing.assert_allclose(man["psf_fwhm_pixels"], man["psf_fwhm_arcsec"] / man["pixel_scale_arcsec"])
    for name in man["png"]:
        with Image.open(tiny_survey["root"] / "png" / name) as im:
            assert im.size == (tiny_survey["spec"].image_size,) * 2 and im.mode == "RGB"


def test_truth_inside_images_and_some_galaxies_without_clumps(tiny_survey):
    man, truth = tiny_survey["manifest"], tiny_survey["truth"]
    size = tiny_survey["spec"].image_size
    assert len(truth) > 0
    assert truth["x"].between(0, size).all() and truth["y"].between(0, size).all()
    assert set(truth["kind"]) == {"clump", "knot", "odd"}
    assert (man["n_clumps"] == 0).any(), "some galaxies must have no clumps"
    assert (man["n_clumps"] > 0).any()
    for kind in ("clump", "knot", "odd"):
        counts = truth[truth["kind"] == kind].groupby("subject_id").size()
        assert (man.set_index("subject_id")[f"n_{kind}s" if kind != "odd" else "n_odd"].loc[counts.index]
                == counts).all()


def test_flux_fractions_span_thresholds(tiny_survey):
    """Giant clumps straddle the 3 % and 8 % definitions; knots stay below 1.5 %, yet the truth
    keeps every one of them with its flux fraction."""
    truth = tiny_survey["truth"]
    ff = truth.query("kind == 'clump'")["flux_fraction_g"]
    assert ff.min() < 0.03 and ff.max() > 0.08 and ff.min() >= 0.015 * 0.999
    knots = truth.query("kind == 'knot'")["flux_fraction_g"]
    assert len(knots) > len(ff) / 2 and knots.max() < 0.015 and knots.min() >= 0.003 * 0.999
    assert truth[["flux_fraction_g", "contrast_g", "snr_g", "colour_gr"]].notna().all().all()


def test_catalogue_without_images_matches_the_rendered_survey(tiny_survey, tmp_path):
    """simulate_catalogue gives the same tables without rendering; other ids and no FITS on request."""
    from clumpfinder.data.simulate import simulate_catalogue

    spec = dataclasses.replace(tiny_survey["spec"], n_galaxies=8)
    man, truth = simulate_survey(spec, tmp_path / "png", tmp_path / "fits")
    man2, truth2 = simulate_catalogue(spec)
    pd.testing.assert_frame_equal(man, man2)
    pd.testing.assert_frame_equal(truth, truth2)
    man3, truth3 = simulate_survey(spec, tmp_path / "png3", None, first_subject_id=10_000_000)
    assert not (tmp_path / "fits3").exists() and "fits" not in man3
    assert (man3["subject_id"] == man["subject_id"] - 100_000 + 10_000_000).all()
    np.testing.assert_allclose(truth3["x"], truth["x"])
    assert sorted(p.name for p in (tmp_path / "png3").iterdir()) == [f"{i}.png" for i in man3["subject_id"]]


def test_fits_files_pass_strict_verification(tiny_survey):
    """The survey writes its FITS files without astropy's per-file check (for speed): a written
    file must still pass the strictest verification."""
    name = tiny_survey["manifest"]["fits"].iloc[0]
    with fits.open(tiny_survey["root"] / "fits" / name) as hdul:
        hdul.verify("exception")


def test_arms_hold_their_flux_and_show_in_the_image(tiny_survey):
    """The analytic arm profile integrates to the arm flux, and a spiral galaxy's FITS image is
    brighter on the arm ridge than between the arms at the same radius."""
    from clumpfinder.data.simulate import arm_surface_brightness

    host = {"position_angle_deg": 20.0, "inclination_deg": 40.0, "disc_scale_arcsec": 3.0, "n_arms": 2,
            "arm_pitch_deg": 20.0, "arm_phase": 0.5, "arm_flux_g": 7.0}
    step = 0.05
    grid = np.arange(-60, 60, step)
    dx, dy = np.meshgrid(grid, grid)
    assert arm_surface_brightness(host, dx, dy, "g").sum() * step**2 == pytest.approx(7.0, rel=0.01)
    assert arm_surface_brightness({**host, "n_arms": 0}, dx[:3, :3], dy[:3, :3], "g").max() == 0.0

    man = tiny_survey["manifest"]
    spiral = man[(man["n_arms"] > 0) & (man["arm_light_fraction"] > 0.3) & (man["inclination_deg"] < 50)]
    assert len(spiral), "the tiny survey needs a face-on spiral"
    row = spiral.sort_values("half_light_arcsec").iloc[-1]
    size = tiny_survey["spec"].image_size
    with fits.open(tiny_survey["root"] / "fits" / row["fits"]) as hdul:
        g = hdul["G"].data.astype(float)
    # the arm ridge vs the inter-arm region on a ring of 1.5 disc scale lengths (FITS: y up)
    from clumpfinder.data.simulate import _catalogue

    hosts, _, _ = _catalogue(tiny_survey["spec"], 100_000)
    h = hosts.set_index("subject_id").loc[row["subject_id"]].to_dict()
    scale = h["pixel_scale_arcsec"]
    ang = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = 1.5 * h["disc_scale_arcsec"]
    cos_i = np.cos(np.radians(h["inclination_deg"]))
    pa = np.radians(h["position_angle_deg"])
    x, y = r * np.cos(ang), r * np.sin(ang) * cos_i
    ox, oy = x * np.cos(pa) - y * np.sin(pa), x * np.sin(pa) + y * np.cos(pa)
    arm = arm_surface_brightness(h, ox, oy, "g")
    px = np.clip(np.round((size - 1) / 2 + ox / scale).astype(int), 0, size - 1)
    py = np.clip(np.round((size - 1) / 2 + oy / scale).astype(int), 0, size - 1)
    on, off = arm > np.quantile(arm, 0.8), arm < np.quantile(arm, 0.2)
    assert g[py[on], px[on]].mean() > g[py[off], px[off]].mean()


def test_wcs_round_trip(tiny_survey):
    """Truth RA/Dec -> the FITS file's own WCS -> pixel -> PNG coordinates recovers x, y."""
    truth = tiny_survey["truth"]
    size = tiny_survey["spec"].image_size
    for sid, objs in list(truth.groupby("subject_id"))[:10]:
        with fits.open(tiny_survey["root"] / "fits" / f"{sid}.fits") as hdul:
            assert [h.name for h in hdul[1:]] == [b.upper() for b in BANDS]
            w = WCS(hdul["R"].header)
            assert w.has_celestial
            px, py = w.wcs_world2pix(objs["ra"], objs["dec"], 0)
        x, y = fits_pixel_to_png(px, py, size)
        np.testing.assert_allclose(x, objs["x"], atol=1e-6)
        np.testing.assert_allclose(y, objs["y"], atol=1e-6)


def test_galaxy_centre_is_at_manifest_position(tiny_survey):
    man = tiny_survey["manifest"].iloc[0]
    with fits.open(tiny_survey["root"] / "fits" / f"{man['subject_id']}.fits") as hdul:
        w = WCS(hdul["R"].header)
    size = tiny_survey["spec"].image_size
    px, py = png_to_fits_pixel(size / 2, size / 2, size)
    ra, dec = w.wcs_pix2world(px, py, 0)
    assert ra == pytest.approx(man["ra"], abs=1e-9) and dec == pytest.approx(man["dec"], abs=1e-9)


def test_clumps_are_blue_and_bright_where_truth_says(tiny_survey):
    """Physics sanity: clumps bluer than the host; the brightest clump shows in its FITS image."""
    man = tiny_survey["manifest"].set_index("subject_id")
    clumps = tiny_survey["truth"].query("kind == 'clump'")
    gr_clump = -2.5 * np.log10(clumps["flux_g"] / clumps["flux_r"])
    gr_host = -2.5 * np.log10(man["host_flux_g"] / man["host_flux_r"])
    assert gr_clump.median() < gr_host.median() - 0.2
    best = clumps.sort_values("flux_fraction_g").iloc[-1]
    size = tiny_survey["spec"].image_size
    with fits.open(tiny_survey["root"] / "fits" / f"{best['subject_id']}.fits") as hdul:
        g = hdul["G"].data
    px, py = png_to_fits_pixel(best["x"], best["y"], size)
    # a blob: the clump pixel is brighter than the mean of a ring 2 FWHM away
    f = man.loc[best["subject_id"], "psf_fwhm_pixels"]
    yy, xx = np.mgrid[:size, :size]
    ring = np.abs(np.hypot(xx - px, yy - py) - 2 * f) < 1
    assert g[int(round(py)), int(round(px))] > g[ring].mean() + 3 * man.loc[best["subject_id"], "sky_sigma_g"]


def test_png_is_display_orientation(tiny_survey):
    """The PNG's top row is the FITS array's last row (FITS row 0 is the bottom)."""
    man = tiny_survey["manifest"].iloc[0]
    with fits.open(tiny_survey["root"] / "fits" / f"{man['subject_id']}.fits") as hdul:
        g = hdul["G"].data
    with Image.open(tiny_survey["root"] / "png" / man["png"]) as im:
        blue = np.asarray(im)[..., 2].astype(float)
    assert np.corrcoef(blue.ravel(), g[::-1].ravel())[0, 1] > np.corrcoef(blue.ravel(), g.ravel())[0, 1]


def test_deterministic_and_independent_of_workers(tmp_path, tiny_config):
    from clumpfinder.data.simulate import SurveySpec

    cfg = dict(tiny_config["simulate"], n_galaxies=12)
    spec = SurveySpec.from_config(cfg)
    m1, t1 = simulate_survey(spec, tmp_path / "a" / "png", tmp_path / "a" / "fits", workers=1)
    m2, t2 = simulate_survey(spec, tmp_path / "b" / "png", tmp_path / "b" / "fits", workers=2)
    pd.testing.assert_frame_equal(m1, m2)
    pd.testing.assert_frame_equal(t1, t2)
    for sid in m1["subject_id"]:
        a = fits.getdata(tmp_path / "a" / "fits" / f"{sid}.fits", "G")
        b = fits.getdata(tmp_path / "b" / "fits" / f"{sid}.fits", "G")
        np.testing.assert_array_equal(a, b)
    m3, _ = simulate_survey(dataclasses.replace(spec, seed=spec.seed + 1), tmp_path / "c" / "png",
                            tmp_path / "c" / "fits")
    assert not np.allclose(m1["redshift"], m3["redshift"])


def test_failed_render_leaves_no_directory(tmp_path, tiny_config, monkeypatch):
    """A crash half-way leaves no partial image directory behind (atomic directory output)."""
    from clumpfinder.data import simulate
    from clumpfinder.data.simulate import SurveySpec

    calls = {"n": 0}
    real = simulate._render_one

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(task)

    monkeypatch.setattr(simulate, "_render_one", flaky)
    spec = SurveySpec.from_config(dict(tiny_config["simulate"], n_galaxies=5))
    with pytest.raises(RuntimeError, match="killed"):
        simulate_survey(spec, tmp_path / "png", tmp_path / "fits")
    assert not (tmp_path / "png").exists() and not (tmp_path / "fits").exists()
    assert list(tmp_path.iterdir()) == []


def test_host_surface_brightness_matches_galsim():
    """The analytic host profile used for object contrast agrees with GalSim's rendering
    (no PSF), in every direction: position angle and inclination conventions are the same."""
    import galsim

    from clumpfinder.data.simulate import host_surface_brightness

    host = pd.DataFrame([{
        "position_angle_deg": 30.0, "inclination_deg": 50.0, "disc_scale_arcsec": 3.0, "disc_flux_g": 100.0,
        "bulge_flux_g": 20.0, "bulge_half_light_arcsec": 0.8, "bulge_axis_ratio": 0.8,
    }])  # no arms: the test is of the GalSim components' conventions
    h = host.iloc[0]
    pa = h["position_angle_deg"] * galsim.degrees
    prof = galsim.Add([
        galsim.InclinedExponential(h["inclination_deg"] * galsim.degrees, scale_radius=h["disc_scale_arcsec"],
                                   scale_h_over_r=0.1, flux=h["disc_flux_g"]).rotate(pa),
        galsim.DeVaucouleurs(half_light_radius=h["bulge_half_light_arcsec"], flux=h["bulge_flux_g"]).shear(
            q=h["bulge_axis_ratio"], beta=pa),
    ])
    scale = 0.1
    img = prof.drawImage(nx=200, ny=200, scale=scale, method="no_pixel")
    for angle in (0, 60, 120, 200, 290):
        for r in (2.0, 4.0, 6.0):
            dx, dy = r * np.cos(np.radians(angle)), r * np.sin(np.radians(angle))
            ix, iy = int(round(100.5 + dx / scale)), int(round(100.5 + dy / scale))  # galsim 1-based, centre 100.5
            rendered = img(ix, iy) / scale**2
            expected = host_surface_brightness(host, np.array([(ix - 100.5) * scale]), np.array([(iy - 100.5) * scale]),
                                               "g")[0]
            assert rendered == pytest.approx(expected, rel=0.12), (angle, r)


REALISM = {"bulge": {"fraction": 0.5, "to_total": {"min": 0.0, "max": 0.4}},
           "irregular": {"fraction": 0.5, "light_fraction": {"min": 0.1, "max": 0.3},
                         "scale": {"min": 0.4, "max": 0.8}, "offset_scale": {"min": 0.5, "max": 1.5}},
           "field_sources": {"stars_per_arcmin2": 3.0, "galaxies_per_arcmin2": 3.0,
                             "mag_r": {"min": 15.0, "max": 22.0}, "min_radius_half_light": 2.0},
           "depth_field_scatter_mag": 0.4}


def test_the_default_survey_is_the_one_earlier_code_drew(tiny_config):
    """The test configuration's catalogue as the code before the realism additions drew it (sums
    recorded from that code): a change that moves the default's random streams fails here."""
    from clumpfinder.data.simulate import SurveySpec, simulate_catalogue

    man, truth = simulate_catalogue(SurveySpec.from_config(tiny_config["simulate"]))
    assert len(truth) == 223 and set(truth["kind"]) == {"clump", "knot", "odd"}
    got = [truth["x"].sum(), truth["y"].sum(), truth["flux_g"].sum(), man["redshift"].sum(), truth["contrast_g"].sum()]
    np.testing.assert_allclose(got, [10985.525854749203, 10827.943970113614, 1756.5260884079003, 4.59364613702509,
                                     59058.272922063225], rtol=1e-12)


def test_realism_additions_leave_the_rest_of_the_survey_unchanged(tiny_config):
    """Field sources, bulgeless and irregular hosts and the field depth draw from generators of
    their own: the clumps, knots and odd objects, where the hosts keep their bulge, do not move."""
    from clumpfinder.data.simulate import SurveySpec, simulate_catalogue

    base = dict(tiny_config["simulate"], n_galaxies=80)
    m0, t0 = simulate_catalogue(SurveySpec.from_config(base))
    assert (m0["n_field"] == 0).all() and (m0["irregular_fraction"] == 0).all()
    cfg = {**base, **REALISM, "bulge": dict(REALISM["bulge"], fraction=1.0)}
    m1, t1 = simulate_catalogue(SurveySpec.from_config(cfg))
    assert (m1["n_field"] > 0).any() and (m1["irregular_fraction"] > 0).any()
    pd.testing.assert_series_equal(m0["redshift"], m1["redshift"])
    cols = ["subject_id", "kind", "subclass", "x", "y", "flux_g", "flux_r", "flux_i", "flux_fraction_g"]
    pd.testing.assert_frame_equal(t0[cols].reset_index(drop=True),
                                  t1.loc[t1["kind"] != "field", cols].reset_index(drop=True))


def test_field_sources_lie_beside_the_galaxy(tiny_config):
    """Field stars and galaxies: kind 'field', beyond min_radius_half_light half-light radii of the
    centre, inside the image, their number growing with the density asked for."""
    from clumpfinder.data.simulate import SurveySpec, simulate_catalogue

    cfg = dict(tiny_config["simulate"], n_galaxies=80, **REALISM)
    man, truth = simulate_catalogue(SurveySpec.from_config(cfg))
    field = truth[truth["kind"] == "field"].merge(man, on="subject_id")
    assert set(field["subclass"]) == {"star", "galaxy"}
    size = man["width"].iloc[0]
    r = np.hypot(field["x"] - size / 2, field["y"] - size / 2) * field["pixel_scale_arcsec"]
    assert (r >= 2.0 * field["half_light_arcsec"] * (1 - 1e-9)).all()
    assert field["x"].between(0, size).all() and field["y"].between(0, size).all()
    assert (man.set_index("subject_id")["n_field"].loc[field["subject_id"].unique()]
            == field.groupby("subject_id").size()).all()
    mag = 22.5 - 2.5 * np.log10(field["flux_r"])
    assert mag.between(15.0, 22.0).all()
    fewer = dict(cfg, field_sources=dict(REALISM["field_sources"], stars_per_arcmin2=0.3, galaxies_per_arcmin2=0.3))
    _, t2 = simulate_catalogue(SurveySpec.from_config(fewer))
    assert (t2["kind"] == "field").sum() < len(field) / 3


def test_bulgeless_hosts_may_have_central_clumps(tiny_config):
    """Without a bulge a host's star-forming regions may sit at its centre; hosts with one keep
    them clear of it (min_radius_scale disc scale lengths and min_radius_fwhm PSF FWHM)."""
    from clumpfinder.data.simulate import SurveySpec, _disc_frame, simulate_catalogue

    cfg = dict(tiny_config["simulate"], n_galaxies=150, **REALISM)
    cl = cfg["clumps"]
    man, truth = simulate_catalogue(SurveySpec.from_config(cfg))
    assert 0.3 < (man["bulge_to_total"] == 0).mean() < 0.7
    sf = truth[truth["kind"].isin(["clump", "knot"])].merge(man, on="subject_id")
    size = man["width"].iloc[0]
    dx = (sf["x"] - size / 2) * sf["pixel_scale_arcsec"]
    dy = -(sf["y"] - size / 2) * sf["pixel_scale_arcsec"]
    r, _ = _disc_frame(sf, dx.to_numpy(), dy.to_numpy())  # radius in the plane of the disc
    r_min = np.maximum(cl["min_radius_scale"] * sf["half_light_arcsec"] / 1.678,
                       cl["min_radius_fwhm"] * sf["psf_fwhm_arcsec"])
    bulged = sf["bulge_to_total"] > 0
    assert (r[bulged] >= r_min[bulged] * (1 - 1e-9)).all()
    assert (r[~bulged] < r_min[~bulged]).any()


def test_irregular_host_surface_brightness_matches_galsim():
    """The off-centre disc of an irregular host sits where GalSim draws it (same shift and
    orientation conventions as the analytic profile used for contrast)."""
    import galsim

    from clumpfinder.data.simulate import host_surface_brightness

    host = pd.DataFrame([{
        "position_angle_deg": 30.0, "inclination_deg": 50.0, "disc_scale_arcsec": 3.0, "disc_flux_g": 1e-9,
        "bulge_flux_g": 0.0, "bulge_half_light_arcsec": 0.8, "bulge_axis_ratio": 0.8,
        "irregular_fraction": 0.3, "irregular_scale_arcsec": 1.5, "irregular_flux_g": 50.0,
        "irregular_dx_arcsec": 2.5, "irregular_dy_arcsec": -1.5,
    }])
    h = host.iloc[0]
    pa = h["position_angle_deg"] * galsim.degrees
    prof = galsim.InclinedExponential(h["inclination_deg"] * galsim.degrees, scale_radius=h["irregular_scale_arcsec"],
                                      scale_h_over_r=0.1, flux=h["irregular_flux_g"]).rotate(pa).shift(
        h["irregular_dx_arcsec"], h["irregular_dy_arcsec"])
    scale = 0.1
    img = prof.drawImage(nx=200, ny=200, scale=scale, method="no_pixel")
    peak = np.unravel_index(np.argmax(img.array), img.array.shape)
    assert (peak[1] - 99.5) * scale == pytest.approx(2.5, abs=0.1)  # array column = x, row = y
    assert (peak[0] - 99.5) * scale == pytest.approx(-1.5, abs=0.1)
    for angle in (0, 90, 200):
        for r in (1.0, 2.5):
            dx, dy = 2.5 + r * np.cos(np.radians(angle)), -1.5 + r * np.sin(np.radians(angle))
            ix, iy = int(round(100.5 + dx / scale)), int(round(100.5 + dy / scale))
            expected = host_surface_brightness(host, np.array([(ix - 100.5) * scale]),
                                               np.array([(iy - 100.5) * scale]), "g")[0]
            assert img(ix, iy) / scale**2 == pytest.approx(expected, rel=0.12), (angle, r)
