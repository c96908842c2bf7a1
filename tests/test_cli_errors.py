"""Every subcommand given bad files or arguments: one clear error line on stderr, a non-zero exit, no traceback.

The CLI runs as a subprocess (what a user sees). Cases run 4 at a time in one module fixture to keep the file
short on the shared machine; each case is still its own test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED = _closed_port()
DEAD_KAFKA = f"127.0.0.1:{CLOSED}"
DEAD_DB = f"postgresql://cellwatch:hunter2secret@127.0.0.1:{CLOSED}/cellwatch"


def _files(root: Path) -> dict[str, str]:
    """Bad input files of every kind, made once."""
    root.mkdir(parents=True, exist_ok=True)
    f = {}
    (root / "empty.csv").write_text("")
    f["empty_csv"] = str(root / "empty.csv")
    (root / "header_only.csv").write_text("ts,line,station,temp\n")
    f["header_only_csv"] = str(root / "header_only.csv")
    (root / "no_ts.csv").write_text("line,station,temp\nL1,coating,1.0\nL1,coating,2.0\n")
    f["no_ts_csv"] = str(root / "no_ts.csv")
    (root / "bad_types.csv").write_text("ts,line,station,temp\nyesterday,L1,coating,hot\nnever,L1,coating,cold\n")
    f["bad_types_csv"] = str(root / "bad_types.csv")
    (root / "text_only.csv").write_text("ts,name\n2026-01-01T00:00:00Z,a\n2026-01-01T00:00:01Z,b\n")
    f["text_only_csv"] = str(root / "text_only.csv")
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    f["garbage_parquet"] = str(root / "garbage.parquet")
    ok = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=50, freq="s", tz="UTC").astype(str),
                       "line": "L1", "station": "coating", "temp": range(50)})
    ok.to_csv(root / "ok.csv", index=False)
    f["ok_csv"] = str(root / "ok.csv")
    empty_dir = root / "empty_dir"
    empty_dir.mkdir(exist_ok=True)
    f["empty_dir"] = str(empty_dir)
    bad_data = root / "bad_data"
    bad_data.mkdir(exist_ok=True)
    pd.DataFrame({"x": [1, 2]}).to_parquet(bad_data / "readings.parquet")
    pd.DataFrame({"y": [1]}).to_parquet(bad_data / "cells.parquet")
    f["bad_data"] = str(bad_data)
    (root / "token").write_text("glsa_topsecrettoken_123\n")
    f["token"] = str(root / "token")
    (root / "unknown.toml").write_text('no_such_setting = 1\n')
    f["unknown_toml"] = str(root / "unknown.toml")
    (root / "secret.toml").write_text('database_password = "hunter2secret"\n')
    f["secret_toml"] = str(root / "secret.toml")
    (root / "broken.toml").write_text('kafka = "unterminated\n')
    f["broken_toml"] = str(root / "broken.toml")
    f["missing"] = str(root / "does-not-exist.csv")
    f["missing_dir"] = str(root / "no-such-dir")
    f["out"] = str(root / "out")
    (root / "out").mkdir(exist_ok=True)
    return f


#: (id, argv, extra env). Every case must fail with one error line and no traceback.
CASES: list = [
    ("simulate-bad-hours", ["simulate", "--out", "{out}/s1", "--hours", "abc"], {}),
    ("simulate-negative-hours", ["simulate", "--out", "{out}/s2", "--hours", "-1"], {}),
    ("simulate-unknown-fault", ["simulate", "--out", "{out}/s3", "--hours", "0.05", "--faults", "gremlins"], {}),
    ("simulate-dead-kafka", ["simulate", "--hours", "0.02", "--kafka", DEAD_KAFKA], {}),
    ("replay-missing-file", ["replay", "--input", "{missing}", "--kafka", DEAD_KAFKA], {}),
    ("replay-empty-file", ["replay", "--input", "{empty_csv}", "--kafka", DEAD_KAFKA], {}),
    ("replay-header-only", ["replay", "--input", "{header_only_csv}", "--kafka", DEAD_KAFKA], {}),
    ("replay-missing-ts-column", ["replay", "--input", "{no_ts_csv}", "--kafka", DEAD_KAFKA], {}),
    ("replay-wrong-types", ["replay", "--input", "{bad_types_csv}", "--kafka", DEAD_KAFKA], {}),
    ("replay-garbage-parquet", ["replay", "--input", "{garbage_parquet}", "--kafka", DEAD_KAFKA], {}),
    ("replay-dead-kafka", ["replay", "--input", "{ok_csv}", "--kafka", DEAD_KAFKA], {}),
    ("run-unknown-models", ["run", "--models-dir", "{missing_dir}", "--metrics-port", "0",
                            "--database-url", "sqlite:///{out}/run1.db"], {"CELLWATCH_KAFKA": DEAD_KAFKA}),
    ("run-unopenable-sqlite", ["run", "--models-dir", "{models}", "--metrics-port", "0",
                               "--database-url", "sqlite:///{missing_dir}/x.db"], {}),
    ("run-bad-int", ["run", "--batch-max-records", "lots"], {}),
    ("run-bad-url", ["run", "--database-url", "mysql://x@y/z", "--metrics-port", "0"], {}),
    ("run-missing-config", ["run", "--config", "{missing}"], {}),
    ("run-unknown-config-key", ["run", "--config", "{unknown_toml}"], {}),
    ("run-secret-in-config", ["run", "--config", "{secret_toml}"], {}),
    ("run-broken-config", ["run", "--config", "{broken_toml}"], {}),
    ("run-missing-secret-file", ["run"], {"CELLWATCH_DATABASE_PASSWORD_FILE": "{missing}"}),
    ("run-dead-kafka", ["run", "--models-dir", "{models}", "--metrics-port", "0",
                        "--database-url", "sqlite:///{out}/run2.db"], {"CELLWATCH_KAFKA": DEAD_KAFKA}),
    ("train-missing-data", ["train", "--data", "{missing_dir}", "--models", "{out}/m1"], {}),
    ("train-empty-data", ["train", "--data", "{empty_dir}", "--models", "{out}/m2"], {}),
    ("train-missing-columns", ["train", "--data", "{bad_data}", "--models", "{out}/m3"], {}),
    ("evaluate-missing-models", ["evaluate", "--data", "{bad_data}", "--models", "{missing_dir}",
                                 "--report", "{out}/r1"], {}),
    ("evaluate-missing-data", ["evaluate", "--data", "{missing_dir}", "--models", "{models}",
                               "--report", "{out}/r2"], {}),
    ("models-list-missing", ["models", "list", "--models", "{missing_dir}", "stations"], {}),
    ("models-promote-unknown", ["models", "promote", "--models", "{models}", "stations", "99"], {}),
    ("models-rollback-none", ["models", "rollback", "--models", "{models}", "stations"], {}),
    ("fit-missing-file", ["fit", "--input", "{missing}", "--out", "{out}/f1"], {}),
    ("fit-empty-file", ["fit", "--input", "{empty_csv}", "--out", "{out}/f2"], {}),
    ("fit-no-numeric-columns", ["fit", "--input", "{text_only_csv}", "--out", "{out}/f3"], {}),
    ("score-unknown-model", ["score", "--model", "{missing}", "--input", "{ok_csv}", "--out", "{out}/s.csv"], {}),
    ("benchmark-missing-data", ["benchmark", "skab", "--data", "{missing_dir}", "--report", "{out}/b1"], {}),
    ("benchmark-unknown", ["benchmark", "mnist", "--report", "{out}/b2"], {}),
    ("grafana-sync-dead", ["grafana", "sync", "--url", f"http://127.0.0.1:{CLOSED}", "--token-file", "{token}",
                           "--retries", "1", "--timeout", "2"], {}),
    ("grafana-sync-missing-token", ["grafana", "sync", "--url", f"http://127.0.0.1:{CLOSED}",
                                    "--token-file", "{missing}"], {}),
    ("demo-bad-hours", ["demo", "--hours", "soon"], {}),
    ("unknown-command", ["frobnicate"], {}),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, models_dir) -> dict[str, subprocess.CompletedProcess]:
    files = {**_files(tmp_path_factory.mktemp("cli-errors")), "models": str(models_dir)}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CELLWATCH_")}

    def one(case):
        name, argv, env = case
        args = [a.format(**files) for a in argv]
        extra = {k: v.format(**files) for k, v in env.items()}
        try:
            res = subprocess.run([sys.executable, "-m", "cellwatch.cli", *args], capture_output=True, text=True,
                                 timeout=180, env={**base_env, **extra}, cwd=files["out"].rsplit("/", 1)[0])
        except subprocess.TimeoutExpired as exc:
            res = subprocess.CompletedProcess(exc.cmd, -999, exc.stdout or "", f"TIMEOUT after 180 s: {exc.stderr}")
        return name, res

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, [getattr(c, "values", c) for c in CASES]))


def _name(case) -> str:
    return getattr(case, "values", case)[0]


@pytest.mark.parametrize("name", [pytest.param(_name(c), marks=getattr(c, "marks", ())) for c in CASES])
def test_bad_input_gives_one_clear_error_line(outcomes, name):
    res = outcomes[name]
    err = res.stderr
    assert res.returncode not in (0, -999), f"exit {res.returncode}\nstdout: {res.stdout[-500:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, f"expected one 'error:' line, got:\n{err[-3000:]}"
    assert errors[0].startswith("cellwatch"), errors[0]
    assert len(errors[0]) > len("cellwatch x: error: ") + 10, "error line without an explanation"
    assert "hunter2secret" not in err + res.stdout and "topsecrettoken" not in err + res.stdout
