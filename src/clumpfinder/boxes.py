"""Box geometry shared by every label source (consensus, catalogue, simulated truth). numpy only."""

from __future__ import annotations

import numpy as np


def square_boxes(x, y, side, width, height) -> dict[str, np.ndarray]:
    """Corners x1, y1, x2, y2 of squares of ``side`` centred on (x, y), clipped to the image."""
    x, y, half = np.asarray(x, float), np.asarray(y, float), np.asarray(side, float) / 2
    return {"x1": np.maximum(x - half, 0.0), "y1": np.maximum(y - half, 0.0),
            "x2": np.minimum(x + half, width), "y2": np.minimum(y + half, height)}
