"""One typed settings object for the streaming service, from a file, then the environment, then flags.

Precedence (later wins): built-in defaults < config file (TOML or YAML, ``--config`` or
``CELLWATCH_CONFIG``) < environment ``CELLWATCH_<NAME>`` < command-line flags ``--<name>``.

Secrets (the database password, the Kafka SASL password, the Grafana token) are read only from the
environment (``CELLWATCH_DATABASE_PASSWORD``) or from a file named by ``CELLWATCH_DATABASE_PASSWORD_FILE``
/ ``--database-password-file`` / ``database_password_file`` in the config file; they are never flags or
plain file values, they are :class:`pydantic.SecretStr` and they are registered with
:func:`cellwatch.logs.register_secret`, so they never appear in a log line or a ``repr``.
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from cellwatch import contract
from cellwatch.errors import CellwatchError
from cellwatch.logs import redact, register_secret

ENV_PREFIX = "CELLWATCH_"


def _default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseModel):
    """Every setting of ``cellwatch run`` (and of ``cellwatch demo --kafka``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # Kafka
    kafka: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port")
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python", description="Kafka client library: kafka-python, or confluent (confluent-kafka, faster; "
        "pip install 'cellwatch[confluent]')")
    group_id: str = Field("cellwatch", description="consumer group id; processes with the same id share partitions")
    topic_readings: str = Field(contract.TOPIC_READINGS, description="input topic of readings")
    topic_cell_results: str = Field(contract.TOPIC_CELL_RESULTS, description="input topic of EOL cell results")
    topic_dlq: str = Field(contract.TOPIC_DLQ, description="dead-letter topic for rejected messages")
    topic_scores: str = Field(contract.TOPIC_SCORES, description="output topic of scores")
    topic_incidents: str = Field(contract.TOPIC_INCIDENTS, description="output topic of incidents")
    topic_predictions: str = Field(contract.TOPIC_PREDICTIONS, description="output topic of cell predictions")
    publish_outputs: bool = Field(True, description="also publish scores/incidents/predictions to the output topics")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new consumer group starts reading")
    max_poll_interval_ms: int = Field(600_000, gt=0, description="kafka max.poll.interval.ms")
    session_timeout_ms: int = Field(10_000, gt=0, description="kafka session.timeout.ms (failure detection)")
    heartbeat_interval_ms: int = Field(3_000, gt=0, description="kafka heartbeat.interval.ms")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="kafka security_protocol")
    kafka_sasl_mechanism: str | None = Field(None, description="kafka sasl_mechanism (PLAIN, SCRAM-SHA-256, ...)")
    kafka_sasl_username: str | None = Field(None, description="kafka sasl_plain_username")
    kafka_sasl_password: SecretStr | None = Field(None, description="kafka sasl_plain_password (secret)")
    kafka_ssl_cafile: str | None = Field(None, description="CA file for kafka TLS")
    kafka_ssl_certfile: str | None = Field(None, description="client certificate for kafka TLS")
    kafka_ssl_keyfile: str | None = Field(None, description="client key for kafka TLS")

    # micro-batches
    batch_max_records: int = Field(2000, gt=0, description="a micro-batch holds at most this many records")
    batch_max_ms: int = Field(100, gt=0, description="... and waits at most this long for them (ms); a batch "
                              "closes earlier once the client's buffered records are drained")
    align_partitions_s: float = Field(300.0, ge=0, description="backlog replay in event time: a readings partition "
                                      "whose newest reading is this far (s) ahead of the slowest partition with a "
                                      "backlog is paused until it catches up (confluent client only; 0 = off)")
    write_overlap: bool = Field(True, description="write/publish/commit batch N in a writer thread while batch N+1 "
                                "is polled and scored (offsets still committed only after the store and every ack)")

    # result store
    database_url: str = Field("postgresql://cellwatch@127.0.0.1:55432/cellwatch",
                              description="result store: postgresql://user@host:port/db or sqlite:///path.db")
    database_schema: str | None = Field(None, description="PostgreSQL schema (search_path) for the tables")
    database_password: SecretStr | None = Field(None, description="PostgreSQL password (secret)")
    db_retry_initial_s: float = Field(0.5, gt=0, description="first wait before retrying an unreachable store (s)")
    db_retry_max_s: float = Field(30.0, gt=0, description="longest wait between store retries (s)")

    # models
    models_dir: Path = Field(Path("models"), description="model registry directory (cellwatch train --models)")
    model_check_s: float = Field(5.0, ge=0, description="how often to look for a newly promoted model (s)")

    # observability
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics port (0 = off)")
    log_json: bool = Field(False, description="log one JSON object per line")
    log_level: str = Field("INFO", description="log level")
    worker_id: str = Field(default_factory=_default_worker, description="name of this worker in pipeline_stats")

    # Grafana (used by the dashboards sync)
    grafana_url: str = Field("http://127.0.0.1:3000", description="Grafana base URL")
    grafana_token: SecretStr | None = Field(None, description="Grafana service-account token (secret)")

    def __repr_args__(self):
        for k, v in super().__repr_args__():
            yield k, (redact(v) if isinstance(v, str) else v)

    def database_dsn(self) -> str:
        """The database URL with the password (if configured separately) put in. Never log this."""
        url = self.database_url
        if self.database_password is None or not url.startswith(("postgresql://", "postgres://")):
            return url
        parts = urlsplit(url)
        if parts.password is not None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user, safe='')}:{quote(self.database_password.get_secret_value(), safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))

    def kafka_security(self) -> dict[str, Any]:
        """kafka-python keyword arguments for security (only the ones that are set)."""
        out: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        optional = {"sasl_mechanism": self.kafka_sasl_mechanism, "sasl_plain_username": self.kafka_sasl_username,
                    "sasl_plain_password": (self.kafka_sasl_password.get_secret_value()
                                            if self.kafka_sasl_password else None),
                    "ssl_cafile": self.kafka_ssl_cafile, "ssl_certfile": self.kafka_ssl_certfile,
                    "ssl_keyfile": self.kafka_ssl_keyfile}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka.split(",") if s.strip()]


FIELDS = Settings.model_fields
SECRETS = tuple(n for n, f in FIELDS.items() if f.annotation in (SecretStr, SecretStr | None))


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


# ------------------------------------------------------------------------------------------- sources

def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file: flat ``name = value`` pairs."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CellwatchError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if p.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise CellwatchError(f"config file {p} is not valid: {exc}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise CellwatchError(f"config file {p} must hold name = value pairs")
    if isinstance(data.get("cellwatch"), dict):  # an optional [cellwatch] table
        data = data["cellwatch"]
    unknown = sorted(set(data) - set(FIELDS) - {f"{s}_file" for s in SECRETS})
    if unknown:
        raise CellwatchError(f"config file {p}: unknown setting(s) {', '.join(unknown)}")
    plain_secrets = sorted(set(data) & set(SECRETS))
    if plain_secrets:
        raise CellwatchError(f"config file {p}: put secrets in the environment or in a file named by "
                             f"{plain_secrets[0]}_file, not in the config file")
    return data


def _read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise CellwatchError(f"cannot read {what} from {path}: {exc.strerror}") from None


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``CELLWATCH_<NAME>`` variables (secrets also from ``CELLWATCH_<NAME>_FILE``)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if env_name(name) in environ:
            out[name] = environ[env_name(name)]
    for name in SECRETS:
        file_var = env_name(name) + "_FILE"
        if name not in out and file_var in environ:
            out[name] = _read_secret_file(environ[file_var], name)
    return out


def _resolve_secret_files(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in SECRETS:
        path = out.pop(f"{name}_file", None)
        if path is not None:
            out[name] = _read_secret_file(path, name)
    return out


# ------------------------------------------------------------------------------------------- CLI flags

def _type_name(field: str) -> str:
    ann = FIELDS[field].annotation
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (``--config`` and ``--<secret>-file`` for secrets); help shows env var and default."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"TOML or YAML settings file (env {ENV_PREFIX}CONFIG); precedence: "
                             "file < environment < flags")
    group = parser.add_argument_group("settings (file key / environment variable / flag)")
    for name, field in FIELDS.items():
        env = env_name(name)
        if name in SECRETS:
            group.add_argument(_flag(name) + "-file", dest=f"{name}_file", metavar="FILE", default=argparse.SUPPRESS,
                               help=f"{field.description}: read from FILE (env {env} or {env}_FILE; never a flag "
                                    "value)")
            continue
        default = "<hostname>-<pid>" if field.default_factory else field.default
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if field.annotation is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["metavar"] = name.split("_")[-1].upper()
        group.add_argument(_flag(name), help=f"{field.description} (env {env}; default: {default})", **kw)


def load_settings(args: argparse.Namespace | Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < config file < environment < flags (``args``) < ``overrides``."""
    environ = os.environ if environ is None else environ
    flags = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    flags = {k: v for k, v in flags.items() if (k in FIELDS or k == "config" or k.endswith("_file"))}
    config_path = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if config_path:
        merged.update(_resolve_secret_files(read_config_file(config_path)))
    merged.update(from_env(environ))
    merged.update(_resolve_secret_files(flags))
    merged.update(overrides)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise CellwatchError(f"setting {name} ({env_name(name)}): {first['msg']}") from None
    for name in SECRETS:
        value = getattr(settings, name)
        if value is not None:
            register_secret(value.get_secret_value())
    pw = urlsplit(settings.database_url).password
    register_secret(pw)
    return settings
