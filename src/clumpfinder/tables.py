"""Reading the tables a stage is given, with errors that say which file and which column.

A label table, a manifest or a gold list that cannot be parsed, lacks a column the stage needs or
has a subject id that is not an integer stops the stage with a ``ValueError`` naming the file, the
column and, where there is one, the line; pandas' own messages name neither.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import pandas as pd


def read_table(path: str | os.PathLike, what: str, columns: Iterable[str] = (),
               integer_columns: Iterable[str] = ("subject_id",), dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    """The CSV at ``path`` (``what`` says what it is, for the messages); ``columns`` must be there,
    ``integer_columns`` that are there must hold integers in every row (subject ids)."""
    try:
        table = pd.read_csv(path, dtype=dtype)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: cannot read the {what} as CSV: {err}") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: the {what} lacks column(s) {', '.join(missing)} "
                         f"(columns are {', '.join(map(str, table.columns)) or 'none'})")
    for c in integer_columns:
        if c not in table.columns:
            continue
        value = pd.to_numeric(table[c], errors="coerce")
        bad = value.isna() | (value != value.round())
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise ValueError(f"{path}: line {row + 2}: column {c} of the {what} must be an integer, "
                             f"got {table[c].iloc[row]!r}")
        table[c] = value.astype(np.int64)
    return table


def read_gold(path: str | os.PathLike) -> pd.Series:
    """Gold subjects (CSV with subject_id, has_clumps in {0, 1}) as a Series by subject_id."""
    gold = read_table(path, "gold subject table", ["subject_id", "has_clumps"])
    repeated = gold["subject_id"].duplicated()
    if repeated.any():
        row = int(repeated.to_numpy().argmax()) + 2
        raise ValueError(f"{path}: line {row}: subject {gold['subject_id'][repeated].iloc[0]} is listed twice")
    value = pd.to_numeric(gold["has_clumps"], errors="coerce")
    bad = ~value.isin([0, 1])
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 2
        raise ValueError(f"{path}: line {row}: has_clumps must be 0 or 1, got {gold['has_clumps'][bad].iloc[0]!r}")
    return pd.Series(value.to_numpy(int), index=gold["subject_id"].to_numpy(np.int64))
