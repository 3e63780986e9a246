"""Atomic file output and small shared I/O helpers.

Every stage writes through these helpers, so a job killed half-way leaves either the old
file (or nothing) at the final path, never a truncated one: data goes to a temporary path in
the same directory and is renamed into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import MISSING
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def json_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as sorted-key JSON (values JSON cannot hold as their ``str``): the
    same settings, the same digest, whatever the order of their keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffix (``suffix`` overrides it) so libraries that pick
    a format from the extension (matplotlib, PIL, astropy) behave as for the final path.
    On error the temporary file is removed and the final path is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix if suffix is not None else final.suffix,
        dir=final.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    An existing directory at ``path`` is replaced only once the new one is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(obj: Any, path: str | os.PathLike, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent, default=_json_default)
            fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write a DataFrame as CSV atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO,
                  append: bool = False) -> logging.Logger:
    """Send the package's log records (and uncaught tracebacks) to ``log_path`` and stderr.

    Snakemake scripts call this first with ``snakemake.log[0]``; the worker processes of a job
    that it starts add to the same file (``append``).
    """
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        if not append:
            open(log_path, "w").close()
        fh = logging.FileHandler(log_path, mode="a")  # O_APPEND: a job's worker processes write after it
        fh.setFormatter(fmt)
        root.addHandler(fh)

    def _excepthook(exc_type, exc, tb):  # pragma: no cover - exercised only on crashes
        logging.getLogger("clumpfinder").critical("uncaught exception", exc_info=(exc_type, exc, tb))

    sys.excepthook = _excepthook
    return logging.getLogger("clumpfinder")


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file (Markdown, HTML) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def known_fields(cls: type, cfg: dict[str, Any], section: str, elsewhere: tuple[str, ...] = ()) -> dict[str, Any]:
    """The one policy of every ``from_config``: the keys of configuration ``section`` that are fields
    of the dataclass ``cls``. A key that is neither a field nor read by other code (``elsewhere``)
    is an error, as is a field without a default that the section lacks; both name the section
    and the keys."""
    fields = cls.__dataclass_fields__
    unknown = set(cfg) - set(fields) - set(elsewhere)
    if unknown:
        raise ValueError(f"unknown {section} settings {sorted(unknown)}")
    missing = [k for k, f in fields.items() if k not in cfg and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{section} lacks the settings {missing}")
    return {k: v for k, v in cfg.items() if k in fields}
