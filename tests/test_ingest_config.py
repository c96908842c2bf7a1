"""Settings precedence (defaults < file < env < flags), secrets from env/_FILE only, redaction."""

from __future__ import annotations

import argparse
import logging

import pytest

from cellwatch.config import Settings, add_arguments, load_settings
from cellwatch.errors import CellwatchError
from cellwatch.logs import JsonFormatter, RedactingFormatter, redact, register_secret


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p)
    return p.parse_args(argv)


def test_precedence_file_then_env_then_flags(tmp_path):
    cfg = tmp_path / "cw.toml"
    cfg.write_text('group_id = "from-file"\nbatch_max_records = 111\nbatch_max_ms = 222\nmetrics_port = 0\n')
    env = {"CELLWATCH_CONFIG": str(cfg), "CELLWATCH_BATCH_MAX_MS": "333", "CELLWATCH_BATCH_MAX_RECORDS": "444"}
    s = load_settings(_parse(["--batch-max-records", "555"]), env)
    assert s.group_id == "from-file"          # file only
    assert s.batch_max_ms == 333              # env beats file
    assert s.batch_max_records == 555         # flag beats env and file
    assert s.metrics_port == 0
    assert load_settings(_parse([]), {}).batch_max_records == Settings.model_fields["batch_max_records"].default


def test_yaml_file_and_bool_flag(tmp_path):
    cfg = tmp_path / "cw.yaml"
    cfg.write_text("publish_outputs: false\nkafka: 'a:1,b:2'\n")
    s = load_settings(_parse(["--config", str(cfg)]), {})
    assert s.publish_outputs is False and s.bootstrap_servers() == ["a:1", "b:2"]
    assert load_settings(_parse(["--config", str(cfg), "--publish-outputs"]), {}).publish_outputs is True


def test_bad_values_and_unknown_keys_are_clear_errors(tmp_path):
    with pytest.raises(CellwatchError, match="CELLWATCH_BATCH_MAX_RECORDS"):
        load_settings(_parse([]), {"CELLWATCH_BATCH_MAX_RECORDS": "many"})
    cfg = tmp_path / "cw.toml"
    cfg.write_text('grup_id = "typo"\n')
    with pytest.raises(CellwatchError, match="unknown setting"):
        load_settings(_parse(["--config", str(cfg)]), {})
    cfg.write_text('database_password = "inline"\n')
    with pytest.raises(CellwatchError, match="secrets"):
        load_settings(_parse(["--config", str(cfg)]), {})


def test_secrets_from_env_and_files_never_in_repr_or_logs(tmp_path, caplog):
    pw_file = tmp_path / "pw"
    pw_file.write_text("s3cr3t-db-pw\n")
    env = {"CELLWATCH_DATABASE_PASSWORD_FILE": str(pw_file), "CELLWATCH_KAFKA_SASL_PASSWORD": "kafka-pw-123",
           "CELLWATCH_DATABASE_URL": "postgresql://app@db:5432/cw", "CELLWATCH_KAFKA_SASL_USERNAME": "app",
           "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN"}
    s = load_settings(_parse([]), env)
    assert s.database_password.get_secret_value() == "s3cr3t-db-pw"
    assert s.database_dsn() == "postgresql://app:s3cr3t-db-pw@db:5432/cw"
    assert s.kafka_security() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                  "sasl_plain_username": "app", "sasl_plain_password": "kafka-pw-123"}
    text = repr(s) + str(s)
    assert "s3cr3t-db-pw" not in text and "kafka-pw-123" not in text
    # secrets are never flags: only a *-file flag exists
    with pytest.raises(SystemExit):
        _parse(["--database-password", "x"])
    # a password inside the URL is redacted in repr and logs
    s2 = load_settings(_parse(["--database-url", "postgresql://u:hunter22@h/db"]), {})
    assert "hunter22" not in repr(s2)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "connecting to %s with %s",
                               (s.database_dsn(), "kafka-pw-123"), None)
    for fmt in (RedactingFormatter("%(message)s"), JsonFormatter()):
        line = fmt.format(record)
        assert "s3cr3t-db-pw" not in line and "kafka-pw-123" not in line and "***" in line


def test_redact_urls():
    assert redact("postgresql://u:p%40ss@h:5/d and kafka") == "postgresql://u:***@h:5/d and kafka"
    assert redact("http://h/x no password") == "http://h/x no password"
    register_secret("tok-abcdef")
    assert redact("Bearer tok-abcdef") == "Bearer ***"


def test_run_help_documents_every_setting():
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p)
    help_text = p.format_help().replace("\n", " ")
    for name in Settings.model_fields:
        assert "CELLWATCH_" + name.upper() in help_text.replace(" ", "")
