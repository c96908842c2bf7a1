"""Hot reload: a promoted version is picked up, a broken one is refused and the last good model stays."""

from __future__ import annotations

import logging
import shutil

import pytest

from cellwatch.detect.registry import ModelRegistry
from cellwatch.errors import CellwatchError
from cellwatch.ingest.models import ModelWatcher

pytestmark = pytest.mark.slow


def test_promotion_is_picked_up_and_a_broken_version_is_refused(models_dir, tmp_path, caplog):
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    w = ModelWatcher(models, check_s=0)
    first = w.load_initial()
    assert w.poll(force=True) is None  # nothing changed
    reg = ModelRegistry(models)
    artefact, meta = reg.load("stations")
    v2 = reg.register("stations", artefact, meta, promote=True)
    second = w.poll(force=True)
    assert second is not None and second.model_version.startswith(f"stations@{v2}")
    rows = w.version_rows()["model_versions"].set_index("version")["in_production"].to_dict()
    assert rows == {second.model_version: True, first.model_version: False}

    v3 = reg.register("stations", artefact, meta, promote=True)
    (models / "stations" / v3 / "model.joblib").write_bytes(b"not a model")  # a corrupt artefact
    with caplog.at_level(logging.ERROR, logger="cellwatch.ingest.models"):
        assert w.poll(force=True) is None
    assert w.scorer is second  # the last good model stays in use
    assert "keeping" in caplog.text
    assert w.poll(force=True) is None  # the same broken version is not retried every check


def test_no_model_is_a_clear_error(tmp_path):
    with pytest.raises(CellwatchError, match="cellwatch train"):
        ModelWatcher(tmp_path / "empty", check_s=0).load_initial()
