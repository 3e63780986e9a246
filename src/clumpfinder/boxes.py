"""Box geometry shared by every label source (consensus, catalogue, simulated truth). numpy only."""

from __future__ import annotations

import numpy as np


def square_boxes(x, y, side, width, height) -> dict[str, np.ndarray]:
    """Corners x1, y1, x2, y2 of squares of ``side`` centred on (x, y), clipped to the image."""
    x, y, half = np.asarray(x, float), np.asarray(y, float), np.asarray(side, float) / 2
    return {"x1": np.maximum(x - half, 0.0), "y1": np.maximum(y - half, 0.0),
            "x2": np.minimum(x + half, width), "y2": np.minimum(y + half, height)}


def crop_window(width: int, height: int, crop: int | None) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of what the detector sees of a ``width`` x ``height`` image: the central
    ``crop`` x ``crop`` pixels (Popp et al. fed the central 200 px of the 400 px Clump Scout
    images), or the whole image when ``crop`` is None. The one definition of the window for
    training labels and for catalogues."""
    if crop is None:
        return 0, 0, int(width), int(height)
    if crop > min(width, height):
        raise ValueError(f"the crop of {crop} px is larger than the {width}x{height} px image")
    return (int(width) - crop) // 2, (int(height) - crop) // 2, int(crop), int(crop)
