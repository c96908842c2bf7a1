"""docker-compose.yml without a Docker engine: interpolation (secrets have no defaults), the compose
specification (the `compose_spec` Rust crate via the compose-spec package; and `docker-compose config`, which
validates against the spec's JSON schema, where that CLI is installed), pinned images, and the files it mounts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECRETS = ("GF_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_DB_PASSWORD")
ENV = {"GF_ADMIN_PASSWORD": "admin-pw", "POSTGRES_PASSWORD": "pg-pw", "GRAFANA_DB_PASSWORD": "reader-pw",
       "CELLWATCH_ALERT_WEBHOOK_URL": "http://hooks.example/cellwatch"}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``/``${VAR?error}`` (a missing required variable is an error naming it)."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        return value or ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}", one, text)


def _doc(env: dict[str, str] = ENV) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(encoding="utf-8"), env))


def test_every_secret_is_required_and_has_no_default():
    text = COMPOSE.read_text(encoding="utf-8")
    for name in SECRETS:
        assert re.search(r"\$\{" + name + r":\?", text), f"{name} must be ${{{name}:?...}}"
        assert not re.search(r"\$\{" + name + r":?-", text), f"{name} must not have a default"
        with pytest.raises(KeyError, match=name):
            _doc({k: v for k, v in ENV.items() if k != name})
    doc = _doc()
    assert doc["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin-pw"


def test_conforms_to_the_compose_specification():
    from compose_spec import PyCompose

    doc = _doc()  # YAML merge keys resolved, as every compose implementation does
    compose = PyCompose.from_yaml(yaml.safe_dump(doc, sort_keys=False))
    assert set(compose.service_names()) == {"kafka", "postgres", "cellwatch-train", "simulator", "cellwatch-run",
                                            "prometheus", "grafana"}
    broken = {**doc, "services": {**doc["services"], "grafana": {**doc["services"]["grafana"], "ports": [{"x": 1}]}}}
    with pytest.raises(ValueError):
        PyCompose.from_yaml(yaml.safe_dump(broken))


@pytest.mark.skipif(shutil.which("docker-compose") is None and shutil.which("docker") is None,
                    reason="no docker-compose / docker CLI installed")
def test_compose_cli_accepts_it():
    """`docker-compose config` (v1, validates against compose_spec.json) or `docker compose config` (v2)."""
    cmd = ["docker-compose", "-f", str(COMPOSE), "config", "-q"] if shutil.which("docker-compose") else \
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    probe = subprocess.run([*cmd[:2], "version"] if cmd[0] == "docker" else [cmd[0], "version"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{' '.join(cmd[:2])} not usable here: {probe.stderr.strip()[:100]}")
    ok = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env={k: v for k, v in {**os.environ, **ENV}.items() if k != "GF_ADMIN_PASSWORD"})
    assert missing.returncode != 0 and "GF_ADMIN_PASSWORD" in missing.stderr


def test_images_are_pinned_and_grafana_is_recent():
    services = _doc()["services"]
    for name, svc in services.items():
        if "image" in svc and "build" not in svc:
            _, _, tag = svc["image"].partition(":")
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: pin {svc['image']}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    major, minor = map(int, services["grafana"]["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (11, 4)


def test_grafana_gets_the_generated_provisioning_and_prometheus_scrapes_the_service():
    services = _doc()["services"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"] if m.startswith("./")}
    for target in ("/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards",
                   "/etc/grafana/provisioning/alerting", "/var/lib/grafana/dashboards/cellwatch"):
        source = ROOT / mounts[target]
        assert source.is_dir() and any(source.iterdir()), target
    env = services["grafana"]["environment"]
    provisioned = " ".join(p.read_text() for p in (ROOT / "dashboards" / "provisioning").rglob("*.yaml"))
    for var in set(re.findall(r"\$__env\{(\w+)\}", provisioned)):
        assert var in env, f"Grafana container lacks {var}, read by the provisioning files"
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    port = services["cellwatch-run"]["environment"]["CELLWATCH_METRICS_PORT"]
    assert f"cellwatch-run:{port}" in targets
    assert all((ROOT / v.split(":")[0]).exists() for s in services.values() for v in s.get("volumes", [])
               if isinstance(v, str) and v.startswith("./"))
    assert (ROOT / services["cellwatch-run"]["build"]["dockerfile"]).is_file()
