"""A local stand-in for the CDS hips2fits service, for tests and benchmarks (no network).

It answers GET requests with the service's parameters (hips, width, height, projection, ra, dec,
fov, format=fits, ...) like the real service: a FITS primary HDU whose TAN WCS is centred on
(ra, dec) with ``fov`` degrees across ``width`` pixels, holding a galaxy (an exponential disc at the
centre) plus Gaussian clumps at the sky positions in ``sources``, and sky noise. Errors are JSON
``{"title", "description"}`` with the status code, as hips2fits sends them.

Per-position behaviours exercise the client: ``behaviour[(round(ra, 5), round(dec, 5))]`` is one of

* ``"truncate_once"`` - the first request per band gets half a FITS file (the length header
  still promises the whole file and the connection closes), later ones the full image;
* ``"error500"`` - every request gets a 500;
* ``"missing"`` - a 404 "object not found";
* ``"empty"`` - a 200 with a blank (NaN) image, as outside the survey's footprint.

``requests`` counts the requests per (ra, dec, band); ``delay`` seconds are spent on each request.
"""

from __future__ import annotations

import functools
import io
import json
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS


def position_key(ra: float, dec: float) -> tuple[float, float]:
    return (round(float(ra), 5), round(float(dec), 5))


@functools.lru_cache(maxsize=64)
def _base_image(width: int, height: int, band: str) -> np.ndarray:
    """The galaxy (an exponential disc of scale width/24 px at the centre) plus sky noise, in
    pixel units, so one array serves every field of view: the server stays cheap next to the
    client it is there to exercise."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    x = (np.arange(width, dtype=np.float32) - cx)[None, :]
    y = (np.arange(height, dtype=np.float32) - cy)[:, None]
    amp = {"u": 0.3, "g": 0.6, "r": 1.0, "i": 1.2, "z": 1.3}.get(band, 1.0)
    img = np.float32(amp * 2.0) * np.exp(np.sqrt(x * x + y * y) / np.float32(-width / 24))
    rng = np.random.default_rng(zlib.crc32(f"{width}{height}{band}".encode()))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.01)
    img.setflags(write=False)
    return img


def render(ra: float, dec: float, fov_deg: float, width: int, height: int, band: str,
           sources: list[tuple[float, float, float]]) -> tuple[np.ndarray, fits.Header]:
    """The image and header the service would send (values in nanomaggies)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [width / 2 + 0.5, height / 2 + 0.5]
    scale = fov_deg / width
    w.wcs.cdelt = [-scale, scale]
    img = _base_image(width, height, band)
    if sources:
        img = img.copy()
        arcsec = scale * 3600
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        px, py = w.world_to_pixel_values(np.array([s[0] for s in sources]), np.array([s[1] for s in sources]))
        for (sx, sy), (_, _, flux) in zip(zip(px, py), sources):
            if -10 < sx < width + 10 and -10 < sy < height + 10:
                sig = 0.6 / arcsec
                img += (flux * (1.6 if band == "g" else 1.0) / (2 * np.pi * sig**2 * arcsec**2)
                        * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sig**2))).astype(np.float32)
    header = w.to_header()
    header["BUNIT"] = "nanomaggy"
    return img, header


class HipsServer:
    """``with HipsServer() as srv:`` serves on ``srv.url`` from a background thread."""

    def __init__(self, behaviour: dict[tuple[float, float], str] | None = None,
                 sources: list[tuple[float, float, float]] | None = None, port: int = 0, delay: float = 0.0):
        self.behaviour = dict(behaviour or {})
        self.delay = delay
        self.sources = list(sources or [])
        self.requests: Counter = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str, length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                if length is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                if length is not None:
                    self.close_connection = True

            def _error(self, status: int, title: str, description: str) -> None:
                self._send(status, json.dumps({"title": title, "description": description}).encode(),
                           "application/json")

            def do_GET(self):  # noqa: N802 - http.server's name
                q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                try:
                    ra, dec, fov = float(q["ra"]), float(q["dec"]), float(q["fov"])
                    width, height = int(q["width"]), int(q["height"])
                    hips = q["hips"]
                except (KeyError, ValueError) as err:
                    return self._error(400, "Bad request", f"missing or bad parameter {err}")
                if q.get("format") != "fits":
                    return self._error(400, "Bad request", "only format=fits is served here")
                band = hips.rstrip("/").split("/")[-1]
                key = position_key(ra, dec)
                with outer._lock:
                    outer.requests[(*key, band)] += 1
                    n = outer.requests[(*key, band)]
                mode = outer.behaviour.get(key, "ok")
                if outer.delay:
                    time.sleep(outer.delay)
                if mode == "error500":
                    return self._error(500, "Internal server error", "the HiPS tiles could not be read")
                if mode == "missing":
                    return self._error(404, "Not found", f"no HiPS coverage at ra={ra} dec={dec}")
                img, header = render(ra, dec, fov, width, height, band, outer.sources)
                if mode == "empty":
                    img = np.full_like(img, np.nan)
                buf = io.BytesIO()
                fits.PrimaryHDU(img, header=header).writeto(buf)
                body = buf.getvalue()
                if mode == "truncate_once" and n == 1:
                    return self._send(200, body[: len(body) // 2], "application/fits", length=len(body))
                self._send(200, body, "application/fits")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hips2fits"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HipsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, ra: float, dec: float) -> int:
        """Requests so far for one position, all bands."""
        key = position_key(ra, dec)
        return sum(v for k, v in self.requests.items() if k[:2] == key)


if __name__ == "__main__":  # serve until killed: python tests/hips_server.py PORT [sources.json]
    import sys

    src = json.loads(open(sys.argv[2]).read()) if len(sys.argv) > 2 else []
    with HipsServer(sources=[tuple(s) for s in src], port=int(sys.argv[1])) as srv:
        print(srv.url, flush=True)
        while True:
            time.sleep(3600)
