"""The model registry: versions, production pointer, rollback, atomic writes, corrupt versions, metadata."""

from __future__ import annotations

import json

import pytest

from cellwatch.detect.core import production_fingerprint
from cellwatch.detect.registry import ModelLoadError, ModelRegistry, RegistryError


@pytest.fixture
def reg(tmp_path):
    return ModelRegistry(tmp_path / "models")


def test_register_list_and_first_version_promoted(reg):
    v1 = reg.register("defect", {"w": 1}, {"threshold": 0.3, "metrics": {"validation": {"roc_auc": 0.9}}})
    v2 = reg.register("defect", {"w": 2}, {"threshold": 0.4})
    assert (v1, v2) == ("1", "2")
    assert reg.versions("defect") == ["1", "2"]
    assert reg.production("defect") == "1"  # only the first is promoted automatically
    listed = reg.list("defect")
    assert [(v.version, v.in_production) for v in listed] == [("1", True), ("2", False)]
    art, meta = reg.load("defect")
    assert art == {"w": 1} and meta["version"] == "1"


def test_metadata_fields(reg):
    reg.register("stations", [1, 2, 3], {"features": ["a", "b"], "training_window": {"start": "x", "end": "y"},
                                         "data_hash": "abc", "metrics": {}, "thresholds": {"coating/*": 0.5}})
    meta = reg.metadata("stations", "1")
    for key in ("name", "version", "created_at", "features", "training_window", "data_hash", "metrics", "thresholds",
                "libraries", "artefact_sha256"):
        assert key in meta, key
    for lib in ("python", "pandas", "pyod", "lightgbm", "scikit-learn"):
        assert meta["libraries"][lib] not in ("", None, "missing"), lib


def test_promote_rollback_and_fingerprint(reg):
    for i in range(3):
        reg.register("defect", {"w": i}, {})
    fp1 = production_fingerprint(reg.root)
    reg.promote("defect", "3")
    assert reg.production("defect") == "3"
    fp3 = production_fingerprint(reg.root)
    assert fp3 != fp1
    reg.promote("defect", "2")
    assert reg.rollback("defect") == "3"
    assert reg.rollback("defect") == "1"
    assert production_fingerprint(reg.root) == fp1
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback("defect")
    log = reg.history("defect")["log"]
    assert [e["action"] for e in log] == ["promote", "promote", "promote", "rollback", "rollback"]


def test_unknown_names_and_versions_are_clear_errors(reg):
    with pytest.raises(RegistryError, match="no model named"):
        reg.load("defect")
    reg.register("defect", 1, {})
    with pytest.raises(RegistryError, match="no version 9"):
        reg.promote("defect", "9")


def test_corrupt_version_raises_clear_error_and_cannot_be_promoted(reg):
    reg.register("defect", {"w": 1}, {})
    reg.register("defect", {"w": 2}, {})
    artefact = reg.root / "defect" / "2" / "model.joblib"
    artefact.write_bytes(artefact.read_bytes()[:10])
    with pytest.raises(ModelLoadError, match="checksum"):
        reg.load("defect", "2")
    with pytest.raises(ModelLoadError):
        reg.promote("defect", "2")
    assert reg.production("defect") == "1"
    (reg.root / "defect" / "2" / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt"):
        reg.metadata("defect", "2")
    assert "error" in reg.list("defect")[1].metadata  # listing survives a corrupt version


def test_atomic_writes_leave_no_partial_version(reg, monkeypatch):
    reg.register("defect", {"w": 1}, {})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        reg.register("defect", Unpicklable(), {})
    assert reg.versions("defect") == ["1"]
    assert not [p for p in (reg.root / "defect").iterdir() if p.name.startswith(".tmp")]
    # a leftover temporary directory (crashed trainer) is never listed as a version
    (reg.root / "defect" / ".tmp-crashed").mkdir()
    assert reg.versions("defect") == ["1"]
    pointer = (reg.root / "defect" / "PRODUCTION").read_text()
    assert pointer.strip() == "1"
    assert json.loads((reg.root / "defect" / "history.json").read_text())["stack"] == ["1"]
