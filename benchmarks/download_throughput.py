"""Cutout preparation throughput with a local hips2fits stand-in (no network).

    python benchmarks/download_throughput.py [--n 600] [--workers 8]

Paper-scale preparation is about 20,000 subjects. With the real service the rate is set by the
service; this measures our side: the local server (tests/hips_server.py, a separate process)
renders 400 px FITS in three bands, and ``download_cutouts`` requests them through astroquery,
validates, writes the cache and renders the colour PNG of every galaxy. Two passes: cold (every
cutout fetched) and warm (every cutout read back from the cache, as in a resumed run; PNGs
rendered again). The CPU time per cutout of our side and of the server is recorded too: on a machine where both
share the cores, our side's share is what a real (remote) service would leave us.
Results go to benchmarks/results/download_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder.data.download import DownloadSpec, download_cutouts  # noqa: E402
from provenance import command_line, git_commit  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    """CPU seconds of this process and its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="galaxies")
    ap.add_argument("--workers", type=int, default=4, help="concurrent requests (data.download.workers)")
    ap.add_argument("--processes", type=int, default=2, help="processes (the download rule's threads)")
    args = ap.parse_args()
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["data"]["download"]
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "hips_server.py"), str(port)],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    work = Path(tempfile.mkdtemp(prefix="download_bench_"))
    try:
        spec = DownloadSpec.from_config({**cfg, "server": url, "workers": args.workers, "backoff": 0.1})
        rng = np.random.default_rng(0)
        subjects = pd.DataFrame({"subject_id": np.arange(1, args.n + 1), "ra": rng.uniform(120, 240, args.n),
                                 "dec": rng.uniform(-5, 60, args.n), "arcsec_per_side": rng.uniform(62, 106, args.n)})
        result = {"command": command_line(), "date": time.strftime("%Y-%m-%d"),
                  "commit": git_commit(), "data_seeds": None, "n": args.n, "workers": args.workers, "processes": args.processes, "image_size": spec.image_size, "bands": spec.bands,
                  "cpu_count": os.cpu_count(), "python": platform.python_version()}
        for name in ("cold", "warm"):
            server0, client0 = server_cpu(server.pid), client_cpu()
            t0 = time.perf_counter()
            man, fail, rep = download_cutouts(subjects, spec, work / "cache", work / f"png_{name}",
                                             processes=args.processes)
            seconds = time.perf_counter() - t0
            assert fail.empty and len(man) == args.n, rep
            result[name] = {"seconds": round(seconds, 2), "cutouts_per_s": round(args.n / seconds, 1),
                            "requests": rep["requests"], "from_cache": rep["from_cache"],
                            # CPU per cutout: ours (this process + its workers) and the server's
                            "client_cpu_ms_per_cutout": round((client_cpu() - client0) / args.n * 1000, 1),
                            "server_cpu_ms_per_cutout": round((server_cpu(server.pid) - server0) / args.n * 1000, 1)}
            print(name, result[name], flush=True)
        cache_mb = sum(p.stat().st_size for p in (work / "cache").iterdir()) / 2**20
        png_mb = sum(p.stat().st_size for p in (work / "png_cold").iterdir()) / 2**20
        result["mb_per_cutout"] = {"fits": round(cache_mb / args.n, 3), "png": round(png_mb / args.n, 3)}
        out = REPO / "benchmarks" / "results" / "download_throughput.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
