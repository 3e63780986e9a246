"""Cutouts from a hips2fits service, against a local stand-in (tests/hips_server.py): success,
retries of truncated transfers and 5xx answers, reported failures, resume from the cache, and no
half-written file after a kill at any point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from conftest import REPO
from clumpfinder.data.download import (DownloadSpec, cache_file, download_cutouts, field_of_view, read_cached,
                                  request_key)

sys.path.insert(0, str(REPO / "tests"))
from hips_server import HipsServer, position_key  # noqa: E402

FOV = {"default_arcsec": 30.0, "factor": 4.0, "min_arcsec": 20.0, "max_arcsec": 40.0}


def make_spec(url: str, **kw) -> DownloadSpec:
    cfg = dict(server=url, hips="CDS/P/SDSS9/{band}", bands=["g", "r", "i"], image_size=48, fov=FOV,
               psf_fwhm_arcsec=1.4, timeout=10, retries=2, backoff=0.01, workers=3,
               png={"band_scales": {"g": 1.6, "r": 1.1, "i": 1.0}, "minimum": 0.0, "stretch": 3.0, "Q": 8.0},
               min_valid_fraction=0.5)
    cfg.update(kw)
    return DownloadSpec(**cfg)


def subjects(n: int) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": np.arange(1, n + 1), "ra": 10.0 + np.arange(n) * 0.1,
                         "dec": -5.0 + np.arange(n) * 0.05, "psf_fwhm_arcsec": 1.2})


def test_success_gives_fits_with_wcs_png_and_manifest(tmp_path):
    subs = subjects(4)
    with HipsServer() as srv:
        man, fail, rep = download_cutouts(subs, make_spec(srv.url), tmp_path / "cache", tmp_path / "png")
    assert fail.empty and rep["fetched"] == 4 and rep["requests"] == 12 and rep["retries_by_reason"] == {}
    assert man["subject_id"].tolist() == [1, 2, 3, 4]
    assert np.allclose(man["pixel_scale_arcsec"], 30.0 / 48) and np.allclose(man["psf_fwhm_pixels"], 1.2 * 48 / 30)
    with fits.open(man["fits"][1]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "G", "R", "I"] and hdul["R"].data.shape == (48, 48)
        wcs = WCS(hdul["R"].header)
    # the service's WCS is kept: the galaxy centre is at the image centre, north up, east left
    px, py = wcs.world_to_pixel(SkyCoord(10.1, -4.95, unit="deg"))
    assert abs(px - 23.5) < 1e-6 and abs(py - 23.5) < 1e-6
    east = wcs.world_to_pixel(SkyCoord(10.1 + 3 / 3600 / np.cos(np.radians(-4.95)), -4.95, unit="deg"))
    assert east[0] < px
    with Image.open(tmp_path / "png" / "2.png") as im:
        assert im.size == (48, 48) and im.mode == "RGB"
        rgb = np.asarray(im)
    assert rgb[24, 24].sum() > rgb[2, 2].sum()  # the galaxy is brighter than the sky


def test_a_local_folder_is_read_instead_of_fetched(tmp_path):
    """data.download.folder: cutouts the user has (one file per galaxy, or one per band) become the
    same manifest and PNGs as fetched ones, with their own size and WCS; a missing or bad one is a
    failure row. No request is made (no server runs here)."""
    from clumpfinder.data.simulate import make_wcs
    from clumpfinder.imaging import lupton_png

    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    planes = {b: rng.normal(1.0, 0.1, (40, 40)).astype(np.float32) for b in ("g", "r", "i")}
    wcs = make_wcs(10.0, -5.0, 0.5, 40).to_header()
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(planes[b], header=wcs, name=b.upper()) for b in planes]
    fits.HDUList(hdus).writeto(folder / "1.fits")
    for b in planes:  # subject 2: one file per band, named by the file
        fits.PrimaryHDU(planes[b], header=wcs).writeto(folder / f"2_{b}.fits")
    fits.HDUList(hdus[:3]).writeto(folder / "3.fits")  # no i band
    spec = make_spec("http://127.0.0.1:9/unused", folder=str(folder))
    man, fail, rep = download_cutouts(subjects(4), spec, tmp_path / "cache", tmp_path / "png")
    assert man["subject_id"].tolist() == [1, 2] and rep["requests"] == 0
    assert dict(zip(fail["subject_id"], fail["reason"])) == {3: "missing_band", 4: "missing_file"}
    assert (man["width"] == 40).all() and np.allclose(man["pixel_scale_arcsec"], 0.5)
    assert np.allclose(man["arcsec_per_side"], 20.0) and np.allclose(man["psf_fwhm_pixels"], 1.2 / 0.5)
    assert man["fits"][1].count(",") == 2  # the three band files of subject 2
    expected = lupton_png(planes, 0.5, spec.png)
    for sid in (1, 2):
        with Image.open(tmp_path / "png" / f"{sid}.png") as im:
            assert np.array_equal(np.asarray(im), expected)


def test_truncated_transfer_is_retried(tmp_path):
    subs = subjects(2)
    with HipsServer({position_key(10.1, -4.95): "truncate_once"}) as srv:
        man, fail, rep = download_cutouts(subs, make_spec(srv.url), tmp_path / "cache", tmp_path / "png")
        assert srv.count(10.1, -4.95) == 6  # each band: one truncated answer, then the image
    assert fail.empty and len(man) == 2
    assert sum(rep["retries_by_reason"].values()) == 3
    assert read_cached(cache_file(tmp_path / "cache", 2), request_key(make_spec(""), 10.1, -4.95, 30.0),
                       make_spec("")) is not None


def test_server_errors_are_retried_then_reported(tmp_path):
    subs = subjects(5)
    behaviour = {position_key(10.1, -4.95): "error500", position_key(10.2, -4.9): "missing",
                 position_key(10.3, -4.85): "empty"}
    with HipsServer(behaviour) as srv:
        man, fail, rep = download_cutouts(subs, make_spec(srv.url, retries=3), tmp_path / "cache", tmp_path / "png")
        assert srv.count(10.1, -4.95) == 4  # 1 + 3 retries, then given up (no other band asked)
        assert srv.count(10.2, -4.9) == srv.count(10.3, -4.85) == 1  # not retried
    assert man["subject_id"].tolist() == [1, 5]
    f = fail.set_index("subject_id")
    assert f.loc[2, "reason"] == "http_500" and f.loc[2, "attempts"] == 4
    assert "HiPS tiles could not be read" in f.loc[2, "detail"]  # the service's JSON error text
    assert f.loc[3, "reason"] == "not_found" and f.loc[3, "attempts"] == 1 and "no HiPS coverage" in f.loc[3, "detail"]
    assert f.loc[4, "reason"] == "no_data"
    assert rep["failures_by_reason"] == {"http_500": 1, "no_data": 1, "not_found": 1}
    assert not cache_file(tmp_path / "cache", 2).exists() and not (tmp_path / "png" / "2.png").exists()


def test_unreachable_service_is_reported_not_raised(tmp_path):
    man, fail, rep = download_cutouts(subjects(2), make_spec("http://127.0.0.1:9/hips2fits", retries=1),
                                      tmp_path / "cache", tmp_path / "png")
    assert man.empty and fail["reason"].tolist() == ["connection_error"] * 2 and (fail["attempts"] == 2).all()


def test_resume_skips_valid_files_and_refetches_corrupt_or_stale_ones(tmp_path):
    subs = subjects(4)
    cache = tmp_path / "cache"
    with HipsServer() as srv:
        download_cutouts(subs, make_spec(srv.url), cache, tmp_path / "png")
        first = sum(srv.requests.values())
        # corrupt one file (truncated) and leave a temp file like a killed run would
        data = cache_file(cache, 3).read_bytes()
        cache_file(cache, 3).write_bytes(data[: len(data) // 3])
        (cache / ".4.fits.abc123.fits").write_bytes(b"half")
        man, fail, rep = download_cutouts(subs, make_spec(srv.url), cache, tmp_path / "png")
        assert sum(srv.requests.values()) - first == 3  # only subject 3's three bands
        assert rep["from_cache"] == 3 and rep["fetched"] == 1 and rep["stale_temp_files_removed"] == 1
        assert not list(cache.glob(".*"))
        # a different field of view makes the cached files stale for that subject
        changed = subs.assign(arcsec_per_side=[30.0, 30.0, 30.0, 35.0])
        before = sum(srv.requests.values())
        man, _, rep = download_cutouts(changed, make_spec(srv.url), cache, tmp_path / "png")
        assert sum(srv.requests.values()) - before == 3 and rep["fetched"] == 1
    assert man.set_index("subject_id").loc[4, "arcsec_per_side"] == 35.0


KILL_SCRIPT = """
import sys
sys.path.insert(0, {src!r}); sys.path.insert(0, {tests!r})
import pandas as pd
from test_download import make_spec, subjects
from clumpfinder.data.download import download_cutouts
download_cutouts(subjects(40), make_spec({url!r}, workers=4), {cache!r}, {png!r})
print("finished", flush=True)
"""


@pytest.mark.parametrize("kill_at", [0, 1, 12, 30])
def test_no_half_written_file_survives_a_kill(tmp_path, kill_at):
    """SIGKILL a download once ``kill_at`` cutouts are cached (others are in flight); every file
    left under its final name is complete, and a resumed run removes the temp files and fetches
    only what is missing."""
    cache, png = tmp_path / "cache", tmp_path / "out" / "png"
    with HipsServer(delay=0.02) as srv:
        script = KILL_SCRIPT.format(src=str(REPO / "src"), tests=str(REPO / "tests"), url=srv.url,
                                    cache=str(cache), png=str(png))
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (sum(srv.requests.values()) if kill_at == 0 else len(list(cache.glob("[0-9]*.fits")))) >= max(kill_at, 1):
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0].decode()
        assert "finished" not in out, "the download ended before the kill"
        spec = make_spec(srv.url)
        sides = field_of_view(subjects(40), FOV)
        done = []
        for sid, ra, dec, side in zip(subjects(40)["subject_id"], subjects(40)["ra"], subjects(40)["dec"], sides):
            path = cache_file(cache, sid)
            if path.exists():
                assert read_cached(path, request_key(spec, ra, dec, side), spec) is not None, f"{path} is incomplete"
                done.append(sid)
        assert not png.exists()  # the PNG folder appears only when complete
        assert len(done) >= kill_at and len(done) < 40
        before = sum(srv.requests.values())
        man, fail, rep = download_cutouts(subjects(40), spec, cache, png)
        assert fail.empty and len(man) == 40 and rep["from_cache"] == len(done)
        assert sum(srv.requests.values()) - before == 3 * (40 - len(done))
    assert not list(cache.glob(".*")) and not list(png.parent.glob(".png.*"))
    assert sorted(p.name for p in png.iterdir()) == sorted(f"{i}.png" for i in range(1, 41))


def test_field_of_view_follows_the_subject_list():
    subs = pd.DataFrame({"arcsec_per_side": [70.0, np.nan, np.nan, np.nan], "size_arcsec": [5.0, 10.0, 30.0, np.nan]})
    assert field_of_view(subs, FOV).tolist() == [70.0, 40.0, 40.0, 30.0]
    subs["size_arcsec"] = [1.0, 6.0, 2.0, -1.0]
    assert field_of_view(subs, FOV).tolist() == [70.0, 24.0, 20.0, 30.0]
    assert field_of_view(pd.DataFrame({"ra": [1.0]}), FOV).tolist() == [30.0]


def test_spec_needs_the_colour_bands():
    cfg = {k: v for k, v in make_spec("x").__dict__.items()}
    cfg["bands"] = ["u", "r", "i"]
    with pytest.raises(ValueError, match="must include g, r, i.*missing g"):
        DownloadSpec.from_config({**cfg, "cache": "c"})


def test_repeated_subject_is_an_error(tmp_path):
    subs = pd.concat([subjects(2), subjects(1)])
    with pytest.raises(ValueError, match="subject_id 1 appears twice"):
        download_cutouts(subs, make_spec("http://127.0.0.1:9/x"), tmp_path / "c", tmp_path / "p")


def test_report_is_json_serialisable(tmp_path):
    with HipsServer() as srv:
        _, _, rep = download_cutouts(subjects(1), make_spec(srv.url), tmp_path / "cache", tmp_path / "png")
    json.dumps(rep)


def test_processes_give_the_same_result(tmp_path):
    subs = subjects(7)
    with HipsServer({position_key(10.2, -4.9): "missing"}) as srv:
        one = download_cutouts(subs, make_spec(srv.url), tmp_path / "c1", tmp_path / "p1")
        two = download_cutouts(subs, make_spec(srv.url), tmp_path / "c2", tmp_path / "p2", processes=2, chunk_size=2)
    assert two[2]["processes"] == 2
    pd.testing.assert_frame_equal(one[0].drop(columns="fits"), two[0].drop(columns="fits"))
    pd.testing.assert_frame_equal(one[1], two[1])
    for sid in one[0]["subject_id"]:
        assert (tmp_path / "p1" / f"{sid}.png").read_bytes() == (tmp_path / "p2" / f"{sid}.png").read_bytes()
