"""``clumpfinder``: the command-line tool installed with the package (no Snakemake needed).

    clumpfinder detect --model results/clumps/detector.pt --images DIR [--galaxies TABLE] --out catalogue.fits

writes ``catalogue.fits`` (CLUMPS, GALAXIES, FAILURES tables with units and provenance) and the
same tables as CSV beside it, optionally an overlay PNG per galaxy (``--overlays DIR``). ``DIR``
holds FITS cutouts (bands as image extensions of one file, or ``<galaxy>_<band>.fits`` files, with a
celestial WCS) or PNG/JPEG images. ``TABLE`` gives each galaxy's size and pixel scale (and
position, PSF): the detector then sees the field it was trained on, cut from each image around
the galaxy; without it, the whole image (the GALAXIES table's ``field`` column says which). See
docs/catalogue.md.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import datetime, timezone
import logging
import sys
from pathlib import Path
from typing import Any

import clumpfinder
from clumpfinder.clumps.catalogue import run_catalogue
from clumpfinder.clumps.measure import MeasureSpec
from clumpfinder.clumps.model import config_hash, load_detector
from clumpfinder.clumps.sources import FitsOptions, count_galaxies, detect_kind, open_source, read_galaxy_table
from clumpfinder.clumps.tables import overlay, write_catalogue
from clumpfinder.io import atomic_dir

log = logging.getLogger("clumpfinder")


def catalogue_files(galaxies, model_path: str | Path, out: str | Path, *, score: float | None = None,
                    device: str | Any = "auto", precision: str = "auto", batch_size: int = 16, measure: dict[str, Any] | None = None,
                    overlays: str | Path | None = None, total: int | None = None, progress_bar: bool = True,
                    extra_provenance: dict[str, Any] | None = None):
    """Run a catalogue of ``galaxies`` (an iterable of Galaxy/BadInput, or a callable taking the
    model's preprocessing and returning one) with the detector file ``model_path``, write it to
    ``out``; returns the :class:`~clumpfinder.clumps.catalogue.Catalogue`. The one entry point of
    the command-line tool and of the workflow's catalogue rule. ``device``: a torch device or a
    setting (auto: the GPU where torch sees one); ``precision``: ``compute.precision``."""
    import torch

    from clumpfinder.compute import autocast_dtype, pick_device

    dev = device if isinstance(device, torch.device) else pick_device(device)
    dtype = autocast_dtype(precision, dev)
    model, detector, prep, provenance = load_detector(model_path, dev, dtype)
    spec = MeasureSpec.from_config(measure or {})
    threshold = score if score is not None else provenance.get("score")
    if threshold is None:
        raise ValueError(f"{model_path} records no score threshold: give one (--score)")
    items = galaxies(prep) if callable(galaxies) else galaxies
    bar = None
    if progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="galaxy", desc="catalogue", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        # overlays are drawn as each galaxy is measured (holding every composite until the end would
        # not fit a survey in memory); the folder appears once complete
        folder = stack.enter_context(atomic_dir(overlays)) if overlays is not None else None
        stack.enter_context(torch.inference_mode())
        cat = run_catalogue(items, model, detector, prep, spec, float(threshold), batch_size,
                            progress=bar.update if bar is not None else None,
                            on_galaxy=(lambda g, rows: overlay(g.rgb, rows).save(folder / f"{g.name}.png"))
                            if folder is not None else None)
        write_catalogue(cat, out, _provenance(provenance, model_path, float(threshold), dev, spec,
                                              {"precision": str(dtype).replace("torch.", "") if dtype else "fp32",
                                               **(extra_provenance or {})}))
    if bar is not None:
        bar.close()
    log.info("%d galaxies catalogued, %d clumps, %d failures, %.1f s (%.0f galaxies/min)", len(cat.galaxies),
             len(cat.clumps), len(cat.failures), cat.seconds,
             60 * (len(cat.galaxies) + len(cat.failures)) / cat.seconds if cat.seconds else float("nan"))
    return cat


def _provenance(model: dict[str, Any], model_path: str | Path, score: float, dev: Any, spec: MeasureSpec,
                extra: dict[str, Any] | None) -> dict[str, Any]:
    """What the catalogue's FITS header records: the detector's provenance and this run's settings."""
    return {
        **{k: model.get(k) for k in ("backbone", "n_train", "seed", "val_f1", "commit", "config_hash")
           if model.get(k) is not None},
        "model": str(model_path), "score": score, "device": str(dev), "measure": config_hash(vars(spec)),
        "software": f"clumpfinder {clumpfinder.__version__}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **(extra or {}),
    }


def _detect(args: argparse.Namespace) -> int:
    folder = Path(args.images)
    if not folder.is_dir():
        raise SystemExit(f"clumpfinder detect: --images {folder} is not a folder")
    kind = args.kind if args.kind != "auto" else detect_kind(folder)
    table = read_galaxy_table(args.galaxies) if args.galaxies else None

    def galaxies(prep):
        return open_source(kind, folder, FitsOptions(png=prep["png"], psf_fwhm_arcsec=args.psf_fwhm,
                                                     zeropoint=args.zeropoint), table)
    measure = {} if args.merge_fwhm is None else {"merge_fwhm": args.merge_fwhm}
    cat = catalogue_files(galaxies, args.model, args.out, score=args.score, device=args.device,
                          precision=args.precision,
                          batch_size=args.batch_size, measure=measure, overlays=args.overlays,
                          total=count_galaxies(kind, folder),
                          progress_bar=not args.quiet,
                          extra_provenance={"images": str(folder),
                                            **({"galaxies": str(args.galaxies)} if args.galaxies else {})})
    fields = cat.galaxies["field"].value_counts().to_dict() if len(cat.galaxies) else {}
    print(f"{args.out}: {len(cat.clumps)} clumps in {len(cat.galaxies)} galaxies; "
          f"{len(cat.failures)} failed (see the FAILURES table); detector's window: "
          + (", ".join(f"{n} {k}" for k, n in fields.items()) or "none"))
    if fields.get("whole image"):
        print(f"{fields['whole image']} galaxies were seen whole: without their size and pixel scale (--galaxies) "
              "the detector cannot see them at the scale it was trained on (docs/catalogue.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clumpfinder", description="Giant star-forming clumps with Faster R-CNN.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("detect", help="a clump catalogue of a folder of galaxy images",
                       description="Detect, post-process and measure clumps in every galaxy of a folder.")
    d.add_argument("--model", required=True, help="exported detector (the workflow writes results/clumps/detector.pt)")
    d.add_argument("--images", required=True, help="folder of FITS cutouts or PNG/JPEG images")
    d.add_argument("--out", required=True, help="catalogue FITS file; CSV tables are written beside it")
    d.add_argument("--galaxies", default=None,
                   help="table (CSV) of the galaxies: galaxy or file, r_half_arcsec (or petror50_r) or size_arcsec, "
                        "pixel_scale_arcsec, optionally ra, dec, psf_fwhm_arcsec")
    d.add_argument("--kind", choices=["auto", "fits", "images"], default="auto",
                   help="what the folder holds (auto: FITS if it has any FITS file)")
    d.add_argument("--score", type=float, default=None,
                   help="score threshold (default: the model's, chosen on its validation split)")
    d.add_argument("--psf-fwhm", type=float, default=None, help="PSF FWHM in arcsec where headers lack PSFFWHM")
    d.add_argument("--zeropoint", type=float, default=None,
                   help="magnitude zero point where headers say neither BUNIT nanomaggy nor MAGZP")
    d.add_argument("--merge-fwhm", type=float, default=None, help="merge clumps closer than this x the PSF FWHM")
    d.add_argument("--overlays", default=None, help="folder for one overlay PNG per galaxy")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    d.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision of the backbone (auto: bf16/fp16 on a GPU, fp32 on the CPU)")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _detect(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"clumpfinder detect: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
