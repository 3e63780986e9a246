"""The simulated survey: geometry, WCS, physics sanity and determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from clumpfinder.simulate import BANDS, fits_pixel_to_png, png_to_fits_pixel, simulate_survey


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
    assert set(truth["kind"]) <= {"clump", "odd"}
    assert (man["n_clumps"] == 0).any(), "some galaxies must have no clumps"
    assert (man["n_clumps"] > 0).any()
    counts = truth[truth["kind"] == "clump"].groupby("subject_id").size()
    assert (man.set_index("subject_id")["n_clumps"].loc[counts.index] == counts).all()


def test_flux_fractions_span_thresholds(tiny_survey):
    ff = tiny_survey["truth"].query("kind == 'clump'")["flux_fraction_g"]
    assert ff.min() < 0.03 and ff.max() > 0.08


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
    from clumpfinder.simulate import SurveySpec

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
    from clumpfinder import simulate
    from clumpfinder.simulate import SurveySpec

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

    from clumpfinder.simulate import host_surface_brightness

    host = pd.DataFrame([{
        "position_angle_deg": 30.0, "inclination_deg": 50.0, "disc_scale_arcsec": 3.0, "disc_flux_g": 100.0,
        "bulge_flux_g": 20.0, "bulge_half_light_arcsec": 0.8, "bulge_axis_ratio": 0.8,
    }])
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
