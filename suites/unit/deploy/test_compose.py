"""deploy/: the production-like stack cannot run here, so its files are checked for shape and for names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from creditgate.settings import Settings

DEPLOY = Path(__file__).parents[3] / "deploy"


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(document, dict)
    return document


def test_compose_runs_the_gateway_with_workers_postgres_redis_and_prometheus() -> None:
    services = load("docker-compose.yml")["services"]
    assert set(services) == {"gateway", "postgres", "redis", "prometheus"}
    gateway = services["gateway"]
    command = gateway["command"]
    assert command[:2] == ["creditgate", "serve"]
    assert int(command[command.index("--workers") + 1]) > 1
    env = gateway["environment"]
    assert env["CREDITGATE_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["CREDITGATE_DATABASE_URL"]
    assert env["CREDITGATE_REDIS_URL"].startswith("redis://redis:")
    assert env["PROMETHEUS_MULTIPROC_DIR"]
    assert set(gateway["depends_on"]) == {"postgres", "redis"}
    assert (DEPLOY / gateway["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_every_creditgate_variable_it_sets_is_a_setting_and_validates() -> None:
    env = load("docker-compose.yml")["services"]["gateway"]["environment"]
    names = [n for n in env if n.startswith("CREDITGATE_")]
    fields = {f"CREDITGATE_{name.upper()}" for name in Settings.model_fields}
    assert names
    assert [n for n in names if n not in fields] == []
    # The literal values (not ${…} from the operator's shell) are valid settings.
    literal = {n.removeprefix("CREDITGATE_").lower(): v for n, v in env.items() if n in fields and "${" not in str(v)}
    Settings(_env_file=None, **literal)


def test_prometheus_scrapes_the_gateways_metrics_port() -> None:
    env = load("docker-compose.yml")["services"]["gateway"]["environment"]
    port = env["CREDITGATE_METRICS_PORT"]
    assert env["CREDITGATE_METRICS_HOST"] == "0.0.0.0"  # reachable from the prometheus container
    targets = [
        t for job in load("prometheus.yml")["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert targets == [f"gateway:{port}"]
    mounted = load("docker-compose.yml")["services"]["prometheus"]["volumes"][0]
    assert mounted.startswith("./prometheus.yml:")


def test_every_shell_variable_has_a_default() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert re.findall(r"\$\{[A-Z_]+\}", text) == []  # ${NAME:-default} only: compose up never fails on a missing one
