"""A catalogue against the simulated truth: positions, magnitudes, and the 8 % flag.

Catalogue clumps are matched one-to-one to the simulated objects of their galaxy (any kind: a
detection on a star, a faint knot or a field source beside the galaxy is matched to it, so it does
not count as a hit on a clump)
by increasing separation, within ``match_fwhm`` x the galaxy's PSF FWHM. A truth clump is a
star-forming object (giant clump or knot) with its g-band flux fraction of the galaxy; the targets
of issue 19 read: matched positions within a median 0.2 arcsec, and for clumps of at least 8 % of
the galaxy's flux a median |delta mag| <= 0.05 with a robust scatter (1.4826 x MAD) <= 0.15 in g.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord
import astropy.units as u

from clumpfinder.clumps.sources import NANOMAGGY_ZP
from clumpfinder.data.kinds import ODD_KINDS, STAR_FORMING


def match(clumps: pd.DataFrame, truth: pd.DataFrame, galaxies: pd.DataFrame, match_fwhm: float = 1.0) -> pd.DataFrame:
    """Pairs (catalogue row index, truth row index, separation in arcsec) by increasing separation."""
    psf = galaxies.set_index("subject_id")["psf_fwhm_arcsec"]
    pairs = []
    t_by = {k: v for k, v in truth.groupby("subject_id")}
    for sid, c in clumps.groupby("subject_id"):
        t = t_by.get(sid)
        if t is None or t.empty:
            continue
        cc = SkyCoord(c["clump_ra"].to_numpy() * u.deg, c["clump_dec"].to_numpy() * u.deg)
        tc = SkyCoord(t["ra"].to_numpy() * u.deg, t["dec"].to_numpy() * u.deg)
        sep = cc[:, None].separation(tc[None, :]).arcsec
        radius = match_fwhm * float(psf.get(sid, np.nan))
        order = np.dstack(np.unravel_index(np.argsort(sep, axis=None), sep.shape))[0]
        used_c, used_t = set(), set()
        for i, j in order:
            if sep[i, j] > radius:
                break
            if i in used_c or j in used_t:
                continue
            used_c.add(i)
            used_t.add(j)
            pairs.append((c.index[i], t.index[j], float(sep[i, j])))
    return pd.DataFrame(pairs, columns=["clump", "truth", "sep_arcsec"])


def robust_scatter(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def validate(clumps: pd.DataFrame, galaxies: pd.DataFrame, truth: pd.DataFrame, band: str = "g",
             giant: float = 0.08, match_fwhm: float = 1.0) -> dict[str, Any]:
    """Position, photometry and flag figures of a catalogue of simulated galaxies against their truth."""
    truth = truth[truth["subject_id"].isin(galaxies["subject_id"])].copy()
    star_forming = truth["kind"].isin(STAR_FORMING)
    pairs = match(clumps, truth, galaxies, match_fwhm)
    m = pairs.join(clumps, on="clump").join(truth.add_suffix("_truth"), on="truth")
    m_sf = m[m["kind_truth"].isin(STAR_FORMING)]
    giant_truth = truth[star_forming & (truth["flux_fraction_g"] >= giant)]
    mg = m_sf[m_sf["flux_fraction_g_truth"] >= giant]
    dmag = (mg[f"mag_{band}"] - (NANOMAGGY_ZP - 2.5 * np.log10(mg[f"flux_{band}_truth"]))).dropna()
    flag = f"is_clump_{round(100 * giant):d}pct"
    flagged = clumps[clumps[flag].astype(bool)] if flag in clumps else clumps.iloc[:0]
    flagged_matched = m[m["clump"].isin(flagged.index)]
    out = {
        "galaxies": int(len(galaxies)), "catalogue_clumps": int(len(clumps)),
        "truth_star_forming": int(star_forming.sum()), "match_radius_fwhm": match_fwhm,
        "matched": int(len(m)), "matched_star_forming": int(len(m_sf)),
        "position": {
            "n": int(len(m_sf)), "median_offset_arcsec": float(m_sf["sep_arcsec"].median()) if len(m_sf) else None,
            "p90_offset_arcsec": float(m_sf["sep_arcsec"].quantile(0.9)) if len(m_sf) else None,
            "target_median_arcsec": 0.2,
        },
        "photometry": {
            "band": band, "min_flux_fraction": giant, "n": int(len(dmag)),
            "median_dmag": float(dmag.median()) if len(dmag) else None,
            "median_abs_dmag": float(dmag.abs().median()) if len(dmag) else None,
            "robust_scatter_mag": robust_scatter(dmag.to_numpy()) if len(dmag) else None,
            "target_median_abs_dmag": 0.05, "target_robust_scatter_mag": 0.15,
            "median_flux_ratio_over_truth": float((mg["flux_ratio"] / mg["flux_fraction_g_truth"]).median())
            if len(mg) else None,
            # where the errors come from: clumps that stand out little from the galaxy's light
            # under them (the truth's local contrast, split at its median) and resolved ones
            "by_contrast": _halves(dmag, mg.loc[dmag.index, f"contrast_{band}_truth"]),
            "by_size": _halves(dmag, mg.loc[dmag.index, "sigma_arcsec_truth"]),
        },
        "flag": {
            "name": flag, "truth_giant": int(len(giant_truth)), "catalogue_flagged": int(len(flagged)),
            # detected: a giant truth clump has a catalogue clump, whatever its flag
            "completeness_detected": _frac(len(mg), len(giant_truth)),
            # flagged: ... and the catalogue says it is a giant clump
            "completeness_flagged": _frac(int(mg["clump"].isin(flagged.index).sum()), len(giant_truth)),
            # a flagged clump is a star-forming clump (any flux) / a giant one
            "purity_star_forming": _frac(int(flagged_matched["kind_truth"].isin(STAR_FORMING).sum()), len(flagged)),
            "purity_giant": _frac(int((flagged_matched["kind_truth"].isin(STAR_FORMING)
                                       & (flagged_matched["flux_fraction_g_truth"] >= giant)).sum()), len(flagged)),
        },
    }
    if "label" in clumps:  # the rule that odd-class detections are never flagged, measured
        out["flag"]["if_odd_class_were_flagged"] = _odd_class_flags(clumps, m, flagged, giant_truth, giant)
    return out


def _odd_class_flags(clumps: pd.DataFrame, m: pd.DataFrame, flagged: pd.DataFrame, giant_truth: pd.DataFrame,
                     giant: float) -> dict[str, Any]:
    """The giant-clump flag as it would be if detections of class odd_clump above the flux ratio
    were flagged too: how many there are, what they match in the truth, and the flag's
    completeness and purity then (beside the figures above, where they are never flagged)."""
    odd = clumps[(clumps["label"] != "clump") & (clumps["flux_ratio"] > giant)]
    odd_matched = m[m["clump"].isin(odd.index)]
    both = flagged.index.union(odd.index)
    both_matched = m[m["clump"].isin(both)]
    is_giant = (m["kind_truth"].isin(STAR_FORMING)) & (m["flux_fraction_g_truth"] >= giant)
    return {"odd_class_above_ratio": int(len(odd)),
            "matched_odd_truth": int(odd_matched["kind_truth"].isin(ODD_KINDS).sum()),
            "matched_star_forming": int(odd_matched["kind_truth"].isin(STAR_FORMING).sum()),
            "matched_giant": int(is_giant[odd_matched.index].sum()),
            "catalogue_flagged": int(len(both)),
            "completeness_flagged": _frac(int(m.loc[is_giant, "clump"].isin(both).sum()), len(giant_truth)),
            "purity_giant": _frac(int(is_giant[both_matched.index].sum()), len(both))}


def _halves(dmag: pd.Series, key: pd.Series) -> dict[str, Any] | None:
    """Median |delta mag| and robust scatter below and above the median of ``key``."""
    if len(dmag) < 4:
        return None
    cut = float(key.median())
    out: dict[str, Any] = {"split_at": cut}
    for name, sel in (("below", key <= cut), ("above", key > cut)):
        d = dmag[sel.to_numpy()]
        out[name] = {"n": int(len(d)), "median_abs_dmag": float(d.abs().median()),
                     "robust_scatter_mag": robust_scatter(d.to_numpy())}
    return out


def _frac(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None
