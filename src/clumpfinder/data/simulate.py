"""Simulated Clump Scout survey: SDSS-like g, r, i images of clumpy disc galaxies drawn with GalSim.

Physical model (all distributions are set in the configuration, defaults in config/config.yaml):

* Redshift 0.02 < z < 0.25 with p(z) ~ z^2 exp(-(z/z0)^1.5) (a magnitude-limited survey), absolute
  magnitude M_r ~ N(-21, 0.6), SDSS main-sample limit r < 17.77, disc scale length from a
  size-luminosity relation (log R_d = log R_0 - 0.1 (M_r + 21) +- 0.15 dex), angular sizes from the
  Planck18 cosmology; only resolved galaxies (half-light radius above a limit) enter, as Clump Scout
  selected galaxies large enough to see structure.
* Host = inclined exponential disc + de Vaucouleurs bulge (B/T uniform in a range), discs bluer
  than bulges; a share of hosts has no bulge (``bulge.fraction``), and a share is irregular: part
  of the disc's light in a second exponential disc off the centre (``irregular``).
* Spiral arms in a share of the discs: 2-4 logarithmic arms (pitch 12-30 degrees) carrying part
  of the disc's light, bluer than the disc, drawn as a surface-brightness map on the pixel grid
  (``arm_surface_brightness``) that GalSim convolves with the PSF like every other component.
* Star-forming regions, all 0.1-0.5 kpc Gaussians (unresolved, so PSF-sized after convolution) and
  blue (g - r ~ 0.1), with flux fractions (g-band region/galaxy) from the HII-region luminosity
  function dN/df ~ f^-2: *giant clumps* (1.5-25 %, spanning the 3-8 % thresholds of Adams et al.
  2022) in clumpy galaxies, and *knots* (0.3-1.5 %, below any giant-clump definition) in every
  disc. In spiral galaxies most of them sit on the arms. Knots are what real volunteers click by
  mistake together (correlated false positives); the truth table keeps every one with its flux
  fraction (``kind`` clump or knot), so the evaluation decides what counts as a clump.
* "Odd" objects: red foreground stars and small red background galaxies seen through the disc
  (a Poisson number per galaxy).
* Field sources (``field_sources``): foreground stars and background galaxies beside the galaxy,
  beyond a radius in half-light radii, with star and galaxy number counts per arcmin^2 of sky (truth
  kind ``field``; volunteers see them as they see odd objects; the evaluation ignores them).
* PSF: Moffat (beta 3) with per-galaxy seeing drawn around SDSS's median r-band FWHM; sky noise per
  band from SDSS 5-sigma point-source depths at the median seeing, scattered by 0.1 mag per band and
  by ``depth_field_scatter_mag`` per field (sky-dominated Gaussian noise).
* Images in nanomaggies on a per-galaxy pixel scale (field of view scales with the galaxy, as in
  Clump Scout); FITS per subject with a celestial TAN WCS; colour PNG with ``make_lupton_rgb``.

Pixel convention for everything downstream (truth, clicks, boxes): PNG/display coordinates,
origin at the top-left corner of the top-left pixel, x to the right, y downwards, pixel centres at
half-integers. The FITS arrays are stored bottom row first (FITS convention); ``png_to_fits_pixel``
converts.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import galsim
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from astropy.cosmology import Planck18
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image
from scipy.integrate import quad

from clumpfinder.data.kinds import FIELD
from clumpfinder.imaging import lupton_png, png_to_fits_pixel
from clumpfinder.io import atomic_dir, known_fields

log = logging.getLogger(__name__)

BANDS = ("g", "r", "i")
#: seeing ratio to r-band per band (atmospheric seeing ~ lambda^-0.2)
PSF_BAND_RATIO = {"g": 1.06, "r": 1.0, "i": 0.96}
#: colours (mean, sigma) of the components: discs of star-forming spirals, red bulges,
#: young blue clumps, red foreground stars (K/M dwarfs), red background galaxies at higher z
COLOURS = {
    "disc": {"g-r": (0.45, 0.08), "r-i": (0.22, 0.05)},
    "bulge": {"g-r": (0.78, 0.05), "r-i": (0.40, 0.04)},
    "arm": {"g-r": (0.30, 0.08), "r-i": (0.12, 0.05)},
    "clump": {"g-r": (0.10, 0.15), "r-i": (0.00, 0.10)},
    "star": {"g-r": (1.00, 0.30), "r-i": (0.50, 0.25)},
    "background": {"g-r": (1.20, 0.20), "r-i": (0.50, 0.10)},
    "field_star": {"g-r": (0.90, 0.35), "r-i": (0.40, 0.30)},
    "field_galaxy": {"g-r": (0.90, 0.30), "r-i": (0.40, 0.12)},
}
#: slope of the flux distribution dN/df ~ f^slope of field stars and galaxies (from number counts
#: dN/dm ~ 10^(a m): slope -(1 + 2.5 a); a ~ 0.2 for high-latitude stars, ~0.45 for galaxies)
FIELD_FLUX_SLOPE = {"star": -1.5, "galaxy": -2.1}
NANOMAGGY_ZP = 22.5
#: subject ids of the detection survey count up from here (other populations start elsewhere)
FIRST_SUBJECT_ID = 100_000
#: shape of the spiral arms: phase profile ((1 + cos)/2)^ARM_SHARPNESS, light rising from the
#: centre as 1 - exp(-(r / (ARM_INNER r_d))^2) (arms start outside the bulge)
ARM_SHARPNESS = 4
ARM_INNER = 1.0
#: mean of ((1 + cos)/2)^k over a period: binomial(2k, k) / 4^k
_ARM_PHASE_MEAN = math.comb(2 * ARM_SHARPNESS, ARM_SHARPNESS) / 4**ARM_SHARPNESS
#: the integral of exp(-x) (1 - exp(-(x / ARM_INNER)^2)) 2 pi x dx over x > 0 (arm light per r_d^2)
_ARM_RADIAL_INTEGRAL = quad(lambda x: np.exp(-x) * (1 - np.exp(-((x / ARM_INNER) ** 2))) * 2 * np.pi * x, 0, np.inf)[0]


@dataclass(frozen=True)
class SurveySpec:
    """The ``simulate`` section of the configuration."""

    seed: int
    n_galaxies: int
    image_size: int
    redshift: dict[str, float]
    abs_mag_r: dict[str, float]
    mag_limit_r: float
    disc_scale_kpc: dict[str, float]
    min_half_light_arcsec: float
    fov: dict[str, float]
    max_inclination_deg: float
    psf: dict[str, float]
    depth_5sigma: dict[str, float]
    depth_field_scatter_mag: float
    bulge: dict[str, Any]
    irregular: dict[str, Any]
    arms: dict[str, Any]
    clumps: dict[str, Any]
    knots: dict[str, Any]
    odd: dict[str, Any]
    field_sources: dict[str, Any]
    png: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "SurveySpec":
        return cls(**known_fields(cls, cfg, "simulate"))


# --------------------------------------------------------------------------------------------
# catalogue: galaxy and object parameters (cheap, vectorised, single process)
# --------------------------------------------------------------------------------------------


def _moffat_nea_arcsec2(fwhm: np.ndarray | float, beta: float) -> np.ndarray | float:
    """Noise-equivalent area 1/int(p^2) of a normalised Moffat profile."""
    alpha = np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return np.pi * alpha**2 * (2.0 * beta - 1.0) / (beta - 1.0) ** 2


def _mag_to_nmgy(mag: np.ndarray | float) -> np.ndarray | float:
    return 10.0 ** (-0.4 * (np.asarray(mag) - NANOMAGGY_ZP))


def _draw_hosts(spec: SurveySpec, rng: np.random.Generator, rng_more: np.random.Generator) -> pd.DataFrame:
    """The host galaxies. ``rng_more`` draws what later additions to the model need (bulge presence,
    irregular components), so that surveys without them stay identical to earlier ones."""
    n = spec.n_galaxies
    zr, mr, dr = spec.redshift, spec.abs_mag_r, spec.disc_scale_kpc
    accepted: list[pd.DataFrame] = []
    n_acc = 0

    def pz(z):  # p(z) ~ z^2 exp(-(z/z0)^1.5), drawn by rejection from a uniform envelope
        return z**2 * np.exp(-((z / zr["z0"]) ** 1.5))

    pmax = pz(np.linspace(zr["min"], zr["max"], 512)).max()
    for _ in range(200):
        m = 8 * n + 100
        z = rng.uniform(zr["min"], zr["max"], m)
        z = z[rng.uniform(0, pmax, m) < pz(z)]
        abs_mag = rng.normal(mr["mean"], mr["sigma"], z.size)
        log_rd = np.log10(dr["median"]) - 0.1 * (abs_mag + 21.0) + rng.normal(0, dr["sigma_dex"], z.size)
        rd_kpc = 10**log_rd
        kpc_per_arcsec = Planck18.kpc_proper_per_arcmin(z).value / 60.0
        mag_r = abs_mag + Planck18.distmod(z).value
        rd_arcsec = rd_kpc / kpc_per_arcsec
        r_half = 1.678 * rd_arcsec
        ok = (mag_r < spec.mag_limit_r) & (r_half >= spec.min_half_light_arcsec)
        accepted.append(
            pd.DataFrame(
                {
                    "redshift": z[ok], "abs_mag_r": abs_mag[ok], "mag_r": mag_r[ok],
                    "disc_scale_kpc": rd_kpc[ok], "disc_scale_arcsec": rd_arcsec[ok],
                    "kpc_per_arcsec": kpc_per_arcsec[ok],
                }
            )
        )
        n_acc += int(ok.sum())
        if n_acc >= n:
            break
    else:  # pragma: no cover - only with absurd configurations
        raise ValueError(
            "simulate: fewer than n_galaxies galaxies pass mag_limit_r and min_half_light_arcsec; "
            "relax them"
        )
    hosts = pd.concat(accepted, ignore_index=True).iloc[:n].reset_index(drop=True)

    cos_i = rng.uniform(np.cos(np.radians(spec.max_inclination_deg)), 1.0, n)
    hosts["inclination_deg"] = np.degrees(np.arccos(cos_i))
    hosts["position_angle_deg"] = rng.uniform(0, 180, n)
    bt = spec.bulge["to_total"]
    hosts["bulge_to_total"] = rng.uniform(bt["min"], bt["max"], n)
    hosts["bulge_half_light_arcsec"] = np.maximum(
        0.3, hosts["disc_scale_arcsec"] * rng.uniform(0.15, 0.35, n)
    )
    hosts["bulge_axis_ratio"] = rng.uniform(0.7, 1.0, n)
    for comp in ("disc", "bulge", "arm"):
        for colour, (mu, sig) in COLOURS[comp].items():
            hosts[f"{comp}_{colour}"] = rng.normal(mu, sig, n)
    arms = spec.arms
    spiral = rng.uniform(size=n) < arms["fraction"]
    weights = np.asarray(arms["count_weights"], float)
    hosts["n_arms"] = np.where(spiral, 2 + rng.choice(len(weights), n, p=weights / weights.sum()), 0)
    hosts["arm_pitch_deg"] = rng.uniform(arms["pitch_deg"]["min"], arms["pitch_deg"]["max"], n)
    hosts["arm_phase"] = rng.uniform(0, 2 * np.pi, n)
    hosts["arm_light_fraction"] = np.where(
        spiral, rng.uniform(arms["light_fraction"]["min"], arms["light_fraction"]["max"], n), 0.0)

    psf = spec.psf
    fwhm = 10 ** rng.normal(np.log10(psf["fwhm_median_arcsec"]), psf["sigma_dex"], n)
    hosts["psf_fwhm_arcsec"] = np.clip(fwhm, psf["min_arcsec"], psf["max_arcsec"])
    r_half = 1.678 * hosts["disc_scale_arcsec"]
    fov = np.clip(spec.fov["factor"] * r_half, spec.fov["min_arcsec"], spec.fov["max_arcsec"])
    hosts["arcsec_per_side"] = fov
    hosts["pixel_scale_arcsec"] = fov / spec.image_size
    hosts["psf_fwhm_pixels"] = hosts["psf_fwhm_arcsec"] / hosts["pixel_scale_arcsec"]
    # sky positions in the SDSS Legacy footprint (uniform on the sphere within it)
    hosts["ra"] = rng.uniform(120.0, 250.0, n)
    hosts["dec"] = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-2.0)), np.sin(np.radians(62.0)), n)))
    # sky noise per pixel from the 5-sigma point-source depth at the median seeing; the pixel
    # noise scales with the pixel side; each band's depth scatters by 0.1 mag, and each field's by
    # depth_field_scatter_mag in all bands alike (sky brightness, transparency)
    nea_ref = _moffat_nea_arcsec2(psf["fwhm_median_arcsec"], psf["beta"])
    field_depth = rng_more.normal(0.0, spec.depth_field_scatter_mag, n)  # the field's, shared by the bands
    for band in BANDS:
        depth = spec.depth_5sigma[band] + rng.normal(0.0, 0.1, n) + field_depth
        sigma_arcsec = _mag_to_nmgy(depth) / (5.0 * np.sqrt(nea_ref))
        hosts[f"sky_sigma_{band}"] = sigma_arcsec * hosts["pixel_scale_arcsec"]
    # bulgeless hosts, and irregular ones: part of the disc's light in an exponential disc of its
    # own (same inclination and position angle, scale a share of the disc's) off the centre
    has_bulge = rng_more.uniform(size=n) < spec.bulge["fraction"]
    hosts["bulge_to_total"] = np.where(has_bulge, hosts["bulge_to_total"], 0.0)
    irr = spec.irregular
    is_irr = rng_more.uniform(size=n) < irr["fraction"]
    hosts["irregular_fraction"] = np.where(
        is_irr, rng_more.uniform(irr["light_fraction"]["min"], irr["light_fraction"]["max"], n), 0.0)
    hosts["irregular_scale_arcsec"] = hosts["disc_scale_arcsec"] * rng_more.uniform(
        irr["scale"]["min"], irr["scale"]["max"], n)
    off = hosts["disc_scale_arcsec"] * rng_more.uniform(irr["offset_scale"]["min"], irr["offset_scale"]["max"], n)
    off_angle = rng_more.uniform(0, 2 * np.pi, n)
    hosts["irregular_dx_arcsec"] = off * np.cos(off_angle)
    hosts["irregular_dy_arcsec"] = off * np.sin(off_angle)
    # total host fluxes per band (nanomaggies), split bulge/disc with their own colours
    flux_r = _mag_to_nmgy(hosts["mag_r"])
    bt, arm, irf = hosts["bulge_to_total"], hosts["arm_light_fraction"], hosts["irregular_fraction"]
    hosts["irregular_g-r"], hosts["irregular_r-i"] = hosts["disc_g-r"], hosts["disc_r-i"]
    for comp, share in (("disc", (1 - bt) * (1 - arm) * (1 - irf)), ("irregular", (1 - bt) * (1 - arm) * irf),
                        ("arm", (1 - bt) * arm), ("bulge", bt)):
        fr = flux_r * share
        hosts[f"{comp}_flux_r"] = fr
        hosts[f"{comp}_flux_g"] = fr * 10 ** (0.4 * -hosts[f"{comp}_g-r"])
        hosts[f"{comp}_flux_i"] = fr * 10 ** (0.4 * hosts[f"{comp}_r-i"])
    for band in BANDS:
        hosts[f"host_flux_{band}"] = (hosts[f"disc_flux_{band}"] + hosts[f"irregular_flux_{band}"]
                                      + hosts[f"arm_flux_{band}"] + hosts[f"bulge_flux_{band}"])
    return hosts


def _power_law(rng: np.random.Generator, lo: float, hi: float, slope: float, size: int) -> np.ndarray:
    """Draw from dN/df ~ f^slope on [lo, hi] by inverting the CDF."""
    u = rng.uniform(0, 1, size)
    if abs(slope + 1.0) < 1e-9:
        return lo * (hi / lo) ** u
    a = slope + 1.0
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def _disc_position(rng, host, r_min_arcsec: float, r_max_arcsec: float, radial_scale: float,
                   on_arm: bool) -> tuple[float, float]:
    """A point of the inclined disc (arcsec offsets, x right / y up), radius ~ r exp(-r / (s R_d))
    (``radial_scale`` s) between the limits; on an arm when ``on_arm`` (arm phase within 0.5 rad
    of a ridge; the arm light's phase profile is 1.6 rad wide at half maximum), else at a random
    azimuth."""
    rd = host["disc_scale_arcsec"]
    for _ in range(100):
        r = rng.gamma(2.0, radial_scale * rd)
        if r_min_arcsec <= r <= r_max_arcsec:
            break
    else:
        r = rng.uniform(r_min_arcsec, max(r_max_arcsec, r_min_arcsec * 1.01))
    if on_arm:
        m = host["n_arms"]
        phase = 2 * np.pi * rng.integers(m) + rng.normal(0.0, 0.5)
        theta = host["arm_phase"] + (phase + m / np.tan(np.radians(host["arm_pitch_deg"])) * np.log(r / rd)) / m
    else:
        theta = rng.uniform(0, 2 * np.pi)
    x, y = r * np.cos(theta), r * np.sin(theta) * np.cos(np.radians(host["inclination_deg"]))
    pa = np.radians(host["position_angle_deg"])
    return x * np.cos(pa) - y * np.sin(pa), x * np.sin(pa) + y * np.cos(pa)


def _draw_objects(spec: SurveySpec, hosts: pd.DataFrame, seeds: list[np.random.SeedSequence]) -> pd.DataFrame:
    """Clumps, knots and odd objects for every host (one independent generator per galaxy)."""
    rows: list[dict[str, Any]] = []
    cl, kn, odd = spec.clumps, spec.knots, spec.odd
    on_arm_share = spec.arms["star_forming_share"]
    for gi, host in hosts.iterrows():
        # the second generator draws the field sources (an addition that leaves the rest unchanged)
        rng, rng_field = (np.random.default_rng(s) for s in seeds[gi].spawn(2))
        fwhm = host["psf_fwhm_arcsec"]
        half_fov = host["arcsec_per_side"] / 2
        rd = host["disc_scale_arcsec"]
        # keep objects clear of the bulge (indistinguishable from it there) and of the border;
        # star-forming regions of a host without a bulge may sit anywhere, the centre included
        r_min = max(cl["min_radius_scale"] * rd, cl["min_radius_fwhm"] * fwhm)
        r_min_sf = r_min if host["bulge_to_total"] > 0 else 0.0
        r_max = min(cl["max_radius_scale"] * rd, half_fov - 2 * fwhm)
        half_odd = max(odd["field_fraction"] * half_fov - fwhm, r_min * 1.5)
        placed: list[tuple[float, float]] = []

        def place(min_sep: float, star_forming: bool) -> tuple[float, float] | None:
            on_arm = star_forming and host["n_arms"] > 0 and rng.uniform() < on_arm_share
            for _ in range(50):
                if star_forming:
                    x, y = _disc_position(rng, host, r_min_sf, r_max, cl["radial_scale"], on_arm)
                else:  # foreground stars and background galaxies fall anywhere on the field
                    x, y = rng.uniform(-half_odd, half_odd, 2)
                    if math.hypot(x, y) < r_min:
                        continue
                if all(math.hypot(x - px, y - py) >= min_sep for px, py in placed):
                    placed.append((x, y))
                    return x, y
            return None

        def star_forming(kind: str, ff: np.ndarray, size_kpc: dict[str, float]) -> None:
            for f in ff:
                pos = place(cl["min_separation_fwhm"] * fwhm, True)
                if pos is None:
                    continue
                gr = rng.normal(*COLOURS["clump"]["g-r"])
                ri = rng.normal(*COLOURS["clump"]["r-i"])
                flux_g = f * host["host_flux_g"]
                flux_r = flux_g * 10 ** (0.4 * gr)
                rows.append({
                    "galaxy_index": gi, "kind": kind, "subclass": kind, "dx_arcsec": pos[0], "dy_arcsec": pos[1],
                    "sigma_arcsec": rng.uniform(size_kpc["min"], size_kpc["max"]) / host["kpc_per_arcsec"],
                    "flux_g": flux_g, "flux_r": flux_r, "flux_i": flux_r * 10 ** (0.4 * ri),
                })

        n_clumps = 0
        if rng.uniform() < cl["clumpy_fraction"]:
            n_clumps = min(1 + rng.poisson(cl["mean_extra"]), cl["max_per_galaxy"])
        fl = cl["flux_fraction"]
        star_forming("clump", _power_law(rng, fl["min"], fl["max"], fl["slope"], n_clumps), cl["size_kpc"])
        fl = kn["flux_fraction"]
        n_knots = rng.poisson(kn["mean_per_galaxy"] * (1.0 + (host["n_arms"] > 0) * (kn["spiral_boost"] - 1.0)))
        star_forming("knot", _power_law(rng, fl["min"], fl["max"], fl["slope"], n_knots), kn["size_kpc"])
        for _ in range(rng.poisson(odd["mean_per_galaxy"])):
            is_star = rng.uniform() < odd["star_share"]
            sub = "star" if is_star else "background"
            pos = place(cl["min_separation_fwhm"] * fwhm, False)
            if pos is None:
                continue
            fr = _power_law(rng, odd["flux_fraction"]["min"], odd["flux_fraction"]["max"], -1.0, 1)[0]
            flux_r = fr * host["host_flux_r"]
            gr = rng.normal(*COLOURS[sub]["g-r"])
            ri = rng.normal(*COLOURS[sub]["r-i"])
            rows.append({
                "galaxy_index": gi, "kind": "odd", "subclass": sub, "dx_arcsec": pos[0], "dy_arcsec": pos[1],
                "sigma_arcsec": 0.0 if is_star else rng.uniform(0.3, 0.7),
                "flux_g": flux_r * 10 ** (-0.4 * gr), "flux_r": flux_r, "flux_i": flux_r * 10 ** (0.4 * ri),
            })
        rows.extend(_field_sources(spec.field_sources, host, gi, rng_field))
    cols = ["galaxy_index", "kind", "subclass", "dx_arcsec", "dy_arcsec", "sigma_arcsec",
            "flux_g", "flux_r", "flux_i"]
    return pd.DataFrame(rows, columns=cols)


def _field_sources(fs: dict[str, Any], host: pd.Series, gi: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Stars and galaxies of the sky around one host: Poisson numbers from the densities per
    arcmin^2 over the field of view, placed uniformly on it (a PSF FWHM clear of the edges) but
    beyond ``min_radius_half_light`` half-light radii of the centre, r magnitudes from the number
    counts' slopes between ``mag_r`` limits; galaxies are small Gaussians."""
    half_fov = host["arcsec_per_side"] / 2
    fwhm = host["psf_fwhm_arcsec"]
    r_out = fs["min_radius_half_light"] * 1.678 * host["disc_scale_arcsec"]
    area_arcmin2 = (2 * half_fov / 60.0) ** 2
    lo, hi = _mag_to_nmgy(fs["mag_r"]["max"]), _mag_to_nmgy(fs["mag_r"]["min"])
    rows = []
    for sub, density in (("star", fs["stars_per_arcmin2"]), ("galaxy", fs["galaxies_per_arcmin2"])):
        for _ in range(rng.poisson(density * area_arcmin2)):
            for _ in range(50):  # outside the galaxy; a field the galaxy fills has no room for one
                x, y = rng.uniform(-(half_fov - fwhm), half_fov - fwhm, 2)
                if math.hypot(x, y) >= r_out:
                    break
            else:
                continue
            flux_r = _power_law(rng, lo, hi, FIELD_FLUX_SLOPE[sub], 1)[0]
            gr = rng.normal(*COLOURS[f"field_{sub}"]["g-r"])
            ri = rng.normal(*COLOURS[f"field_{sub}"]["r-i"])
            rows.append({
                "galaxy_index": gi, "kind": FIELD, "subclass": sub, "dx_arcsec": x, "dy_arcsec": y,
                "sigma_arcsec": 0.0 if sub == "star" else rng.uniform(0.3, 1.2),
                "flux_g": flux_r * 10 ** (-0.4 * gr), "flux_r": flux_r, "flux_i": flux_r * 10 ** (0.4 * ri),
            })
    return rows


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def make_wcs(ra: float, dec: float, pixel_scale_arcsec: float, size: int) -> WCS:
    """North-up, east-left gnomonic WCS centred on (ra, dec) at the image centre."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    w.wcs.cdelt = [-pixel_scale_arcsec / 3600.0, pixel_scale_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w


# --------------------------------------------------------------------------------------------
# rendering (parallel over galaxies)
# --------------------------------------------------------------------------------------------


def _render_one(task: dict[str, Any]) -> None:
    host, objects, spec, seed, png_path, fits_path = (
        task["host"], task["objects"], task["spec"], task["seed"], task["png"], task["fits"],
    )
    n = spec.image_size
    scale = host["pixel_scale_arcsec"]
    # numpy's Gaussian deviates: GalSim's GaussianNoise takes ~13 ms per 96 px band, numpy 0.2 ms
    rng = np.random.default_rng(seed)
    incl = host["inclination_deg"] * galsim.degrees
    pa = host["position_angle_deg"] * galsim.degrees
    planes = {}
    arm_map = None
    if host["n_arms"] > 0:  # surface brightness of unit-flux arms at the pixel centres (FITS orientation)
        offsets = (np.arange(n) - (n - 1) / 2) * scale
        dx, dy = np.meshgrid(offsets, offsets)
        arm_map = arm_surface_brightness({**host, "arm_flux_g": 1.0}, dx, dy, "g")
    for band in BANDS:
        comps = [
            galsim.InclinedExponential(
                incl, scale_radius=host["disc_scale_arcsec"], scale_h_over_r=0.1,
                flux=host[f"disc_flux_{band}"],
            ).rotate(pa),
            galsim.DeVaucouleurs(
                half_light_radius=host["bulge_half_light_arcsec"], flux=host[f"bulge_flux_{band}"]
            ).shear(q=host["bulge_axis_ratio"], beta=pa),
        ]
        if host["irregular_fraction"] > 0:
            comps.append(galsim.InclinedExponential(
                incl, scale_radius=host["irregular_scale_arcsec"], scale_h_over_r=0.1,
                flux=host[f"irregular_flux_{band}"],
            ).rotate(pa).shift(host["irregular_dx_arcsec"], host["irregular_dy_arcsec"]))
        if arm_map is not None:
            comps.append(galsim.InterpolatedImage(
                galsim.Image(arm_map * host[f"arm_flux_{band}"], scale=scale), normalization="sb",
                calculate_stepk=False, calculate_maxk=False))
        for obj in objects:
            if obj["sigma_arcsec"] > 0:
                prof = galsim.Gaussian(sigma=obj["sigma_arcsec"], flux=obj[f"flux_{band}"])
            else:
                prof = galsim.DeltaFunction(flux=obj[f"flux_{band}"])
            comps.append(prof.shift(obj["dx_arcsec"], obj["dy_arcsec"]))
        psf = galsim.Moffat(beta=spec.psf["beta"], fwhm=host["psf_fwhm_arcsec"] * PSF_BAND_RATIO[band])
        img = galsim.Convolve(galsim.Add(comps), psf).drawImage(nx=n, ny=n, scale=scale)
        planes[band] = (img.array + rng.normal(0.0, host[f"sky_sigma_{band}"], img.array.shape)).astype(np.float32)

    Image.fromarray(lupton_png(planes, scale, spec.png)).save(png_path)
    if fits_path is None:
        return
    wcs = make_wcs(host["ra"], host["dec"], scale, n)
    primary = fits.PrimaryHDU()
    ph = primary.header
    ph["SUBJECT"] = (int(host["subject_id"]), "subject id")
    ph["RA"] = (host["ra"], "[deg] galaxy centre")
    ph["DEC"] = (host["dec"], "[deg] galaxy centre")
    ph["REDSHIFT"] = host["redshift"]
    ph["ORIGIN"] = "clumpfinder simulated survey"
    hdus = [primary]
    for band in BANDS:
        h = wcs.to_header()
        h["BUNIT"] = "nanomaggy"
        h["FILTER"] = band
        h["PSFFWHM"] = (host["psf_fwhm_arcsec"] * PSF_BAND_RATIO[band], "[arcsec] Moffat PSF FWHM")
        h["PSFBETA"] = (spec.psf["beta"], "Moffat beta")
        h["SKYSIG"] = (host[f"sky_sigma_{band}"], "[nanomaggy] sky noise per pixel")
        hdus.append(fits.ImageHDU(planes[band], header=h, name=band.upper()))
    # headers are built here from a WCS object and fixed keys (tests verify a written file
    # strictly); astropy's per-file verification would cost ~16 ms a galaxy
    fits.HDUList(hdus).writeto(fits_path, output_verify="ignore")


def _catalogue(spec: SurveySpec, first_subject_id: int):
    """Hosts and their objects (with image positions) and each galaxy's random seed."""
    root = np.random.SeedSequence(spec.seed)
    cat_seed, *galaxy_seeds = root.spawn(spec.n_galaxies + 1)
    more_seed, = root.spawn(1)  # after the galaxies' seeds: they do not depend on it
    hosts = _draw_hosts(spec, np.random.default_rng(cat_seed), np.random.default_rng(more_seed))
    hosts.insert(0, "subject_id", np.arange(spec.n_galaxies, dtype=np.int64) + first_subject_id)
    objects = _draw_objects(spec, hosts, galaxy_seeds)
    n = spec.image_size
    px = hosts.loc[objects["galaxy_index"], "pixel_scale_arcsec"].to_numpy()
    objects["x"] = n / 2 + objects["dx_arcsec"].to_numpy() / px
    objects["y"] = n / 2 - objects["dy_arcsec"].to_numpy() / px
    return hosts, objects, galaxy_seeds


def simulate_catalogue(spec: SurveySpec, first_subject_id: int = FIRST_SUBJECT_ID) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The survey's (manifest, truth) without rendering any image: what the volunteer, label and
    realism simulations need, in a fraction of a second per thousand galaxies. Identical to the
    tables :func:`simulate_survey` returns for the same spec."""
    hosts, objects, _ = _catalogue(spec, first_subject_id)
    return _manifest(hosts, objects, spec.image_size), _truth(hosts, objects, spec.image_size, spec.psf["beta"])


def simulate_survey(
    spec: SurveySpec, png_dir: str | Path, fits_dir: str | Path | None, workers: int = 1,
    first_subject_id: int = FIRST_SUBJECT_ID,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the survey, render every subject, return (manifest, truth).

    Images are written into ``png_dir`` and ``fits_dir`` (None: PNG only) atomically (each
    directory appears only when complete). Subject ids count up from ``first_subject_id``, so
    populations simulated for different purposes (detection, pretraining) never share an id.
    The result is a deterministic function of ``spec`` and ``first_subject_id`` (not of ``workers``).
    """
    hosts, objects, galaxy_seeds = _catalogue(spec, first_subject_id)
    by_galaxy = {gi: g.to_dict("records") for gi, g in objects.groupby("galaxy_index")}
    with contextlib.ExitStack() as stack:
        tmp_png = stack.enter_context(atomic_dir(png_dir))
        tmp_fits = stack.enter_context(atomic_dir(fits_dir)) if fits_dir is not None else None
        tasks = [
            {
                "host": host.to_dict(), "objects": by_galaxy.get(gi, []), "spec": spec,
                "seed": int(galaxy_seeds[gi].generate_state(1)[0]),
                "png": str(tmp_png / f"{int(host['subject_id'])}.png"),
                "fits": None if tmp_fits is None else str(tmp_fits / f"{int(host['subject_id'])}.fits"),
            }
            for gi, host in hosts.iterrows()
        ]
        # loky workers are fresh processes: safe with GalSim's OpenMP (fork after OpenMP started
        # deadlocks) and they need no __main__ guard in the calling script
        Parallel(n_jobs=workers, backend="loky", batch_size=32)(delayed(_render_one)(t) for t in tasks)
        log.info("rendered %d subjects with %d worker(s)", len(tasks), workers)
    manifest = _manifest(hosts, objects, spec.image_size)
    if fits_dir is None:
        manifest = manifest.drop(columns="fits")
    return manifest, _truth(hosts, objects, spec.image_size, spec.psf["beta"])


def _manifest(hosts: pd.DataFrame, objects: pd.DataFrame, n: int) -> pd.DataFrame:
    counts = objects.groupby(["galaxy_index", "kind"]).size().unstack(fill_value=0)
    man = pd.DataFrame(
        {
            "subject_id": hosts["subject_id"],
            "ra": hosts["ra"],
            "dec": hosts["dec"],
            "redshift": hosts["redshift"],
            "psf_fwhm_arcsec": hosts["psf_fwhm_arcsec"],
            "psf_fwhm_pixels": hosts["psf_fwhm_pixels"],
            "pixel_scale_arcsec": hosts["pixel_scale_arcsec"],
            "arcsec_per_side": hosts["arcsec_per_side"],
            "width": n,
            "height": n,
            "mag_r": hosts["mag_r"],
            "half_light_arcsec": 1.678 * hosts["disc_scale_arcsec"],
            "inclination_deg": hosts["inclination_deg"],
            "position_angle_deg": hosts["position_angle_deg"],
            "bulge_to_total": hosts["bulge_to_total"],
            "n_arms": hosts["n_arms"],
            "arm_pitch_deg": hosts["arm_pitch_deg"],
            "arm_light_fraction": hosts["arm_light_fraction"],
            "host_flux_g": hosts["host_flux_g"],
            "host_flux_r": hosts["host_flux_r"],
            "sky_sigma_g": hosts["sky_sigma_g"],
            "n_clumps": counts.get("clump", pd.Series(dtype=int)).reindex(hosts.index, fill_value=0),
            "n_knots": counts.get("knot", pd.Series(dtype=int)).reindex(hosts.index, fill_value=0),
            "n_odd": counts.get("odd", pd.Series(dtype=int)).reindex(hosts.index, fill_value=0),
            "n_field": counts.get(FIELD, pd.Series(dtype=int)).reindex(hosts.index, fill_value=0),
            "irregular_fraction": hosts["irregular_fraction"],
            "png": hosts["subject_id"].astype(str) + ".png",
            "fits": hosts["subject_id"].astype(str) + ".fits",
        }
    )
    return man


def _disc_frame(h, dx, dy):
    """Offsets (arcsec, x right / y up) -> disc-plane radius and azimuth (arcsec, radians).
    ``h`` is one host (a mapping of numbers) or one host per offset (a DataFrame)."""
    pa = np.radians(np.asarray(h["position_angle_deg"], float))
    # rotate into the frame of the major axis, then undo the inclination
    u = dx * np.cos(pa) + dy * np.sin(pa)
    v = (-dx * np.sin(pa) + dy * np.cos(pa)) / np.cos(np.radians(np.asarray(h["inclination_deg"], float)))
    return np.hypot(u, v), np.arctan2(v, u)


def arm_surface_brightness(h, dx: np.ndarray, dy: np.ndarray, band: str) -> np.ndarray:
    """Surface brightness of the spiral arms (nanomaggy / arcsec^2, before the PSF) at offsets
    (dx, dy) arcsec: m logarithmic arms of pitch p, phase profile ((1 + cos psi)/2)^4 with
    psi = m (theta - theta_0) - (m / tan p) ln(r / r_d), an exponential radial fall-off with the
    disc's scale length, rising from the centre as 1 - exp(-(r / r_d)^2); normalised so the arms
    hold ``arm_flux_<band>`` in all. ``h`` as for :func:`_disc_frame`."""
    r, theta = _disc_frame(h, dx, dy)
    m = np.asarray(h["n_arms"], float)
    rd = np.asarray(h["disc_scale_arcsec"], float)
    pitch = np.radians(np.asarray(h["arm_pitch_deg"], float))
    psi = m * (theta - np.asarray(h["arm_phase"], float)) - m / np.tan(pitch) * np.log(np.maximum(r, 1e-6) / rd)
    radial = np.exp(-r / rd) * (1.0 - np.exp(-((r / (ARM_INNER * rd)) ** 2)))
    cos_i = np.cos(np.radians(np.asarray(h["inclination_deg"], float)))
    norm = np.asarray(h[f"arm_flux_{band}"], float) / (_ARM_PHASE_MEAN * _ARM_RADIAL_INTEGRAL * rd**2 * cos_i)
    return np.where(m > 0, norm * radial * ((1.0 + np.cos(psi)) / 2.0) ** ARM_SHARPNESS, 0.0)


def host_surface_brightness(h: pd.DataFrame, dx: np.ndarray, dy: np.ndarray, band: str) -> np.ndarray:
    """Host surface brightness (nanomaggy / arcsec^2, before the PSF) at offsets (dx, dy) arcsec:
    thin inclined exponential disc (and an irregular host's off-centre one), spiral arms and
    elliptical de Vaucouleurs bulge, as rendered."""
    pa = np.radians(h["position_angle_deg"].to_numpy())
    # rotate into the frame of the major axis
    u = dx * np.cos(pa) + dy * np.sin(pa)
    v = -dx * np.sin(pa) + dy * np.cos(pa)
    cos_i = np.cos(np.radians(h["inclination_deg"].to_numpy()))
    rd = h["disc_scale_arcsec"].to_numpy()
    r_disc = np.hypot(u, v / cos_i)
    disc = h[f"disc_flux_{band}"].to_numpy() / (2 * np.pi * rd**2 * cos_i) * np.exp(-r_disc / rd)
    if "irregular_fraction" in h:  # the off-centre disc of an irregular host
        ox = dx - h["irregular_dx_arcsec"].to_numpy()
        oy = dy - h["irregular_dy_arcsec"].to_numpy()
        ri = np.hypot(ox * np.cos(pa) + oy * np.sin(pa), (-ox * np.sin(pa) + oy * np.cos(pa)) / cos_i)
        rs = h["irregular_scale_arcsec"].to_numpy()
        disc = disc + h[f"irregular_flux_{band}"].to_numpy() / (2 * np.pi * rs**2 * cos_i) * np.exp(-ri / rs)
    q = h["bulge_axis_ratio"].to_numpy()
    re = h["bulge_half_light_arcsec"].to_numpy()
    r_bulge = np.hypot(u * np.sqrt(q), v / np.sqrt(q))  # GalSim's area-preserving shear
    sigma_e = h[f"bulge_flux_{band}"].to_numpy() / (7.215 * np.pi * re**2)
    bulge = sigma_e * np.exp(-7.669 * ((r_bulge / re) ** 0.25 - 1.0))
    arms = arm_surface_brightness(h, dx, dy, band) if "n_arms" in h else 0.0
    return disc + bulge + arms


def peak_surface_brightness(flux: np.ndarray, sigma: np.ndarray, fwhm: np.ndarray, beta: float) -> np.ndarray:
    """Approximate central surface brightness of a Gaussian source seen through a Moffat PSF."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    area = np.pi * alpha**2 / (beta - 1.0) + 2 * np.pi * sigma**2
    return flux / area


def _truth(hosts: pd.DataFrame, objects: pd.DataFrame, n: int, beta: float) -> pd.DataFrame:
    cols = ["subject_id", "object_id", "kind", "subclass", "x", "y", "ra", "dec", "flux_g", "flux_r",
            "flux_i", "flux_fraction_g", "snr_g", "contrast_g", "contrast_r", "colour_gr", "sigma_arcsec"]
    if objects.empty:
        return pd.DataFrame(columns=cols)
    h = hosts.loc[objects["galaxy_index"]].reset_index(drop=True)
    o = objects.reset_index(drop=True)
    ra = np.empty(len(o))
    dec = np.empty(len(o))
    for gi, idx in o.groupby("galaxy_index").groups.items():
        host = hosts.loc[gi]
        w = make_wcs(host["ra"], host["dec"], host["pixel_scale_arcsec"], n)
        fx, fy = png_to_fits_pixel(o.loc[idx, "x"], o.loc[idx, "y"], n)
        ra[idx], dec[idx] = w.wcs_pix2world(fx, fy, 0)
    fwhm_g = h["psf_fwhm_arcsec"] * PSF_BAND_RATIO["g"]
    nea_pix = _moffat_nea_arcsec2(fwhm_g, beta) / h["pixel_scale_arcsec"] ** 2
    t = pd.DataFrame(
        {
            "subject_id": h["subject_id"],
            "object_id": o.groupby("galaxy_index").cumcount(),
            "kind": o["kind"],
            "subclass": o["subclass"],
            "x": o["x"],
            "y": o["y"],
            "ra": ra,
            "dec": dec,
            "flux_g": o["flux_g"],
            "flux_r": o["flux_r"],
            "flux_i": o["flux_i"],
            "flux_fraction_g": o["flux_g"] / h["host_flux_g"],
            "snr_g": o["flux_g"] / (h["sky_sigma_g"] * np.sqrt(nea_pix)),
            "colour_gr": -2.5 * np.log10(o["flux_g"] / o["flux_r"]),
            "sigma_arcsec": o["sigma_arcsec"],
        }
    )
    # local contrast: the object's peak over the host's surface brightness where it sits, which is
    # what makes a clump stand out to the eye (a faint clump in the outskirts shows, a brighter one
    # on the bulge does not)
    dx, dy = o["dx_arcsec"].to_numpy(), o["dy_arcsec"].to_numpy()
    for band in ("g", "r"):
        fwhm = h["psf_fwhm_arcsec"].to_numpy() * PSF_BAND_RATIO[band]
        peak = peak_surface_brightness(o[f"flux_{band}"].to_numpy(), o["sigma_arcsec"].to_numpy(), fwhm, beta)
        t[f"contrast_{band}"] = peak / host_surface_brightness(h, dx, dy, band)
    return t[cols]
