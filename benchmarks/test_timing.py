"""Time the README's test command, and optionally the install into a fresh virtual environment.

    python benchmarks/test_timing.py [--ci] [--install] [--out FILE]

Runs `python -m pytest -q` from the repository root in the current environment and records the
wall-clock time and pytest's closing line (passed / skipped / failed counts) with the command,
date, commit and machine. `--ci` sets what .ci/run sets (CLUMPFINDER_REQUIRE_SLURM=1,
CLUMPFINDER_REQUIRE_BROWSER=1: the SLURM and browser tests run, not skip). `--install` first
times `pip install -e '.[test]'` into a new virtual environment in a temporary directory (a large
download) and runs the tests with it. Writes benchmarks/results/test_timing.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import data_seeds, git_commit, merged_config  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return round(time.perf_counter() - t0, 1), proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="require the SLURM and browser tests, as .ci/run does")
    ap.add_argument("--install", action="store_true", help="time the install into a fresh virtual environment first")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "test_timing.json")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.ci:
        env.update(CLUMPFINDER_REQUIRE_SLURM="1", CLUMPFINDER_REQUIRE_BROWSER="1")
    python = sys.executable
    record: dict = {"command": "python benchmarks/test_timing.py" + (" --ci" if args.ci else "")
                    + (" --install" if args.install else ""),
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
                    "data_seeds": data_seeds(merged_config([REPO / "tests" / "config" / "config.yaml"])),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.install:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            python = str(venv / "bin" / "python")
            seconds, proc = timed([python, "-m", "pip", "install", "-q", "-e", ".[test]"], env)
            if proc.returncode:
                sys.exit(f"pip install failed:\n{proc.stderr[-3000:]}")
            record["install_seconds"] = seconds
            record["install_command"] = "pip install -e '.[test]' (fresh virtual environment)"
        cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        seconds, proc = timed(cmd, env)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    record.update({"test_command": "pytest" + (" (CLUMPFINDER_REQUIRE_SLURM=1 CLUMPFINDER_REQUIRE_BROWSER=1)"
                                               if args.ci else ""),
                   "test_seconds": seconds, "exit_code": proc.returncode, "pytest_summary": lines[-1] if lines else None})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    if proc.returncode:
        sys.exit(f"the tests failed:\n{proc.stdout[-3000:]}")


if __name__ == "__main__":
    main()
