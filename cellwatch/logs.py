"""Structured logging with secret redaction.

Every log line goes through :func:`redact`: passwords inside URLs (``scheme://user:PASSWORD@host``) and
every value registered with :func:`register_secret` (database password, Kafka SASL password, Grafana
token) are replaced by ``***`` before the line is written, in plain and in JSON (``--log-json``) output.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?P<at>@)")
_SECRETS: set[str] = set()

#: LogRecord attributes that are not user-supplied ``extra=`` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a log line from now on (ignores empty and very short values)."""
    if value and len(value) >= 3:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with URL passwords and registered secrets replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """The usual one-line format, redacted; ``extra=`` fields are appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the ``extra=`` fields and the exception, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(doc, default=str).decode())


def setup_logging(level: str | int = "INFO", json: bool = False) -> None:
    """Send log records of every logger to stderr, one line each, redacted (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else
                         RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # kafka-python is chatty at INFO about every connection; keep its warnings
    for noisy in ("kafka", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
