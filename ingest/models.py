"""Which model the service scores with: load the production LineScorer, notice promotions, reload safely.

Between batches the service calls :meth:`ModelWatcher.poll` (cheap: it compares
``production_fingerprint(models_dir)`` every ``check_s`` seconds). A changed fingerprint loads the new
LineScorer; if that fails the last good model stays in use and the failure is logged (once per
fingerprint). The rows for ``model_versions`` and ``sensor_bands`` come from here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cellwatch.errors import CellwatchError
from cellwatch.ingest.schema import TABLE

log = logging.getLogger(__name__)

MODEL_NAME = "line_scorer"


def _loaders() -> tuple[Callable[[Path], Any], Callable[[Path], str]]:
    from cellwatch.detect.core import load_scorer, production_fingerprint
    return load_scorer, production_fingerprint


class ModelWatcher:
    """Holds the scorer in use and swaps it when a new version is promoted."""

    def __init__(self, models_dir: str | Path, check_s: float = 5.0,
                 loader: Callable[[Path], Any] | None = None, fingerprint: Callable[[Path], str] | None = None):
        self.models_dir = Path(models_dir)
        self.check_s = check_s
        default_loader, default_fp = (None, None) if loader and fingerprint else _loaders()
        self.loader = loader or default_loader
        self.fingerprint = fingerprint or default_fp
        self.scorer: Any = None
        self.fp: str | None = None
        self._failed_fp: str | None = None
        self._next_check = 0.0
        self.previous_version: str | None = None

    def load_initial(self) -> Any:
        """Load the production scorer; a clear error when there is none."""
        try:
            self.fp = self.fingerprint(self.models_dir)
            self.scorer = self.loader(self.models_dir)
        except CellwatchError as exc:
            raise CellwatchError(f"no usable production model in {self.models_dir}: {exc} "
                                 f"(train one with 'cellwatch train --data DIR --models {self.models_dir}')") from None
        except FileNotFoundError as exc:
            raise CellwatchError(f"no model registry at {self.models_dir}: {exc}") from None
        self._next_check = time.monotonic() + self.check_s
        log.info("model %s loaded from %s", self.scorer.model_version, self.models_dir)
        return self.scorer

    def poll(self, force: bool = False) -> Any | None:
        """The new scorer when a different production version was promoted since the last look, else None."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return None
        self._next_check = now + self.check_s
        try:
            fp = self.fingerprint(self.models_dir)
        except Exception as exc:
            log.warning("cannot read the model registry %s: %s", self.models_dir, exc)
            return None
        if fp == self.fp or fp == self._failed_fp:
            return None
        try:
            scorer = self.loader(self.models_dir)
        except Exception as exc:
            self._failed_fp = fp
            log.error("loading the newly promoted model failed; keeping %s: %s",
                      getattr(self.scorer, "model_version", None), exc)
            return None
        self.previous_version = getattr(self.scorer, "model_version", None)
        self.scorer, self.fp, self._failed_fp = scorer, fp, None
        log.warning("switched model %s -> %s", self.previous_version, scorer.model_version)
        return scorer

    def _registry_facts(self) -> tuple[pd.Timestamp | None, float | None, dict | None]:
        """created_at, the defect threshold and summary metrics (alert budget, ...) from the registry metadata."""
        try:
            from cellwatch.detect.registry import ModelRegistry

            reg = ModelRegistry(self.models_dir)
            st = reg.metadata("stations")
            de = reg.metadata("defect") if "defect" in reg.names() and reg.production("defect") else {}
        except Exception as exc:  # the facts are for dashboards; scoring goes on without them
            log.warning("cannot read the model metadata in %s: %s", self.models_dir, exc)
            return None, None, None
        budgets = [m.get("alert_budget") for m in st.get("models", {}).values() if m.get("alert_budget") is not None]
        metrics = {"alert_budget": float(max(budgets)) if budgets else None,
                   "station_thresholds": st.get("thresholds"), "training_window": st.get("training_window"),
                   "defect_threshold": de.get("threshold"),
                   "defect_validation": (de.get("metrics") or {}).get("validation")}
        created = pd.to_datetime(st.get("created_at"), utc=True) if st.get("created_at") else None
        threshold = de.get("threshold")
        return created, (float(threshold) if threshold is not None else None), metrics

    def version_rows(self) -> dict[str, pd.DataFrame]:
        """``model_versions`` rows (the one in use; the previous one no longer in production) and its bands."""
        now = pd.Timestamp(datetime.now(UTC))
        created, threshold, metrics = self._registry_facts()
        rows = [{"name": MODEL_NAME, "version": self.scorer.model_version, "in_production": True,
                 "created_at": created, "promoted_at": now, "threshold": threshold, "metrics": metrics,
                 "loaded_at": now}]
        if self.previous_version and self.previous_version != self.scorer.model_version:
            rows.append({**rows[0], "version": self.previous_version, "in_production": False, "promoted_at": None})
        versions = pd.DataFrame(rows, columns=TABLE["model_versions"].column_names)
        try:
            bands = self.scorer.bands()
        except Exception as exc:
            log.warning("model %s gives no sensor bands: %s", self.scorer.model_version, exc)
            bands = pd.DataFrame()
        return {"model_versions": versions, "sensor_bands": bands}
