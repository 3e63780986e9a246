"""Images as the volunteers and the detector see them, shared by every data route: the colour
composite made from FITS planes, the pixel conventions between FITS and PNG, and reading a
labelled image (with its crop window) from disk. numpy, Pillow and astropy only.

PNG pixel coordinates have their origin at the top-left corner of the image with y down (Zooniverse
clicks, COCO boxes); FITS arrays are stored bottom row first with 0-based pixel centres.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.visualization import make_lupton_rgb
from PIL import Image


def png_to_fits_pixel(x: np.ndarray, y: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """PNG coordinates (corner origin, y down) -> 0-based FITS pixel coordinates (y up)."""
    return np.asarray(x) - 0.5, height - np.asarray(y) - 0.5


def fits_pixel_to_png(px: np.ndarray, py: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(px) + 0.5, height - np.asarray(py) - 0.5


def lupton_png(planes: dict[str, np.ndarray], pixel_scale: float, png: dict[str, Any]) -> np.ndarray:
    """Colour composite (i, r, g -> R, G, B) in display orientation, as the volunteers saw it.

    Planes are converted to surface brightness (nanomaggy / arcsec^2) first so galaxies drawn on
    different pixel scales look alike.
    """
    area = pixel_scale**2
    s = png["band_scales"]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 on pixels of zero intensity
        rgb = make_lupton_rgb(
            planes["i"] / area * s["i"], planes["r"] / area * s["r"], planes["g"] / area * s["g"],
            minimum=png["minimum"], stretch=png["stretch"], Q=png["Q"],
        )
    return np.ascontiguousarray(rgb[::-1])  # FITS row 0 is the bottom row


def read_image(image_dir: str | Path, image: dict[str, Any]) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of one COCO image entry, cut to its ``crop`` window [x0, y0] when
    it has one; a missing, unreadable or wrongly sized image raises an error naming the file."""
    path = Path(image_dir) / image["file_name"]
    try:
        with Image.open(path) as pil:
            arr = np.asarray(pil.convert("RGB"))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot read image {path} (image id {image['id']}): {err}") from err
    w, h = image["width"], image["height"]
    if "crop" in image:
        x0, y0 = image["crop"]
        if arr.shape[0] < y0 + h or arr.shape[1] < x0 + w:
            raise ValueError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} px, too small for the "
                             f"{w}x{h} px crop at ({x0}, {y0}) in the labels")
        arr = arr[y0:y0 + h, x0:x0 + w]
    elif arr.shape[:2] != (h, w):
        raise ValueError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} px but the labels say {w}x{h}")
    return arr
