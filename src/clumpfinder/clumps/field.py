"""The sky a detector was trained to see, and the same sky cut from any galaxy's image.

The simulated survey draws each galaxy on a field of ``factor`` x its half-light radius, clipped to
[``min_arcsec``, ``max_arcsec``], at ``image_size`` pixels (``simulate.fov``); a real-data route
cuts its cutouts to ``factor`` x the subject list's size (``data.download.fov``). A detector knows
galaxies at that scale only: the same galaxy on a field four times wider (a Galaxy Zoo JPEG spans
8.48 Petrosian R90) is a quarter the size, with stars and background galaxies around it.

:class:`Field` is that recipe as the exported detector records it (``preprocessing["field"]``);
:func:`field_window` cuts it from an image of known pixel scale, centred on the galaxy. The
detector's own transform resamples the window to ``image_size`` pixels, as it did in training, and
the catalogue maps detections back to the input's pixels by the window's offset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: what the field's ``radius`` is measured in, and where the catalogue reads it from
RADII = ("half_light_radius", "size_arcsec")


@dataclass(frozen=True)
class Field:
    """A detector's field: side = clip(``factor`` x radius, ``min_arcsec``, ``max_arcsec``) arcsec
    drawn at ``image_size`` px, of which the detector saw the central ``crop`` px (None: all)."""

    radius: str
    factor: float
    min_arcsec: float
    max_arcsec: float
    image_size: int
    crop: int | None = None

    def __post_init__(self) -> None:
        if self.radius not in RADII:
            raise ValueError(f"field radius must be one of {list(RADII)}, got {self.radius!r}")
        if not (self.factor > 0 and 0 < self.min_arcsec <= self.max_arcsec and self.image_size > 0):
            raise ValueError(f"field needs factor > 0, 0 < min_arcsec <= max_arcsec, image_size > 0: {self}")

    def side_arcsec(self, radius_arcsec: float) -> float:
        """The side of the sky the detector sees for a galaxy of ``radius_arcsec`` (the crop's
        share of the drawn field where training cropped)."""
        side = float(np.clip(self.factor * radius_arcsec, self.min_arcsec, self.max_arcsec))
        return side * (self.crop / self.image_size if self.crop else 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Field | None":
        return None if d is None else cls(**d)


def field_from_config(config: dict[str, Any], simulated: bool) -> Field:
    """The field of the workflow's training images: the simulation's (half-light radii), or the
    real-data route's cutouts (the subject list's ``size_arcsec``)."""
    if simulated:
        sim = config["simulate"]
        return Field("half_light_radius", sim["fov"]["factor"], sim["fov"]["min_arcsec"], sim["fov"]["max_arcsec"],
                     int(sim["image_size"]), config["labels"]["crop"])
    dl = config["data"]["download"]
    return Field("size_arcsec", dl["fov"]["factor"], dl["fov"]["min_arcsec"], dl["fov"]["max_arcsec"],
                 int(dl["image_size"]), config["labels"]["crop"])


def field_window(width: int, height: int, centre: tuple[float, float], side_px: float) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of a square of ``side_px`` pixels centred on ``centre`` (x right, y down,
    pixel edges at integers) in a ``width`` x ``height`` image; it may reach past the image's
    edges (:func:`cut_window` pads there), so that the galaxy keeps the scale of training."""
    if not (np.isfinite(side_px) and side_px >= 8):
        raise ValueError(f"a field of {side_px:.3g} px is too small to detect anything in")
    side = int(round(side_px))
    cx, cy = centre
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side, side


def cut_window(rgb: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The ``window`` of an (H, W, 3) image; what lies beyond its edges is filled with the image's
    median colour (its sky), as an empty patch of sky would look."""
    x0, y0, w, h = window
    H, W = rgb.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + w <= W and y0 + h <= H:
        return rgb[y0:y0 + h, x0:x0 + w]
    out = np.empty((h, w, rgb.shape[2]), dtype=rgb.dtype)
    out[:] = np.median(rgb.reshape(-1, rgb.shape[2]), axis=0).astype(rgb.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out
