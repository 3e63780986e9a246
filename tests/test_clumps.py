"""Clump catalogues from a trained detector (src/clumpfinder/clumps): FITS folders with known point
sources, the preprocessing shared with training, bad inputs, model files, the command-line tool."""

from __future__ import annotations

import json

import galsim
import numpy as np
import pandas as pd
import pytest
import torch
from astropy.coordinates import SkyCoord
from astropy.io import fits
import astropy.units as u
from PIL import Image

from clumpfinder.clumps import cli
from clumpfinder.clumps.catalogue import detector_window, measure_galaxy, run_catalogue
from clumpfinder.clumps.measure import MeasureSpec, aperture_correction, encircled_energy
from clumpfinder.clumps.model import best_cell, export_detector, load_detector
from clumpfinder.clumps.sources import FitsOptions, fits_folder, read_fits_galaxy
from clumpfinder.data.cutouts import fits_groups
from clumpfinder.clumps.tables import read_catalogue
from clumpfinder.data.simulate import make_wcs
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector, load_images, save_model
from clumpfinder.labels.coco import coco_dataset

PNG = {"band_scales": {"g": 1.6, "r": 1.1, "i": 1.0}, "minimum": 0.0, "stretch": 3.0, "Q": 8.0}
SCALE = 0.3  # arcsec / px
FWHM = 1.4  # arcsec
BETA = 3.0
SIZE = 96
SKY = 0.02  # nanomaggy per pixel


def _galaxy_planes(sources, seed, galaxy_flux=300.0, size=SIZE):
    """g, r, i planes (nanomaggy, FITS orientation) of a smooth exponential galaxy plus point
    sources [(dx_arcsec, dy_arcsec, flux_g)], all through a Moffat PSF, with sky noise."""
    rng = np.random.default_rng(seed)
    psf = galsim.Moffat(beta=BETA, fwhm=FWHM)
    planes = {}
    for band, colour in (("g", 1.0), ("r", 1.4), ("i", 1.7)):
        comps = [galsim.Exponential(scale_radius=3.0, flux=galaxy_flux * colour)]
        comps += [galsim.DeltaFunction(flux=f * colour).shift(dx, dy) for dx, dy, f in sources]
        img = galsim.Convolve(galsim.Add(comps), psf).drawImage(nx=size, ny=size, scale=SCALE)
        planes[band] = (img.array + rng.normal(0, SKY, img.array.shape)).astype(np.float32)
    return planes


def _write_fits(path, planes, ra, dec, *, wcs=True, psf=True, size=SIZE):
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["RA"], hdus[0].header["DEC"] = ra, dec
    for band, data in planes.items():
        h = make_wcs(ra, dec, SCALE, size).to_header() if wcs else fits.Header()
        h["BUNIT"] = "nanomaggy"
        h["FILTER"] = band
        if psf:
            h["PSFFWHM"], h["PSFBETA"] = FWHM, BETA
        hdus.append(fits.ImageHDU(data, header=h, name=band.upper()))
    fits.HDUList(hdus).writeto(path)


#: point sources of the test galaxies: offsets from the centre (arcsec) and g-band flux (nanomaggy)
SOURCES = [(4.0, 2.0, 40.0), (-3.5, 4.5, 25.0), (1.0, -5.0, 60.0)]


@pytest.fixture(scope="module")
def known_folder(tmp_path_factory):
    """Three galaxies with three point sources each, one FITS file per galaxy with g, r, i."""
    folder = tmp_path_factory.mktemp("known_fits")
    truth = []
    for k, (ra, dec) in enumerate([(150.1, 2.2), (210.5, -0.7), (33.3, 45.0)]):
        _write_fits(folder / f"gal{k}.fits", _galaxy_planes(SOURCES, k), ra, dec)
        centre = SkyCoord(ra * u.deg, dec * u.deg)
        for j, (dx, dy, f) in enumerate(SOURCES):
            # east is left (RA grows with -x): an offset dx to the right is west, i.e. lower RA
            c = centre.spherical_offsets_by(-dx * u.arcsec, dy * u.arcsec)
            truth.append({"galaxy": f"gal{k}", "j": j, "ra": c.ra.deg, "dec": c.dec.deg, "flux_g": f,
                          # image pixels from the top-left corner, y down
                          "x": SIZE / 2 + dx / SCALE, "y": SIZE / 2 - dy / SCALE})
    return folder, pd.DataFrame(truth)


def _boxes_at(x, y, half=3.0, score=0.9):
    return pd.DataFrame({"x1": x - half, "y1": y - half, "x2": x + half, "y2": y + half, "score": score,
                         "label": "clump"})


def test_known_point_sources_give_their_ra_dec_and_fluxes(known_folder):
    """Detections at the sources' pixels -> RA/Dec within 0.02 arcsec of where the test put them on
    the sky, g-band fluxes within 5 % (the aperture correction of a Moffat PSF), magnitudes."""
    folder, truth = known_folder
    galaxies = list(fits_folder(folder, FitsOptions(png=PNG)))
    assert [g.name for g in galaxies] == ["gal0", "gal1", "gal2"]
    spec = MeasureSpec()
    for g in galaxies:
        t = truth[truth["galaxy"] == g.name]
        rows, galaxy = measure_galaxy(g, _boxes_at(t["x"].to_numpy(), t["y"].to_numpy()), (0, 0, SIZE, SIZE),
                                      spec, score=0.5)
        assert len(rows) == 3 and galaxy["n_bulge"] == 0 and galaxy["n_outside"] == 0
        sep = SkyCoord(rows["clump_ra"].to_numpy() * u.deg, rows["clump_dec"].to_numpy() * u.deg).separation(
            SkyCoord(t["ra"].to_numpy() * u.deg, t["dec"].to_numpy() * u.deg)).arcsec
        assert sep.max() < 0.02, sep
        np.testing.assert_allclose(rows["flux_g"], t["flux_g"], rtol=0.05)
        np.testing.assert_allclose(rows["mag_g"], 22.5 - 2.5 * np.log10(t["flux_g"].to_numpy()), atol=0.06)
        assert (rows["flux_err_g"] > 0).all() and (rows["mag_err_g"] < 0.05).all()
        # the galaxy's flux is its segment's: most of the exponential's 300 nanomaggies plus the sources
        assert 250 < galaxy["galaxy_flux_g"] < 300 + t["flux_g"].sum()
        np.testing.assert_allclose(rows["flux_ratio"], rows["flux_g"] / galaxy["galaxy_flux_g"])
        assert (rows["is_clump_8pct"] == (rows["flux_ratio"] > 0.08)).all()
        assert (rows["flux_ratio_band"] == "g").all()


def test_post_processing_drops_bulge_outside_and_merges(known_folder):
    folder, truth = known_folder
    g = next(iter(fits_folder(folder, FitsOptions(png=PNG))))
    t = truth[truth["galaxy"] == "gal0"]
    x = np.r_[t["x"].to_numpy(), SIZE / 2, 3.0, t["x"].iloc[0] + 1.0]
    y = np.r_[t["y"].to_numpy(), SIZE / 2, 3.0, t["y"].iloc[0] + 0.5]
    d = _boxes_at(x, y)
    d.loc[len(d) - 1, "score"] = 0.8  # a weaker duplicate 1.1 px (0.24 FWHM) from the first source
    d.loc[len(d) - 2, "score"] = 0.7  # in the corner, off the galaxy
    rows, galaxy = measure_galaxy(g, d, (0, 0, SIZE, SIZE), MeasureSpec(), score=0.5)
    assert (galaxy["n_detections"], galaxy["n_bulge"], galaxy["n_outside"], galaxy["n_merged"]) == (6, 1, 1, 1)
    assert len(rows) == 3 and rows["n_merged"].tolist() == [1, 0, 0]
    below = measure_galaxy(g, d, (0, 0, SIZE, SIZE), MeasureSpec(), score=0.95)[1]
    assert below["n_detections"] == 0


def test_odd_clumps_are_never_flagged(known_folder):
    folder, truth = known_folder
    g = next(iter(fits_folder(folder, FitsOptions(png=PNG))))
    t = truth[truth["galaxy"] == "gal0"]
    d = _boxes_at(t["x"].to_numpy(), t["y"].to_numpy()).assign(label=["clump", "odd_clump", "clump"])
    rows = measure_galaxy(g, d, (0, 0, SIZE, SIZE), MeasureSpec(), score=0.5)[0]
    assert rows["is_clump_3pct"].tolist() == [True, False, True]


def test_encircled_energy_and_aperture_correction():
    assert float(encircled_energy(0.5, 1.0, None)) == pytest.approx(0.5)  # Gaussian: half within FWHM / 2
    # a Moffat holds half its flux within GalSim's half-light radius of the same profile
    hlr = galsim.Moffat(beta=3.0, fwhm=1.0).half_light_radius
    assert float(encircled_energy(hlr, 1.0, 3.0)) == pytest.approx(0.5, abs=1e-6)
    assert float(encircled_energy(1e4, 1.0, 3.0)) == pytest.approx(1.0)
    spec = MeasureSpec()
    # the annulus sees the PSF's wings: the correction is below the aperture's encircled energy
    assert aperture_correction(spec, 3.0) < float(encircled_energy(spec.aperture_fwhm, 1.0, 3.0))
    with pytest.raises(ValueError, match="annulus"):
        MeasureSpec(aperture_fwhm=2.0, annulus_fwhm=[1.5, 2.5])


def test_bands_in_separate_files_are_grouped(tmp_path):
    planes = _galaxy_planes(SOURCES, 0)
    for band, data in planes.items():
        h = make_wcs(10.0, 5.0, SCALE, SIZE).to_header()
        h["BUNIT"], h["PSFFWHM"] = "nanomaggy", FWHM
        fits.PrimaryHDU(data, header=h).writeto(tmp_path / f"ngc123_{band}.fits")
    assert [(n, len(f)) for n, f in fits_groups(tmp_path).items()] == [("ngc123", 3)]
    g = read_fits_galaxy("ngc123", fits_groups(tmp_path)["ngc123"], FitsOptions(png=PNG))
    assert sorted(g.planes) == ["g", "i", "r"] and g.psf_fwhm["g"] == FWHM
    assert g.pixel_scale == pytest.approx(SCALE)


def test_preprocessing_is_the_training_one(tiny_survey):
    """One galaxy through the training path (PNG on disk, COCO crop window, load_images) and the
    catalogue path (its FITS file, the colour composite, the same window): identical tensors."""
    m = tiny_survey["manifest"].iloc[:3]
    images = m.rename(columns={"png": "file_name"})
    coco = coco_dataset(images, pd.DataFrame(columns=["subject_id", "x1", "y1", "x2", "y2", "category"]), "t", crop=64)
    trained = load_images(coco, tiny_survey["root"] / "png")
    spec = tiny_survey["spec"]
    for r, tensor in zip(m.itertuples(), trained):
        g = read_fits_galaxy(str(r.subject_id), [tiny_survey["root"] / "fits" / r.fits], FitsOptions(png=spec.png))
        window, cat, how = detector_window(g, {"crop": 64})
        assert window == (16, 16, 64, 64) and how == "crop"
        assert cat.dtype == torch.uint8 and torch.equal(cat, tensor)


def _detector_file(tmp_path, crop=64, image_size=64, field=None, **provenance):
    """An (untrained) detector exported as the workflow exports one (with ``field``, a
    :class:`clumpfinder.clumps.field.Field`, recorded when given)."""
    torch.manual_seed(0)
    det = DetectorSpec(image_size=image_size, box_score_thresh=0.0)
    spec = BackboneSpec(arch="resnet18", init="scratch", trainable_layers=5, fpn_channels=32)
    raw = tmp_path / "model.pt"
    save_model(build_detector(spec, det), spec, det, raw)
    out = tmp_path / "detector.pt"
    prep = {"crop": crop, "png": PNG, **({"field": field.to_dict()} if field else {})}
    export_detector(raw, out, prep, {"backbone": "resnet18_scratch", "n_train": "30", "seed": 0, "score": 0.0,
                                     **provenance})
    return raw, out


def _bad_folder(folder, good):
    """A FITS folder with one good galaxy and one of each bad input."""
    planes = _galaxy_planes(SOURCES, 1)
    _write_fits(folder / "good.fits", planes, 150.0, 2.0)
    _write_fits(folder / "nowcs.fits", planes, 150.0, 2.0, wcs=False)
    _write_fits(folder / "nopsf.fits", planes, 150.0, 2.0, psf=False)
    _write_fits(folder / "allnan.fits", {b: np.full_like(p, np.nan) for b, p in planes.items()}, 150.0, 2.0)
    _write_fits(folder / "noi.fits", {b: p for b, p in planes.items() if b != "i"}, 150.0, 2.0)
    small = _galaxy_planes([], 2, size=40)
    _write_fits(folder / "small.fits", small, 150.0, 2.0, size=40)
    data = (folder / "good.fits").read_bytes()
    (folder / "truncated.fits").write_bytes(data[: len(data) // 2])
    (folder / "garbage.fits").write_bytes(b"not a FITS file at all" * 100)
    return {"nowcs": "no_wcs", "nopsf": "no_psf", "allnan": "nan_pixels", "noi": "missing_band",
            "small": "too_small", "truncated": "unreadable_fits", "garbage": "unreadable_fits"}


def test_command_line_tool_reports_each_bad_input_and_goes_on(tmp_path):
    folder = tmp_path / "fits"
    folder.mkdir()
    expected = _bad_folder(folder, "good")
    _, model = _detector_file(tmp_path)
    out = tmp_path / "out" / "cat.fits"
    assert cli.main(["detect", "--model", str(model), "--images", str(folder), "--out", str(out),
                     "--overlays", str(tmp_path / "overlays"), "--device", "cpu", "--quiet"]) == 0
    tables = read_catalogue(out)
    failures = tables["FAILURES"].to_pandas().set_index("galaxy")["reason"].to_dict()
    assert failures == expected
    assert tables["GALAXIES"]["galaxy"].tolist() == ["good"]
    assert (tmp_path / "overlays" / "good.png").is_file()
    for stem in ("cat.csv", "cat_galaxies.csv", "cat_failures.csv"):
        assert (tmp_path / "out" / stem).is_file()
    header = fits.getheader(out, 0)
    assert header["BACKBONE"] == "resnet18_scratch" and header["MODEL"] == str(model)
    assert tables["CLUMPS"]["clump_ra"].unit == u.deg and tables["CLUMPS"]["flux_g"].unit == u.nanomaggy
    # the same rows as CSV
    assert len(pd.read_csv(tmp_path / "out" / "cat.csv")) == len(tables["CLUMPS"])


def test_png_images_get_pixel_positions_only(tmp_path, known_folder):
    folder = tmp_path / "png"
    folder.mkdir()
    g = next(iter(fits_folder(known_folder[0], FitsOptions(png=PNG))))
    Image.fromarray(g.rgb).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    _, model = _detector_file(tmp_path)
    out = tmp_path / "cat.fits"
    assert cli.main(["detect", "--model", str(model), "--images", str(folder), "--out", str(out), "--quiet",
                     "--device", "cpu"]) == 0
    t = read_catalogue(out)
    assert t["FAILURES"]["reason"].tolist() == ["unreadable_image"]
    clumps = t["CLUMPS"].to_pandas()
    assert "flux_g" not in clumps and (clumps.empty or clumps["clump_ra"].isna().all())


def test_model_files_that_cannot_make_a_catalogue_are_named(tmp_path, capsys):
    raw, model = _detector_file(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    encoder = tmp_path / "encoder.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, encoder)
    with pytest.raises(ValueError, match="junk.pt is not a clumpfinder detector"):
        load_detector(junk)
    with pytest.raises(ValueError, match="encoder.pt is not a clumpfinder detector.*pretraining"):
        load_detector(encoder)
    with pytest.raises(ValueError, match="model.pt is a training model file without the preprocessing"):
        load_detector(raw)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_detector(tmp_path / "missing.pt")
    # the command line says it in one line and leaves an existing catalogue as it was
    out = tmp_path / "cat.fits"
    out.write_bytes(b"an earlier catalogue")
    folder = tmp_path / "fits"
    folder.mkdir()
    assert cli.main(["detect", "--model", str(junk), "--images", str(folder), "--out", str(out), "--quiet"]) == 2
    assert "junk.pt is not a clumpfinder detector" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier catalogue"


def test_best_cell_is_chosen_on_validation_f1():
    def m(val_f1):
        return {"threshold": {"val_at_score": {"f1": val_f1}}, "references": {"truth": {"merged": {"f1": 1 - val_f1}}}}
    assert best_cell({("a", "30", "0"): m(0.5), ("b", "30", "0"): m(0.7), ("a", "100", "0"): m(0.6)}) == ("b", "30", "0")


def test_run_catalogue_keeps_going_with_no_detections(known_folder, tmp_path):
    """The exported detector on galaxies read from disk: every galaxy gets its row, progress is
    reported per batch, nothing fails."""
    _, model_path = _detector_file(tmp_path, crop=None)
    model, det, prep, prov = load_detector(model_path)
    seen = []
    cat = run_catalogue(fits_folder(known_folder[0], FitsOptions(png=prep["png"])), model, det, prep, MeasureSpec(),
                        score=0.99, batch_size=2, progress=seen.append)
    assert seen == [2, 1] and len(cat.galaxies) == 3 and cat.failures.empty
    assert json.loads(cat.galaxies.to_json())  # serialisable as the workflow writes it


def test_validation_against_a_known_truth():
    """Offsets, magnitudes and the 8 % flag computed by hand: galaxy 1 has a giant clump found
    0.1 arcsec off and 0.1 mag faint, a knot found, and a star flagged by mistake; galaxy 2's giant
    clump is missed and a detection lies 3 arcsec from anything."""
    from clumpfinder.clumps.validate import validate

    dec0 = 0.0
    truth = pd.DataFrame({
        "subject_id": [1, 1, 1, 2], "kind": ["clump", "knot", "odd", "clump"],
        "ra": [10.0, 10.001, 10.002, 20.0], "dec": dec0, "flux_g": [100.0, 10.0, 50.0, 80.0],
        "flux_fraction_g": [0.2, 0.02, 0.1, 0.15], "contrast_g": [5.0, 1.0, 9.0, 20.0],
        "sigma_arcsec": [0.2, 0.1, 0.0, 0.3]})
    d = 0.1 / 3600
    clumps = pd.DataFrame({
        "subject_id": [1, 1, 1, 2], "clump_ra": [10.0 + d, 10.001, 10.002, 20.0 + 3 / 3600],
        "clump_dec": dec0, "mag_g": [22.5 - 2.5 * np.log10(100.0) + 0.1, 20.0, 18.0, 19.0],
        "flux_ratio": [0.18, 0.01, 0.1, 0.2], "is_clump_8pct": [True, False, True, True]})
    galaxies = pd.DataFrame({"subject_id": [1, 2], "psf_fwhm_arcsec": [1.4, 1.4]})
    v = validate(clumps, galaxies, truth)
    assert v["matched"] == 3 and v["matched_star_forming"] == 2
    assert v["position"]["median_offset_arcsec"] == pytest.approx(0.05, abs=1e-6)  # offsets 0.1 and 0
    assert v["photometry"]["n"] == 1 and v["photometry"]["median_dmag"] == pytest.approx(0.1, abs=1e-9)
    f = v["flag"]
    assert (f["truth_giant"], f["catalogue_flagged"]) == (2, 3)
    assert f["completeness_detected"] == 0.5 and f["completeness_flagged"] == 0.5
    assert f["purity_star_forming"] == pytest.approx(1 / 3, abs=1e-4) and f["purity_giant"] == pytest.approx(1 / 3, abs=1e-4)


def test_a_detection_on_a_field_source_is_no_clump():
    """A field star beside the galaxy (truth kind 'field') takes the detection on it, which then
    counts as neither a star-forming match nor a giant clump: a flagged field star lowers purity."""
    from clumpfinder.clumps.validate import validate

    truth = pd.DataFrame({
        "subject_id": [1, 1], "kind": ["clump", "field"], "ra": [10.0, 10.004], "dec": 0.0,
        "flux_g": [100.0, 300.0], "flux_fraction_g": [0.2, 0.6], "contrast_g": [5.0, 500.0],
        "sigma_arcsec": [0.2, 0.0]})
    clumps = pd.DataFrame({
        "subject_id": [1, 1], "clump_ra": [10.0, 10.004], "clump_dec": 0.0, "mag_g": [17.5, 16.3],
        "flux_ratio": [0.2, 0.6], "is_clump_8pct": [True, True]})
    v = validate(clumps, pd.DataFrame({"subject_id": [1], "psf_fwhm_arcsec": [1.4]}), truth)
    assert v["matched"] == 2 and v["matched_star_forming"] == 1 and v["truth_star_forming"] == 1
    assert v["flag"]["truth_giant"] == 1 and v["flag"]["purity_giant"] == 0.5


def test_validation_measures_the_rule_that_odd_class_detections_are_never_flagged():
    """Galaxy 1: a giant clump detected as a clump (flagged) and a star detected as odd_clump above
    the ratio; galaxy 2: a giant clump detected as odd_clump (so never flagged) and a faint odd
    detection. Flagging odd-class detections too would add the star (a false flag) and galaxy 2's
    clump (a true one)."""
    from clumpfinder.clumps.validate import validate

    truth = pd.DataFrame({
        "subject_id": [1, 1, 2], "kind": ["clump", "odd", "clump"], "ra": [10.0, 10.002, 20.0], "dec": 0.0,
        "flux_g": [100.0, 50.0, 80.0], "flux_fraction_g": [0.2, 0.1, 0.15], "contrast_g": [5.0, 9.0, 20.0],
        "sigma_arcsec": [0.2, 0.0, 0.3]})
    clumps = pd.DataFrame({
        "subject_id": [1, 1, 2, 2], "clump_ra": [10.0, 10.002, 20.0, 20.004], "clump_dec": 0.0,
        "mag_g": [17.5, 18.0, 17.7, 21.0], "flux_ratio": [0.2, 0.1, 0.15, 0.02],
        "label": ["clump", "odd_clump", "odd_clump", "odd_clump"], "is_clump_8pct": [True, False, False, False]})
    galaxies = pd.DataFrame({"subject_id": [1, 2], "psf_fwhm_arcsec": [1.4, 1.4]})
    f = validate(clumps, galaxies, truth)["flag"]
    assert (f["catalogue_flagged"], f["completeness_flagged"], f["purity_giant"]) == (1, 0.5, 1.0)
    odd = f["if_odd_class_were_flagged"]
    assert (odd["odd_class_above_ratio"], odd["matched_odd_truth"], odd["matched_star_forming"]) == (2, 1, 1)
    assert odd["matched_giant"] == 1 and odd["catalogue_flagged"] == 3
    assert odd["completeness_flagged"] == 1.0 and odd["purity_giant"] == pytest.approx(2 / 3, abs=1e-4)


def test_the_command_is_installed():
    """`pip install -e .` puts `clumpfinder` beside the environment's python ([project.scripts])."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("clumpfinder")
    assert exe.exists(), f"{exe} missing: reinstall the package (pip install -e .)"
    out = subprocess.run([str(exe), "detect", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--images" in out.stdout and "--model" in out.stdout


def test_headers_give_position_zero_points_or_a_failure_row(tmp_path):
    """The galaxy's RA/DEC from a multi-extension file's metadata header (degrees or sexagesimal),
    a zero point per band, and a header value that cannot be used is that galaxy's failure row."""
    planes = _galaxy_planes(SOURCES, 3)
    _write_fits(tmp_path / "deg.fits", planes, 150.0, 2.0)
    with fits.open(tmp_path / "deg.fits", mode="update") as h:
        h[0].header["RA"], h[0].header["DEC"] = "10:00:00.0", "+02:00:03.0"  # 3" north of the image centre
        for k, band in enumerate(("g", "r", "i")):
            h[band.upper()].header["BUNIT"] = "count"
            h[band.upper()].header["MAGZP"] = 25.0 + k
    g = read_fits_galaxy("deg", [tmp_path / "deg.fits"], FitsOptions(png=PNG))
    assert g.meta["ra"] == pytest.approx(150.0) and g.meta["dec"] == pytest.approx(2.0 + 3 / 3600)
    assert g.zeropoint == {"g": 25.0, "r": 26.0, "i": 27.0}
    from clumpfinder.clumps.measure import galaxy_centre
    assert galaxy_centre(g)[1] == pytest.approx((SIZE - 1) / 2 + 3 / SCALE, abs=0.01)  # FITS y grows north
    _write_fits(tmp_path / "bad.fits", planes, 150.0, 2.0)
    with fits.open(tmp_path / "bad.fits", mode="update") as h:
        h["R"].header["PSFFWHM"] = "about 1.4"
    bad = read_fits_galaxy("bad", [tmp_path / "bad.fits"], FitsOptions(png=PNG))
    assert bad.reason == "bad_header" and "about 1.4" in bad.detail


def test_a_catalogue_with_empty_galaxies_keeps_its_numbers(known_folder, tmp_path):
    """Galaxies without detections beside galaxies with clumps: the FITS columns stay numeric."""
    from clumpfinder.clumps.catalogue import Catalogue, _detections
    from clumpfinder.clumps.tables import write_catalogue

    folder, truth = known_folder
    parts, rows = [], []
    for g in fits_folder(folder, FitsOptions(png=PNG)):
        t = truth[truth["galaxy"] == g.name]
        d = _boxes_at(t["x"].to_numpy(), t["y"].to_numpy()) if g.name == "gal1" else _detections([])
        c, gal = measure_galaxy(g, d, (0, 0, SIZE, SIZE), MeasureSpec(), score=0.5)
        parts.append(c)
        rows.append(gal)
    cat = Catalogue(pd.concat(parts, ignore_index=True), pd.DataFrame(rows), pd.DataFrame(), 0.0)
    write_catalogue(cat, tmp_path / "cat.fits", {"model": "m"})
    t = read_catalogue(tmp_path / "cat.fits")["CLUMPS"]
    assert len(t) == 3
    for col in ("x", "score", "flux_g", "clump_ra", "dist_centre_arcsec"):
        assert t[col].dtype.kind == "f", col
    assert t["x"].unit == u.pix


def test_the_annulus_leaves_out_the_other_clumps_apertures(tmp_path):
    """Four bright clumps (flat discs of 3 nanomaggy per pixel, each exactly its aperture) sit
    around a fifth in the middle of its background annulus, covering most of it: the fifth's
    background is the galaxy's light in the annulus (as without the discs), not the discs'."""
    from clumpfinder.imaging import png_to_fits_pixel

    spec = MeasureSpec()
    fwhm = FWHM / SCALE
    r_ap, r_mid = spec.aperture_fwhm * fwhm, np.mean(spec.annulus_fwhm) * fwhm
    ax, ay = SIZE / 2 + 4.0 / SCALE, SIZE / 2  # image pixels (y down), off the bulge
    around = [(ax + r_mid * np.cos(t), ay + r_mid * np.sin(t)) for t in np.deg2rad([0, 90, 180, 270])]
    smooth = _galaxy_planes([], 0)
    yy, xx = np.mgrid[:SIZE, :SIZE]

    def within(x, y, r):  # pixels of the FITS planes within r of an image position
        px, py = png_to_fits_pixel(np.array([x]), np.array([y]), SIZE)
        return (xx - px[0]) ** 2 + (yy - py[0]) ** 2 < r**2

    discs = np.any([within(x, y, r_ap) for x, y in around], axis=0)
    _write_fits(tmp_path / "g.fits", {b: p + 3.0 * discs for b, p in smooth.items()}, 150.0, 2.0)
    (g,) = fits_folder(tmp_path, FitsOptions(png=PNG))
    xs, ys = np.array([ax] + [x for x, _ in around]), np.array([ay] + [y for _, y in around])
    rows, _ = measure_galaxy(g, _boxes_at(xs, ys), (0, 0, SIZE, SIZE), spec, score=0.5)
    centre = rows.iloc[(rows["x"] - ax).abs().add((rows["y"] - ay).abs()).argmin()]
    annulus = within(ax, ay, spec.annulus_fwhm[1] * fwhm) & ~within(ax, ay, spec.annulus_fwhm[0] * fwhm)
    assert discs[annulus].mean() > 0.5  # without the mask the discs would set the median
    assert centre["background_g"] == pytest.approx(np.median(smooth["g"][annulus]), abs=0.05)
