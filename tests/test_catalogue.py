"""Clump catalogues in AAS machine-readable format (written here by astropy, in the layout of
Adams et al. 2022 Table 3: one row per clump with its host) -> galaxies, clumps, pixels."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, Table

from clumpfinder.data.catalogue import clumps_to_pixels, read_clump_catalogue
from clumpfinder.data.simulate import make_wcs

GAL = {1237648720693755918: (150.0, 2.0, 0.05, 1.2), 1237648720693755999: (151.0, -1.0, 0.08, 1.5),
       1237648720693756000: (10.0, 30.0, 0.11, 1.1)}


def write_mrt(path, rows, masked=(), labels=("objID", "z", "RAdeg", "DEdeg", "rFWHM", "RAcl", "DEcl",
                                              "FluxRatio", "Unusual")):
    """rows: (objID, clump dRA arcsec, clump dDec arcsec, flux ratio, unusual); ``masked``: (row, label)."""
    cols = {k: [] for k in labels}
    for oid, dra, ddec, ratio, odd in rows:
        ra, dec, z, fwhm = GAL[oid]
        for k, v in zip(labels, (oid, z, ra, dec, fwhm, ra + dra / 3600 / np.cos(np.radians(dec)),
                                 dec + ddec / 3600, ratio, odd)):
            cols[k].append(v)
    t = Table()
    units = {labels[2]: u.deg, labels[3]: u.deg, labels[4]: u.arcsec, labels[5]: u.deg, labels[6]: u.deg}
    for k, v in cols.items():
        mask = [(i, k) in masked for i in range(len(v))]
        t[k] = MaskedColumn(v, mask=mask, unit=units.get(k)) if any(mask) else v
        if k in units and not any(mask):
            t[k].unit = units[k]
    t.write(path, format="ascii.mrt", overwrite=True)
    return path


ROWS = [(1237648720693755918, 3.0, -2.0, 0.12, 0), (1237648720693755918, -5.0, 4.0, 0.05, 1),
        (1237648720693755999, 0.0, 6.0, 0.30, 0), (1237648720693756000, 8.0, 0.0, 0.04, 0)]


def test_reads_galaxies_and_clumps_exactly(tmp_path):
    cat = read_clump_catalogue(write_mrt(tmp_path / "t3.txt", ROWS))
    g, c, rep = cat.galaxies, cat.clumps, cat.report
    assert list(g["galaxy_id"]) == list(GAL)  # 19-digit SDSS ids survive exactly, in file order
    assert g.set_index("galaxy_id").loc[1237648720693755918, ["n_clumps", "n_odd"]].tolist() == [2, 1]
    assert g["psf_fwhm_arcsec"].tolist() == [1.2, 1.5, 1.1] and g["redshift"].tolist() == [0.05, 0.08, 0.11]
    assert list(c["kind"]) == ["clump", "odd_clump", "clump", "clump"] and list(c["clump_id"]) == [0, 1, 0, 0]
    assert c["flux_ratio"].tolist() == [0.12, 0.05, 0.30, 0.04]
    assert rep["rows_read"] == rep["rows_used"] == 4 and rep["rows_skipped"] == {}
    assert (rep["clumps"], rep["odd_clumps"], rep["galaxies"]) == (3, 1, 3)
    assert rep["columns"]["psf_fwhm_arcsec"] == "rFWHM"


def test_labels_given_by_the_configuration(tmp_path):
    labels = ("GalID", "zz", "Gra", "Gdec", "psf", "Cra", "Cdec", "ratio", "flag")
    path = write_mrt(tmp_path / "t.txt", ROWS, labels=labels)
    with pytest.raises(ValueError, match=r"t.txt: no column for galaxy_id \(tried objID.*columns are GalID, zz"):
        read_clump_catalogue(path)
    names = dict(zip(("galaxy_id", "redshift", "ra", "dec", "psf_fwhm_arcsec", "clump_ra", "clump_dec",
                      "flux_ratio", "unusual"), labels))
    cat = read_clump_catalogue(path, labels=names)
    assert len(cat.clumps) == 4 and cat.report["odd_clumps"] == 1
    with pytest.raises(ValueError, match="label 'nope' \\(given for ra\\) is not a column"):
        read_clump_catalogue(path, labels={**names, "ra": "nope"})


def test_bad_rows_are_skipped_and_counted(tmp_path):
    rows = ROWS + [(1237648720693756000, 1.0, 1.0, 0.1, 0)]
    path = write_mrt(tmp_path / "t.txt", rows, masked={(1, "RAcl"), (3, "z")})
    cat = read_clump_catalogue(path)
    assert cat.report["rows_skipped"] == {"missing_clump_ra": 1}
    assert cat.report["examples"] == [{"row": 2, "reason": "missing_clump_ra"}]
    assert len(cat.clumps) == 4 and cat.report["odd_clumps"] == 0
    # a blank optional value is NaN in its row; the galaxy takes it from its first row that has one
    assert cat.galaxies.set_index("galaxy_id").loc[1237648720693756000, "redshift"] == 0.11
    t = Table.read(path, format="ascii.mrt")
    assert np.ma.is_masked(t["z"][3])
    t = Table.read(path, format="ascii.mrt")
    t["DEcl"][0] = 95.0  # impossible declination
    t["RAdeg"][4] += 0.01  # a host position 36" off its galaxy's first row (row 4)
    t.write(tmp_path / "u.txt", format="ascii.mrt", overwrite=True)
    rep = read_clump_catalogue(tmp_path / "u.txt").report
    assert rep["rows_skipped"] == {"missing_clump_ra": 1, "bad_clump_ra_clump_dec": 1}
    assert rep["rows_with_inconsistent_galaxy_position"] == 1
    (tmp_path / "junk.txt").write_text("this is not a table\n")
    with pytest.raises(ValueError, match="junk.txt: not a readable machine-readable"):
        read_clump_catalogue(tmp_path / "junk.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        read_clump_catalogue(tmp_path / "missing.txt")


def test_clumps_project_through_the_cutout_wcs(tmp_path):
    cat = read_clump_catalogue(write_mrt(tmp_path / "t3.txt", ROWS))
    ra, dec, _, _ = GAL[1237648720693755918]
    wcs = make_wcs(ra, dec, 0.25, 64)  # north up, east left, 0.25"/px
    px = clumps_to_pixels(cat.clumps[cat.clumps["galaxy_id"] == 1237648720693755918], wcs, 64, 64)
    # +3" east -> 12 px left of centre; -2" south -> 8 px down (PNG y grows downwards)
    assert px["x"].tolist() == pytest.approx([32 - 12, 32 + 20], abs=1e-3)
    assert px["y"].tolist() == pytest.approx([32 + 8, 32 - 16], abs=1e-3)
    assert px["inside"].all()
    far = clumps_to_pixels(cat.clumps[cat.clumps["galaxy_id"] == 1237648720693755999], wcs, 64, 64)
    assert not far["inside"].any()
    assert len(clumps_to_pixels(cat.clumps.iloc[:0], wcs, 64, 64)) == 0
