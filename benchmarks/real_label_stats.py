"""Derive the reference statistics of the real Clump Scout training labels (Popp et al. 2024).

    python benchmarks/real_label_stats.py --repo PATH_TO_CHECKOUT [--out benchmarks/reference/clump_scout_labels.json]

``PATH_TO_CHECKOUT`` is a clone of ``ou-astrophysics/Faster-R-CNN-for-Galaxy-Zoo-Clump-Scout``; the
two pickled label tables in ``Faster-RCNN - Pytorch/`` are read with an unpickler that admits only
pandas and numpy classes (:func:`clumpfinder.data.realism.read_pickled_frame`). Lengths are in units of
the 200 px crop the labels refer to. Only the derived statistics are written (and committed), with
the source files' git blob ids so anyone can check they came from the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from clumpfinder.data.realism import label_statistics, popp_boxes, read_pickled_frame, reference_statistics  # noqa: E402

FILES = ("Faster-RCNN - Pytorch/imageGroups_train.pkl", "Faster-RCNN - Pytorch/imageGroups_valid.pkl")
CROP = 200  # the labels are pixels of the central 200 x 200 crop of the 400 px subject images


def git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True, help="checkout of Faster-R-CNN-for-Galaxy-Zoo-Clump-Scout")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "reference" / "clump_scout_labels.json")
    a = ap.parse_args()
    paths = [a.repo / f for f in FILES]
    boxes = popp_boxes([read_pickled_frame(p) for p in paths], [str(p) for p in paths])
    stats = reference_statistics(label_statistics(boxes, CROP))
    try:
        commit = subprocess.run(["git", "-C", str(a.repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    out = {
        "source": {"repository": "ou-astrophysics/Faster-R-CNN-for-Galaxy-Zoo-Clump-Scout", "commit": commit,
                   "files": {f: git_blob_id(p) for f, p in zip(FILES, paths)},
                   "image_side_px": CROP,
                   "note": "Popp et al. 2024 consensus training labels; lengths in units of the 200 px crop"},
        **stats,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{a.out}: {stats['galaxies']} galaxies, {stats['boxes']} boxes, "
          f"{stats['boxes_per_galaxy']['mean']} boxes per galaxy, odd share {stats['odd_share']}")


if __name__ == "__main__":
    main()
