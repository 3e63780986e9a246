"""Subject lists for real data: Zooniverse subject and classification exports, plain CSV, a
clump catalogue; bad rows skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clumpfinder.data.subjects import from_catalogue, read_subject_list


def test_zooniverse_subject_export(tmp_path):
    meta = [{"#ra": 150.1, "#dec": 2.2, "redshift": "0.05", "#dr8objid": "1237648720693755918", "rFWHM": 1.3,
             "arcsecPerSide": 72.5},
            {"ra": 151.0, "dec": -1.0},
            {"ra": "n/a", "dec": 3.0},
            {"ra": 400.0, "dec": 3.0}]
    rows = [{"subject_id": 10 + i, "project_id": 1, "workflow_id": 7, "subject_set_id": 3,
             "metadata": json.dumps(m), "locations": json.dumps({"0": "https://x/y.png"})} for i, m in enumerate(meta)]
    rows.append({**rows[0], "subject_set_id": 4})  # one subject in two subject sets
    rows.append({**rows[1], "subject_id": 20, "metadata": "{broken"})
    path = tmp_path / "subjects.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    subs, rep = read_subject_list(path)
    assert rep["format"] == "zooniverse_subjects" and subs["subject_id"].tolist() == [10, 11]
    first = subs.iloc[0]
    assert (first["ra"], first["dec"], first["redshift"], first["psf_fwhm_arcsec"], first["arcsec_per_side"]) == \
        (150.1, 2.2, 0.05, 1.3, 72.5)
    assert first["galaxy_id"] == "1237648720693755918"  # an SDSS id stays exact
    assert np.isnan(subs.iloc[1]["redshift"]) and subs.iloc[1]["galaxy_id"] == "11"
    assert rep["rows_skipped"] == {"bad_metadata_json": 1, "bad_position": 1, "missing_position": 1}


def test_subjects_from_a_classification_export(tiny_export, tiny_survey):
    subs, rep = read_subject_list(tiny_export["path"])
    man = tiny_survey["manifest"].set_index("subject_id")
    assert rep["format"] == "zooniverse_classifications" and len(subs) == len(man)
    s = subs.set_index("subject_id").loc[man.index]
    assert np.allclose(s["ra"], man["ra"], atol=1e-6) and np.allclose(s["dec"], man["dec"], atol=1e-6)
    # the Clump Scout geometry travels with the subject, so downloaded cutouts match the clicks
    assert np.allclose(s["arcsec_per_side"], man["arcsec_per_side"], atol=1e-3)


def test_plain_csv(tmp_path):
    path = tmp_path / "galaxies.csv"
    pd.DataFrame({"RA": [10.0, 11.0, np.nan], "Dec": [1.0, 2.0, 3.0], "z": [0.1, 0.2, 0.3]}).to_csv(path, index=False)
    subs, rep = read_subject_list(path)
    assert subs["subject_id"].tolist() == [1, 2] and subs["redshift"].tolist() == [0.1, 0.2]
    assert rep["rows_skipped"] == {"missing_position": 1} and rep["examples"] == [{"row": 3, "reason": "missing_position"}]
    pd.DataFrame({"subject_id": [5, "x"], "ra": [1.0, 2.0], "dec": [0.0, 0.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="line 3: subject_id 'x' is not an integer"):
        read_subject_list(path)
    pd.DataFrame({"name": ["a"], "x": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="needs ra and dec columns.*columns are name, x"):
        read_subject_list(path)
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        read_subject_list(tmp_path / "nope.csv")


def test_from_catalogue_keeps_sdss_ids():
    g = pd.DataFrame({"galaxy_id": [1237648720693755918, 1237648720693755999], "ra": [1.0, 2.0],
                      "dec": [0.0, 1.0], "redshift": [0.1, np.nan], "psf_fwhm_arcsec": [1.2, 1.4]})
    subs = from_catalogue(g)
    assert subs["subject_id"].tolist() == [1237648720693755918, 1237648720693755999]
    subs = from_catalogue(g.assign(galaxy_id=["J0001", "J0002"]))
    assert subs["subject_id"].tolist() == [1, 2] and subs["galaxy_id"].tolist() == ["J0001", "J0002"]


def test_origin_marks_injected_subjects(tmp_path):
    """Adams et al. (2022) injected synthetic clumps into real images: those subjects say
    origin 'sim' (any case of key and value); the rest are real galaxies."""
    from clumpfinder.data.subjects import injected_subjects

    meta = [{"ra": 1.0, "dec": 0.0, "#dr8objid": "1237648720693755918", "origin": "real"},
            {"ra": 1.0, "dec": 0.0, "#dr8objid": "1237648720693755918", "Origin": "SIM"},  # same galaxy, injected
            {"ra": 2.0, "dec": 0.0, "!ORIGIN": "sim "},
            {"ra": 3.0, "dec": 0.0}]
    rows = [{"subject_id": 10 + i, "metadata": json.dumps(m), "locations": "{}"} for i, m in enumerate(meta)]
    path = tmp_path / "subjects.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    subs, rep = read_subject_list(path)
    assert subs["origin"].tolist()[:3] == ["real", "SIM", "sim "] and pd.isna(subs["origin"].iloc[3])
    assert subs["galaxy_id"].tolist() == ["1237648720693755918"] * 2 + ["12", "13"]
    assert rep["origin_sim"] == 2 and rep["without_galaxy_id"] == 2
    subs.to_csv(tmp_path / "list.csv", index=False)  # as the split and the consensus read it back
    ids, note = injected_subjects(pd.read_csv(tmp_path / "list.csv"))
    assert ids.tolist() == [11, 12] and note == {"origin_column": True, "injected": 2}
    ids, note = injected_subjects(subs.drop(columns="origin"))
    assert ids.tolist() == [] and not note["origin_column"]


def test_a_simulated_export_has_no_injected_subjects(tiny_export):
    """The simulated export gives every subject the same origin (volunteers.py has written 'sim'
    and 'real'): on the real-data route that reads it, none is an injected-clump subject."""
    from clumpfinder.data.subjects import injected_subjects

    subs, rep = read_subject_list(tiny_export["path"])
    assert rep["origin_sim"] in (0, len(subs)) and len(subs) > 0
    assert len(injected_subjects(subs)[0]) == 0
    ids, note = injected_subjects(subs.assign(origin="sim"))  # every subject 'sim': no information
    assert len(ids) == 0 and "none is treated as injected" in note["note"]
