"""Generic tabular mode: any CSV of numeric columns becomes one station whose columns are the sensors.

``fit_table`` trains a detector on such a file - the :class:`StationModel` ensemble (``detector="ensemble"``,
the default) or the dynamic-PCA control chart :class:`WindowPCAModel` (``detector="window-pca"``);
``score_table`` scores another file in time order with past-only context, ``save_model``/``load_model``
persist the detector.

Model format (``save_model``):

* a directory ``MODEL/`` holding ``model.joblib`` (the pickled StationModel) and ``metadata.json``; or
* a single file ``MODEL.joblib`` (or ``.pkl``) with the metadata beside it in ``MODEL.joblib.json``.

``metadata.json`` records ``format`` (:data:`MODEL_FORMAT`), the detector (``kind``), the cellwatch version,
the sensors, the threshold and the training summary; loading refuses a different format or a file that is not a model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cellwatch import __version__
from cellwatch.detect.station_model import StationModel
from cellwatch.detect.window_pca import WindowPCAModel
from cellwatch.errors import CellwatchError

log = logging.getLogger(__name__)

MODEL_FORMAT = "cellwatch-station-model/1"
#: Rows x columns kept for fitting (the most recent rows); the slow ensemble members subsample further.
FIT_CELLS = 20_000_000
SCORE_CHUNK_ROWS = 50_000
OUTPUT_COLUMNS = ("anomaly_score", "is_anomaly", "top_sensors")
#: ``cellwatch fit --detector`` choices -> detector class.
DETECTORS = {"ensemble": StationModel, "window-pca": WindowPCAModel}
TableModel = StationModel | WindowPCAModel


def read_table(path: str | Path, time_column: str | None = None) -> pd.DataFrame:
    """Read a CSV; clear errors for a missing, empty or unreadable file and a missing/unparseable time column."""
    path = Path(path)
    if not path.is_file():
        raise CellwatchError(f"input file not found: {path}")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CellwatchError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CellwatchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if df.empty:
        raise CellwatchError(f"{path}: no data rows")
    if time_column is not None:
        if time_column not in df.columns:
            raise CellwatchError(f"{path}: time column {time_column!r} not found (columns: {_names(df.columns)})")
        ts = pd.to_datetime(df[time_column], utc=True, errors="coerce", format="mixed")
        bad = ts.isna() & df[time_column].notna()
        if bad.any() or ts.isna().all():
            row = int(np.flatnonzero(bad | ts.isna())[0])
            raise CellwatchError(f"{path}: time column {time_column!r} has a value that is not a time "
                                 f"({df[time_column].iloc[row]!r} in data row {row + 1})")
    return df


def _names(cols: Sequence[str], limit: int = 12) -> str:
    cols = list(cols)
    return ", ".join(map(str, cols[:limit])) + (" ..." if len(cols) > limit else "")


def numeric_block(df: pd.DataFrame, columns: Sequence[str], path: str | Path) -> pd.DataFrame:
    """The given columns as float64; a column with a non-numeric value is an error naming the column and row."""
    out = {}
    for c in columns:
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            out[c] = col.astype("float64")
            continue
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna() & (col.astype(str).str.strip() != "")
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CellwatchError(f"{path}: column {c!r} is not numeric ({col.iloc[row]!r} in data row {row + 1}); "
                                 f"pass --ignore {c} to leave it out")
        out[c] = num.astype("float64")
    return pd.DataFrame(out, index=df.index)


def _station_frame(df: pd.DataFrame, values: pd.DataFrame, time_column: str | None) -> pd.DataFrame:
    frame = values.copy()
    frame.insert(0, "ts", pd.to_datetime(df[time_column], utc=True, format="mixed") if time_column else pd.NaT)
    frame.insert(1, "line", "L1")
    frame.insert(2, "station", "table")
    frame.insert(3, "seq", np.arange(len(df)))
    return frame


def _time_order(df: pd.DataFrame, time_column: str | None) -> np.ndarray:
    if not time_column:
        return np.arange(len(df))
    ts = pd.to_datetime(df[time_column], utc=True, format="mixed")
    return np.argsort(ts.to_numpy(), kind="stable")


def fit_table(path: str | Path, time_column: str | None = None, ignore: Sequence[str] = (),
              detector: str = "ensemble", **model_params) -> TableModel:
    """Train a detector (:data:`DETECTORS`) on the numeric columns of a CSV (one station; columns = sensors)."""
    if detector not in DETECTORS:
        raise CellwatchError(f"unknown detector {detector!r}; choose from {', '.join(DETECTORS)}")
    df = read_table(path, time_column)
    unknown = [c for c in ignore if c not in df.columns]
    if unknown:
        raise CellwatchError(f"{path}: --ignore names unknown columns: {_names(unknown)}")
    sensors = [c for c in df.columns if c != time_column and c not in set(ignore)]
    if not sensors:
        raise CellwatchError(f"{path}: no columns left to learn from")
    values = numeric_block(df, sensors, path)
    usable = [c for c in sensors if values[c].notna().mean() >= 0.5]
    if not usable:
        raise CellwatchError(f"{path}: every column is mostly empty")
    dropped = sorted(set(sensors) - set(usable))
    if dropped:
        log.warning("left out mostly empty columns: %s", _names(dropped))
    order = _time_order(df, time_column)
    frame = _station_frame(df, values[usable], time_column).iloc[order].reset_index(drop=True)
    keep = max(2_000, FIT_CELLS // max(1, len(usable)))
    if len(frame) > keep:
        log.info("fitting on the most recent %d of %d rows", keep, len(frame))
        frame = frame.iloc[-keep:].reset_index(drop=True)
    if len(frame) < 50:
        raise CellwatchError(f"{path}: {len(frame)} rows are too few to learn from (need at least 50)")
    try:
        model = DETECTORS[detector](sensors=usable, **model_params).fit(frame)
    except ValueError as exc:
        raise CellwatchError(f"{path}: {exc}") from None
    model.metadata_.update({"source": str(path), "time_column": time_column, "ignored": list(ignore)})
    return model


def score_table(model: TableModel, path: str | Path, time_column: str | None = None) -> Iterator[pd.DataFrame]:
    """Score a CSV in time order with past-only context; yields chunks of the input rows plus the score columns.

    The time column defaults to the one the model was trained with.
    """
    time_column = time_column if time_column is not None else model.metadata_.get("time_column")
    df = read_table(path, time_column)
    missing = [s for s in model.sensors_ if s not in df.columns]
    if missing:
        raise CellwatchError(f"{path}: columns the model needs are missing: {_names(missing)}")
    values = numeric_block(df, model.sensors_, path)
    order = _time_order(df, time_column)
    frame = _station_frame(df, values, time_column)
    state = model.new_state()
    for a in range(0, len(order), SCORE_CHUNK_ROWS):
        idx = order[a: a + SCORE_CHUNK_ROWS]
        scored = model.score(frame.iloc[idx], state)
        out = df.iloc[idx].copy()
        out["anomaly_score"] = scored["anomaly_score"].round(6).to_numpy()
        out["is_anomaly"] = scored["is_anomaly"].astype(int).to_numpy()
        out["top_sensors"] = scored["top_sensors"].to_numpy()
        yield out


# ------------------------------------------------------------------------------------------------ persistence
def _paths(path: Path) -> tuple[Path, Path]:
    if path.suffix in (".joblib", ".pkl"):
        return path, path.with_name(path.name + ".json")
    return path / "model.joblib", path / "metadata.json"


def save_model(model: TableModel, path: str | Path) -> Path:
    """Write the model (directory, or single ``.joblib``/``.pkl`` file) and its JSON metadata."""
    path = Path(path)
    model_file, meta_file = _paths(path)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {**model.metadata_, "format": MODEL_FORMAT, "saved_by": f"cellwatch {__version__}"}
    joblib.dump(model, model_file, compress=3)
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return model_file


def load_model(path: str | Path) -> TableModel:
    """Load a saved model; a missing path, another format or a file that is not a model is a CellwatchError."""
    path = Path(path)
    if not path.exists():
        raise CellwatchError(f"model not found: {path}")
    model_file, meta_file = _paths(path)
    if not model_file.is_file() or not meta_file.is_file():
        raise CellwatchError(f"{path}: not a cellwatch model (need {model_file.name} and {meta_file.name})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CellwatchError(f"{meta_file}: metadata is not valid JSON") from None
    if meta.get("format") != MODEL_FORMAT:
        raise CellwatchError(f"{path}: model format {meta.get('format')!r} is not {MODEL_FORMAT!r}; refit the model")
    try:
        model = joblib.load(model_file)
    except Exception as exc:  # unpickling errors come in many types
        raise CellwatchError(f"{model_file}: cannot load the model ({type(exc).__name__})") from None
    if not isinstance(model, tuple(DETECTORS.values())) or not hasattr(model, "threshold_"):
        raise CellwatchError(f"{model_file}: does not hold a fitted cellwatch detector")
    return model
