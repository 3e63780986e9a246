"""The detector's field on other images (src/clumpfinder/clumps/field.py): the exported detector
records the sky its training images show, `clumpfinder detect --galaxies` cuts that sky from each
image around the galaxy, plain images get a footprint and a bulge cut, bad galaxy tables give one
failure row per galaxy; and the real-galaxies benchmark runs the command's own path."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO
from clumpfinder.clumps import cli
from clumpfinder.clumps.catalogue import detector_window
from clumpfinder.clumps.field import Field, cut_window, field_from_config, field_window
from clumpfinder.clumps.measure import MeasureSpec, footprint, post_process
from clumpfinder.clumps.model import load_detector
from clumpfinder.clumps.sources import image_folder, read_galaxy_table
from clumpfinder.clumps.tables import read_catalogue

sys.path.insert(0, str(REPO / "benchmarks"))
import real_galaxies  # noqa: E402

FIELD = Field("half_light_radius", 5.0, 27.0, 45.0, 96)
SIDE = 240  # px of the test images
IDS = ["08647474690329084045", "08647474690343043368", "08647474690355429533"]


def _image(seed: int, star: tuple[int, int] | None = (20, 20)) -> np.ndarray:
    """A JPEG-like galaxy: sky at 48/255 with noise, an exponential disc in the centre, a blue
    knot on it, and optionally a star far off the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE] + 0.5
    r = np.hypot(xx - SIDE / 2, yy - SIDE / 2)
    img = np.full((SIDE, SIDE, 3), 48.0) + rng.normal(0, 3, (SIDE, SIDE, 3))
    img += 150 * np.exp(-r / 15.0)[..., None]
    img[..., 2] += 120 * np.exp(-0.5 * (np.hypot(xx - 150, yy - 120) / 2.0) ** 2)
    if star is not None:
        img += 200 * np.exp(-0.5 * (np.hypot(xx - star[0], yy - star[1]) / 2.0) ** 2)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _folder(tmp_path, rows: list[dict] | None = None):
    """A real-galaxies folder: jpegs/, galaxies.csv (the shared set's columns) and clumps.csv."""
    folder = tmp_path / "real"
    (folder / "jpegs").mkdir(parents=True)
    for k, gid in enumerate(IDS):
        Image.fromarray(_image(k)).save(folder / "jpegs" / f"objID{gid}.jpg", quality=90)
    rows = rows or [{"galaxy": gid, "jpeg": f"objID{gid}.jpg", "ra": 150.0 + k, "dec": 2.0, "petror50_r": 6.0,
                     "petror90_r": 14.0, "jpeg_scale_arcsec": 0.2, "psf_fwhm_arcsec": 1.3, "n_clumps": 1}
                    for k, gid in enumerate(IDS)]
    pd.DataFrame(rows).to_csv(folder / "galaxies.csv", index=False)
    pd.DataFrame([{"galaxy": gid, "clump_id": 1, "ra": 0.0, "dec": 0.0, "x": 150.0, "y": 120.0, "box_side": 13.0,
                   "flux_fraction_g": 0.05, "psf_fwhm_arcsec": 1.3} for gid in IDS]).to_csv(folder / "clumps.csv",
                                                                                               index=False)
    return folder


def _detector(tmp_path, field: Field | None = FIELD):
    """An untrained detector at 96 px exported as the workflow exports one (every box it proposes kept)."""
    from test_clumps import _detector_file

    return _detector_file(tmp_path, crop=None, image_size=96, field=field)[1]


def test_the_field_is_the_simulations_clipped_side():
    assert FIELD.side_arcsec(6.0) == 30.0
    assert FIELD.side_arcsec(1.0) == 27.0 and FIELD.side_arcsec(100.0) == 45.0
    # a training crop of 48 of the 96 px: the detector saw half the drawn side
    assert Field("half_light_radius", 5.0, 27.0, 45.0, 96, crop=48).side_arcsec(6.0) == 15.0
    with pytest.raises(ValueError, match="radius"):
        Field("petrosian", 5.0, 27.0, 45.0, 96)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    sim = field_from_config(cfg, simulated=True)
    assert (sim.radius, sim.factor, sim.min_arcsec, sim.max_arcsec, sim.image_size) == (
        "half_light_radius", cfg["simulate"]["fov"]["factor"], cfg["simulate"]["fov"]["min_arcsec"],
        cfg["simulate"]["fov"]["max_arcsec"], cfg["simulate"]["image_size"])
    real = field_from_config(cfg, simulated=False)
    assert real.radius == "size_arcsec" and real.image_size == cfg["data"]["download"]["image_size"]
    assert Field.from_dict(sim.to_dict()) == sim and Field.from_dict(None) is None


def test_a_window_past_the_edge_is_padded_with_sky():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :] = (10, 20, 30)
    rgb[0, 0] = (255, 255, 255)
    assert field_window(60, 40, (30, 20), 20) == (20, 10, 20, 20)
    w = field_window(60, 40, (5, 5), 20)
    assert w == (-5, -5, 20, 20)
    cut = cut_window(rgb, w)
    assert cut.shape == (20, 20, 3) and tuple(cut[0, 0]) == (10, 20, 30)  # the sky's colour
    assert tuple(cut[5, 5]) == (255, 255, 255)  # the image's pixel (0, 0), at the window's offset
    assert cut_window(rgb, (20, 10, 20, 20)).base is not None  # inside the image: a view, no copy
    with pytest.raises(ValueError, match="too small"):
        field_window(60, 40, (30, 20), 3)


def test_galaxy_tables_read_the_shared_sets_columns_and_keep_long_ids(tmp_path):
    folder = _folder(tmp_path)
    t = read_galaxy_table(folder / "galaxies.csv")
    assert t["galaxy"].tolist() == IDS  # 20 digits, leading zero kept
    assert t["r_half_arcsec"].tolist() == [6.0] * 3 and t["pixel_scale_arcsec"].tolist() == [0.2] * 3
    assert t["file"].tolist() == [f"objID{i}.jpg" for i in IDS]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"size": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="neither a galaxy nor a file column"):
        read_galaxy_table(bad)
    pd.DataFrame({"galaxy": ["a", "a"], "r_half_arcsec": [1, 2]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="listed twice.*'a'"):
        read_galaxy_table(bad)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_galaxy_table(tmp_path / "missing.csv")


def test_the_detector_sees_its_field_cut_around_the_galaxy(tmp_path):
    folder = _folder(tmp_path)
    model = _detector(tmp_path)
    _, _, prep, _ = load_detector(model)
    assert prep["field"] == FIELD.to_dict()
    g = next(iter(image_folder(folder / "jpegs", read_galaxy_table(folder / "galaxies.csv"))))
    window, tensor, how = detector_window(g, prep)
    # 5 x 6" = 30" at 0.2"/px: 150 px around the image centre (the table's ra/dec at the centre)
    assert how == "field" and window == (45, 45, 150, 150) and tuple(tensor.shape) == (3, 150, 150)
    assert g.wcs is not None  # north up, east left, from the table's position and scale
    ra, dec = g.wcs.wcs_pix2world((SIDE - 1) / 2, (SIDE - 1) / 2, 0)
    assert np.allclose([ra, dec], [150.0, 2.0])
    # a detector without a recorded field sees the whole image
    assert detector_window(g, {"crop": None, "png": {}})[2] == "whole image"


def test_plain_images_lose_detections_off_the_galaxy_and_on_its_bulge(tmp_path):
    folder = _folder(tmp_path)
    g = next(iter(image_folder(folder / "jpegs", read_galaxy_table(folder / "galaxies.csv"))))
    fp = footprint(g, MeasureSpec())
    assert fp.found and 0.02 < fp.mask.mean() < 0.5
    # detections (display pixels) on the star, on the knot and on the centre (the bulge)
    det = pd.DataFrame({"x1": [15.0, 145.0, 115.0], "y1": [15.0, 115.0, 115.0], "x2": [25.0, 155.0, 125.0],
                        "y2": [25.0, 125.0, 125.0], "score": [0.9, 0.8, 0.7], "label": ["clump"] * 3})
    kept, counts = post_process(g, det, (0, 0, SIDE, SIDE), MeasureSpec(), 0.5, fp)
    assert counts["n_outside"] == 1 and counts["n_bulge"] == 1
    assert kept[["x", "y"]].values.tolist() == [[150.0, 120.0]]


def test_detect_with_a_galaxy_table_catalogues_in_input_pixels_and_names_each_bad_row(tmp_path, capsys):
    rows = [{"galaxy": IDS[0], "jpeg": f"objID{IDS[0]}.jpg", "petror50_r": 6.0, "jpeg_scale_arcsec": 0.2,
             "psf_fwhm_arcsec": 1.3, "ra": 150.0, "dec": 2.0},
            {"galaxy": IDS[1], "jpeg": f"objID{IDS[1]}.jpg", "petror50_r": None, "jpeg_scale_arcsec": 0.2},
            {"galaxy": IDS[2], "jpeg": f"objID{IDS[2]}.jpg", "petror50_r": 6.0, "jpeg_scale_arcsec": 0.0},
            {"galaxy": "12345", "jpeg": "objID12345.jpg", "petror50_r": 6.0, "jpeg_scale_arcsec": 0.2}]
    folder = _folder(tmp_path, rows)
    model = _detector(tmp_path)
    out = tmp_path / "cat.fits"
    assert cli.main(["detect", "--model", str(model), "--images", str(folder / "jpegs"), "--galaxies",
                     str(folder / "galaxies.csv"), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    t = read_catalogue(out)
    failures = t["FAILURES"].to_pandas().set_index("galaxy")["reason"].to_dict()
    assert failures == {f"objID{IDS[1]}": "no_size", f"objID{IDS[2]}": "bad_pixel_scale_arcsec", "12345": "no_image"}
    gal = t["GALAXIES"].to_pandas()
    assert gal["galaxy"].tolist() == [f"objID{IDS[0]}"] and gal["field"].tolist() == ["field"]
    assert gal["field_arcsec"].iloc[0] == pytest.approx(30.0)
    clumps = t["CLUMPS"].to_pandas()
    # every detection in the input's pixels, inside the field's window (45..195) and on the galaxy
    assert len(clumps) and clumps["x"].between(45, 195).all() and clumps["y"].between(45, 195).all()
    assert np.isfinite(clumps["clump_ra"]).all()  # the table's position and scale give a WCS
    # without the table: the whole image, and the command says so
    capsys.readouterr()
    assert cli.main(["detect", "--model", str(model), "--images", str(folder / "jpegs"), "--out",
                     str(tmp_path / "whole.fits"), "--quiet", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "3 whole image" in said and "3 galaxies were seen whole" in said
    assert set(read_catalogue(tmp_path / "whole.fits")["GALAXIES"]["field"]) == {"whole image"}


def test_the_benchmark_runs_the_commands_path_and_scores_by_the_sets_rules(tmp_path):
    folder = _folder(tmp_path)
    model = _detector(tmp_path)
    ours = real_galaxies.run_detector(folder, model)
    assert cli.main(["detect", "--model", str(model), "--images", str(folder / "jpegs"), "--galaxies",
                     str(folder / "galaxies.csv"), "--score", "0.05", "--out", str(tmp_path / "c.fits"), "--quiet"]) == 0
    theirs = read_catalogue(tmp_path / "c.fits")["CLUMPS"].to_pandas()
    cols = ["galaxy", "x", "y", "score", "label"]
    assert ours.clumps[cols].reset_index(drop=True).equals(theirs[cols].reset_index(drop=True))
    # matching: one to one, highest score first, within half the box side
    clumps = pd.DataFrame({"galaxy": ["a", "a", "b"], "x": [10.0, 30.0, 10.0], "y": [10.0, 10.0, 10.0],
                           "box_side": [10.0, 10.0, 10.0], "flux_fraction_g": [0.05, 0.01, np.nan]})
    det = pd.DataFrame({"galaxy": ["a", "a", "a", "b"], "x": [11.0, 10.0, 50.0, 16.0], "y": [10.0] * 4,
                        "score": [0.9, 0.95, 0.8, 0.7], "label": ["clump", "clump", "odd_clump", "clump"]})
    m = real_galaxies.match(det, clumps)
    assert m.set_index("x")["match"].to_dict() == {10.0: 0, 11.0: -1, 50.0: -1, 16.0: -1}
    s = real_galaxies.scores(m, clumps, 0.5)
    assert s["purity"] == 0.25 and s["purity_clump"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["completeness_3pct"] == 1.0 and s["f1"] == pytest.approx(0.4)
    assert real_galaxies.scores(m, clumps, 0.92)["detections"] == 1


def test_a_fits_images_own_scale_wins_over_the_tables(tmp_path):
    from test_clumps import PNG, SCALE, SOURCES, _galaxy_planes, _write_fits

    from clumpfinder.clumps.sources import FitsOptions, fits_folder

    folder = tmp_path / "fits"
    folder.mkdir()
    _write_fits(folder / "g1.fits", _galaxy_planes(SOURCES, 1), 150.0, 2.0)
    table = tmp_path / "t.csv"
    pd.DataFrame([{"galaxy": "g1", "r_half_arcsec": 4.0, "pixel_scale_arcsec": 9.9}]).to_csv(table, index=False)
    g = next(iter(fits_folder(folder, FitsOptions(png=PNG), read_galaxy_table(table))))
    assert g.pixel_scale == pytest.approx(SCALE) and g.meta["r_half_arcsec"] == 4.0
