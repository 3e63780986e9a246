"""The images of a split decoded once, for every job that trains or predicts on them.

Every training cell reads thousands of the same PNGs (each of ~50 cells at paper scale reads up to
12,000 of 400 px); decoding them once per split into raw uint8 pixels lets a job memory-map them
(the operating system shares the pages between concurrent jobs and DataLoader workers) instead of
decoding them again. The cache is two files: ``<split>.npy``, one flat uint8 array of every image's
(3, H, W) pixels after its crop window (images may differ in size), and ``<split>.json``, the index
(image id, file name, offset, shape). The pixels are exactly :func:`clumpfinder.imaging.read_image`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clumpfinder.imaging import read_image
from clumpfinder.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

FORMAT = 1


def write_image_cache(coco: dict[str, Any], image_dir: str | Path, data_path: str | Path,
                      index_path: str | Path) -> dict[str, Any]:
    """Decode every image of ``coco`` (cut to its crop window) into ``data_path`` and write the
    index to ``index_path``; returns the index. Errors name the image file."""
    images = coco["images"]
    shapes = [(3, int(im["height"]), int(im["width"])) for im in images]
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    t0, last = time.perf_counter(), time.perf_counter()
    with atomic_path(data_path) as tmp:
        data = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(offsets[-1]),))
        for k, im in enumerate(images):
            rgb = read_image(image_dir, im)
            data[offsets[k]:offsets[k + 1]] = np.ascontiguousarray(rgb.transpose(2, 0, 1)).ravel()
            if time.perf_counter() - last > 30:
                log.info("decoded %d/%d images", k + 1, len(images))
                last = time.perf_counter()
        data.flush()
        del data
    index = {"format": FORMAT, "n_bytes": int(offsets[-1]), "images": [
        {"id": int(im["id"]), "file_name": im["file_name"], "offset": int(offsets[k]), "shape": list(shapes[k])}
        for k, im in enumerate(images)]}
    write_json(index, index_path, indent=None)
    log.info("cached %d images (%.1f MB) in %.1f s", len(images), offsets[-1] / 1e6, time.perf_counter() - t0)
    return index


class ImageCache:
    """Read side of a split's cache: uint8 tensors (3, H, W) by image id, from a memory map opened
    lazily (so that a cache handed to DataLoader workers opens its own map in each worker)."""

    def __init__(self, data_path: str | Path, index_path: str | Path):
        self.data_path, self.index_path = Path(data_path), Path(index_path)
        index = read_json(self.index_path)
        if index.get("format") != FORMAT:
            raise ValueError(f"image cache index {self.index_path} has format {index.get('format')}, not {FORMAT}; "
                             "delete it and rerun")
        self.entries = {int(e["id"]): e for e in index["images"]}
        self.n_bytes = int(index["n_bytes"])
        self._data: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            try:
                data = np.load(self.data_path, mmap_mode="r")
            except (OSError, ValueError) as err:  # truncated or not a .npy file
                raise ValueError(f"image cache {self.data_path} cannot be read ({err}) and so does not match its "
                                 f"index {self.index_path}; delete both and rerun") from err
            if data.dtype != np.uint8 or data.ndim != 1 or data.size != self.n_bytes:
                raise ValueError(f"image cache {self.data_path} does not match its index {self.index_path} "
                                 f"({data.size} bytes of {data.dtype}, index says {self.n_bytes}); delete both and rerun")
            self._data = data
        return self._data

    def image(self, image: dict[str, Any]) -> torch.Tensor:
        """The uint8 tensor (3, H, W) of one COCO image entry; an image the cache does not hold
        (or holds under another file name or size) is an error that names it."""
        e = self.entries.get(int(image["id"]))
        if e is None or e["file_name"] != image["file_name"] or e["shape"][1:] != [image["height"], image["width"]]:
            raise KeyError(f"image {image['file_name']} (id {image['id']}) is not in the image cache {self.index_path} "
                           "(the labels and the cache come from different splits or runs)")
        n = int(np.prod(e["shape"]))
        return torch.from_numpy(np.array(self.data[e["offset"]:e["offset"] + n])).view(*e["shape"])

    def images(self, coco: dict[str, Any]) -> list[torch.Tensor]:
        """The tensors of every image of ``coco``, in its order (what ``load_images`` gives)."""
        return [self.image(im) for im in coco["images"]]
