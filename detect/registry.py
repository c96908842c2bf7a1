"""The model registry on disk: versioned artefacts, metadata and a production pointer per model name.

Layout::

    <models>/<name>/<version>/model.joblib     the artefact (joblib)
    <models>/<name>/<version>/metadata.json    features, training window, data hash, metrics, thresholds,
                                               library versions, created_at
    <models>/<name>/PRODUCTION                 the version in production (one line)
    <models>/<name>/history.json               promotion stack (for rollback) and an audit log

Versions are consecutive integers ("1", "2", ...). Every write is atomic: a version is written into a
temporary directory and renamed into place, pointers are written to a temporary file and replaced, so a
running scorer never sees a half-written version. A version that cannot be loaded raises
:class:`ModelLoadError` (the service keeps its last good model).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib

from cellwatch.errors import CellwatchError

ARTEFACT_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
POINTER_FILE = "PRODUCTION"
HISTORY_FILE = "history.json"
#: Libraries whose versions go into every metadata.json (a model pickled with one may not load with another).
TRACKED_LIBRARIES = ("numpy", "pandas", "pyod", "lightgbm", "scikit-learn", "joblib", "cellwatch")


class RegistryError(CellwatchError):
    """Unknown model name or version, or an impossible promote/rollback."""


class ModelLoadError(RegistryError):
    """A registered version exists but cannot be loaded (corrupt, partial or incompatible)."""


def library_versions() -> dict[str, str]:
    """Python and the tracked libraries' versions."""
    out = {"python": platform.python_version()}
    for lib in TRACKED_LIBRARIES:
        try:
            out[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            out[lib] = "missing"
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as listed by :meth:`ModelRegistry.list`."""

    name: str
    version: str
    created_at: str | None
    in_production: bool
    metadata: dict


class ModelRegistry:
    """Versioned model store in one directory (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------------------------- reading
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted((p.name for p in d.iterdir() if p.is_dir() and p.name.isdigit()), key=int)

    def production(self, name: str) -> str | None:
        """The version in production, or None."""
        try:
            v = (self.root / name / POINTER_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return v or None

    def metadata(self, name: str, version: str | None = None) -> dict:
        version = self._resolve(name, version)
        path = self.root / name / version / METADATA_FILE
        try:
            return {**json.loads(path.read_text(encoding="utf-8")), "version": version}
        except FileNotFoundError as exc:
            raise ModelLoadError(f"model {name} version {version}: {METADATA_FILE} is missing") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"model {name} version {version}: {METADATA_FILE} is corrupt ({exc})") from exc

    def load(self, name: str, version: str | None = None) -> tuple[Any, dict]:
        """(artefact, metadata) of a version (default: the production version)."""
        version = self._resolve(name, version)
        meta = self.metadata(name, version)
        path = self.root / name / version / ARTEFACT_FILE
        if not path.is_file():
            raise ModelLoadError(f"model {name} version {version}: {ARTEFACT_FILE} is missing")
        digest = meta.get("artefact_sha256")
        if digest and _sha256(path) != digest:
            raise ModelLoadError(f"model {name} version {version}: {ARTEFACT_FILE} does not match its checksum "
                                 "(corrupt or partially written)")
        try:
            artefact = joblib.load(path)
        except Exception as exc:  # unpickling can raise almost anything
            raise ModelLoadError(f"model {name} version {version} cannot be loaded: "
                                 f"{type(exc).__name__}: {exc}"[:400]) from exc
        return artefact, meta

    def list(self, name: str | None = None) -> list[VersionInfo]:
        out = []
        for n in ([name] if name else self.names()):
            prod = self.production(n)
            for v in self.versions(n):
                try:
                    meta = self.metadata(n, v)
                except ModelLoadError as exc:
                    meta = {"error": str(exc)}
                out.append(VersionInfo(n, v, meta.get("created_at"), v == prod, meta))
        return out

    def history(self, name: str) -> dict:
        try:
            return json.loads((self.root / name / HISTORY_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"stack": [], "log": []}

    def fingerprint(self) -> str:
        """Cheap string that changes whenever a production pointer changes (promote / rollback)."""
        return ";".join(f"{n}={self.production(n) or '-'}" for n in self.names())

    # ----------------------------------------------------------------------------------- writing
    def register(self, name: str, artefact: Any, metadata: dict, promote: bool | None = None) -> str:
        """Store a new version atomically and return its number.

        ``promote=None`` promotes only when nothing of that name is in production yet.
        """
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RegistryError(f"invalid model name {name!r}")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            joblib.dump(artefact, tmp / ARTEFACT_FILE)
            meta = {"name": name, "created_at": _now(), "libraries": library_versions(), **metadata,
                    "artefact_sha256": _sha256(tmp / ARTEFACT_FILE)}
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=_json_default), encoding="utf-8")
            while True:  # another trainer may take the same number: retry with the next one
                existing = self.versions(name)
                version = str(int(existing[-1]) + 1 if existing else 1)
                try:
                    os.rename(tmp, model_dir / version)  # atomic; fails if the target exists and is not empty
                    break
                except OSError:
                    if not (model_dir / version).exists():
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if promote or (promote is None and self.production(name) is None):
            self.promote(name, version)
        return version

    def promote(self, name: str, version: str) -> None:
        """Put a version into production (after checking that it loads)."""
        version = str(version)
        if version not in self.versions(name):
            have = ", ".join(self.versions(name)) or "none"
            raise RegistryError(f"model {name} has no version {version} (have: {have})")
        self.load(name, version)  # refuse to promote something unloadable
        hist = self.history(name)
        hist["stack"].append(version)
        hist["log"].append({"action": "promote", "version": version, "at": _now()})
        self._write_pointer(name, version, hist)

    def rollback(self, name: str) -> str:
        """Return to the version that was in production before the current one; returns it."""
        hist = self.history(name)
        current = self.production(name)
        stack = [v for v in hist["stack"] if v in self.versions(name)]
        while stack and stack[-1] == current:
            stack.pop()
        if not stack:
            raise RegistryError(f"model {name}: no earlier production version to roll back to")
        previous = stack[-1]
        self.load(name, previous)
        hist["stack"] = stack
        hist["log"].append({"action": "rollback", "version": previous, "from": current, "at": _now()})
        self._write_pointer(name, previous, hist)
        return previous

    # ----------------------------------------------------------------------------------- helpers
    def _resolve(self, name: str, version: str | None) -> str:
        if name not in self.names():
            raise RegistryError(f"no model named {name!r} in {self.root} (have: {', '.join(self.names()) or 'none'})")
        if version is None:
            version = self.production(name)
            if version is None:
                raise RegistryError(f"model {name} has no production version; promote one first")
        version = str(version)
        if not (self.root / name / version).is_dir():
            raise RegistryError(f"model {name} has no version {version}")
        return version

    def _write_pointer(self, name: str, version: str, hist: dict) -> None:
        model_dir = self.root / name
        _atomic_write_text(model_dir / HISTORY_FILE, json.dumps(hist, indent=2))
        _atomic_write_text(model_dir / POINTER_FILE, version + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_hash(*frames) -> str:
    """A short content hash of training frames (for metadata.json)."""
    import pandas as pd

    h = hashlib.sha256()
    for f in frames:
        h.update(pd.util.hash_pandas_object(f, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]
