"""A simulation run on disk: one Parquet file per frame in a directory.

``readings.parquet`` (the contract's wide frame), ``cells.parquet`` (one row per finished cell with its
genealogy, visit times, EOL result and the faults that touched it), ``faults.parquet`` (ground truth),
``genealogy.parquet`` (every lot and its parent), ``events.parquet`` (normal events: stops, changeovers,
knife changes, shift handovers) and ``manifest.json`` (the arguments of the run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellwatch import __version__
from cellwatch.errors import CellwatchError

from .simulate import SimulationResult

FILES = {"readings": "readings.parquet", "cells": "cells.parquet", "faults": "faults.parquet",
         "genealogy": "genealogy.parquet", "events": "events.parquet"}
MANIFEST = "manifest.json"


def _write(frame: pd.DataFrame, path: Path) -> None:
    """zstd; dictionary encoding only for string columns (floats do not repeat: trying costs time)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=strings)


def write_parquet(result: SimulationResult, out_dir: str | Path, manifest: dict | None = None) -> dict[str, Path]:
    """Write every frame of ``result`` into ``out_dir`` (created if needed); returns name -> path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CellwatchError(f"cannot create output directory {out}: {exc.strerror}") from exc
    paths = {}
    for name, file in FILES.items():
        paths[name] = out / file
        _write(getattr(result, name), paths[name])
    info = {"cellwatch_version": __version__, "readings": len(result.readings), "cells": len(result.cells),
            "faults": len(result.faults), **(manifest or {})}
    (out / MANIFEST).write_text(json.dumps(info, indent=2, default=str) + "\n")
    paths["manifest"] = out / MANIFEST
    return paths


#: Columns a dataset must have for training and evaluation (the contract's reading keys; a cell's identity and label).
_REQUIRED = {"readings": ("ts", "line", "station", "cell_id", "seq"), "cells": ("cell_id", "line", "ts", "defect")}


def read_dataset(directory: str | Path) -> SimulationResult:
    """Read a directory written by :func:`write_parquet` back into a :class:`SimulationResult`."""
    d = Path(directory)
    if not (d / FILES["readings"]).is_file():
        raise CellwatchError(f"{d} holds no {FILES['readings']} (not a simulator output directory)")
    frames = {}
    for name, file in FILES.items():
        path = d / file
        try:
            frames[name] = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise CellwatchError(f"{path} is not a readable Parquet file: {exc}") from None
    for name, required in _REQUIRED.items():
        missing = [c for c in required if c not in frames[name].columns]
        if missing and (name == "readings" or len(frames[name].columns)):
            raise CellwatchError(f"{d / FILES[name]} lacks the column(s) {', '.join(missing)}")
    for name in ("cells", "faults"):
        for col in ("fault_ids", "sensors", "cells"):
            if col in frames[name]:
                frames[name][col] = frames[name][col].map(lambda v: [] if v is None else list(v))
    return SimulationResult(frames["readings"], frames["cells"], frames["faults"], frames["genealogy"],
                            frames["events"])
