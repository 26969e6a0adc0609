"""Fixtures for the deployment checks: the compose stack, Dockerfile, Prometheus rules and dashboard.

No Docker engine is needed. The external tools come from Debian packages; when one is missing the
test fails and names the package to install (CI must install them, never skip them silently).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdoct_testing.bundles import build_test_bundle, gate_images, gray_images
from kdoct_testing.postgres import create_database, drop_database
from kdoct_testing.server import free_port

_REPO_ROOT = Path(__file__).resolve().parents[2]

# Tool -> the Debian package that provides it.
DEBIAN_PACKAGES = {
    "docker-compose": "docker-compose",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "shellcheck": "shellcheck",
}

# Every metric the service declares (service/prometheus.py); dashboards and rules may use only these.
SERVICE_METRICS = {
    "kdoct_request_duration_seconds": "histogram",
    "kdoct_inference_duration_seconds": "histogram",
    "kdoct_queue_wait_seconds": "histogram",
    "kdoct_batch_size": "histogram",
    "kdoct_queue_depth": "gauge",
    "kdoct_predictions_total": "counter",
    "kdoct_feedback_total": "counter",
    "kdoct_prediction_confidence": "histogram",
    "kdoct_second_opinions_total": "counter",
    "kdoct_referrals_total": "counter",
    "kdoct_safety_gate_total": "counter",
    "kdoct_rejected_requests_total": "counter",
    "kdoct_db_write_duration_seconds": "histogram",
    "kdoct_db_write_failures_total": "counter",
    "kdoct_spool_backlog": "gauge",
    "kdoct_ingress_memory_bytes": "gauge",
    "kdoct_ingress_in_flight": "gauge",
    "kdoct_ingress_spilled_bodies_total": "counter",
    "kdoct_spool_quarantined_total": "counter",
    "kdoct_record_writer_restarts_total": "counter",
    "kdoct_auth_failures_total": "counter",
    "kdoct_model_info": "gauge",
    "kdoct_model_ready": "gauge",
    "kdoct_model_class_prior": "gauge",
    "kdoct_ood_reference_share": "gauge",
    "kdoct_ood_score_band_total": "counter",
    "kdoct_dicom_devices_total": "counter",
    "kdoct_shadow_results_total": "counter",
    "kdoct_shadow_comparisons_total": "counter",
    "kdoct_shadow_teacher_comparisons_total": "counter",
    "kdoct_shadow_gate_total": "counter",
    "kdoct_shadow_agreement_ratio": "gauge",
    "kdoct_shadow_kappa": "gauge",
    "kdoct_model_switches_total": "counter",
    "kdoct_dicom_associations_total": "counter",
    "kdoct_dicom_instances_total": "counter",
    "kdoct_dicom_series_total": "counter",
    "kdoct_dicom_exports_total": "counter",
    "kdoct_dicom_dead_letters": "gauge",
    "kdoct_dicom_store_bytes": "gauge",
    "kdoct_dicom_store_capacity_bytes": "gauge",
}

# Values for Grafana's variables when a dashboard query is sent to Prometheus directly.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "instance": ".*",
    "model": ".*",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: the deployment checks need it. "
            f"Install it with `apt-get install -y {DEBIAN_PACKAGES[name]}`."
        )
    return path


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """tool('promtool') -> its path, or a test failure naming the Debian package to install."""
    return _tool


@pytest.fixture(scope="session")
def docker_dir(repo_root: Path) -> Path:
    return repo_root / "docker"


@pytest.fixture(scope="session")
def compose_raw(repo_root: Path) -> dict[str, Any]:
    """docker-compose.yml as written (variables not yet substituted)."""
    return yaml.safe_load((repo_root / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def compose_config(repo_root: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it with .env.example and every profile enabled."""
    result = subprocess.run(
        [
            _tool("docker-compose"),
            "--env-file", str(repo_root / ".env.example"),
            "--project-directory", str(repo_root),
            "-f", str(repo_root / "docker-compose.yml"),
            "--profile", "cpu", "--profile", "gpu", "--profile", "train", "--profile", "admin",
            "--profile", "dicom",
            "config",
        ],
        capture_output=True, text=True, timeout=60, env=_clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _clean_env() -> dict[str, str]:
    """The process environment without the variables .env.example sets, so only the env file decides."""
    names = set(env_example(_REPO_ROOT / ".env.example"))
    return {key: value for key, value in os.environ.items() if key not in names}


def env_example(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def dashboard(docker_dir: Path) -> dict[str, Any]:
    return json.loads((docker_dir / "grafana" / "dashboards" / "kdoct.json").read_text())


def substitute_grafana_variables(expr: str) -> str:
    """Replace $var and ${var} (and ${var:format}) with the values Prometheus should see."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"dashboard uses Grafana variable ${name}, unknown to the deploy tests: add it")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL with variables substituted) for every panel target."""
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["refId"], substitute_grafana_variables(target["expr"])))
    return queries


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including those inside collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


@pytest.fixture(scope="session")
def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    return panel_queries(dashboard)


@pytest.fixture(scope="session")
def alert_rules(docker_dir: Path) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of docker/prometheus/alerts.yml."""
    groups = yaml.safe_load((docker_dir / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="session")
def service_metrics() -> dict[str, str]:
    """Metric name -> type, for every metric the service declares."""
    return dict(SERVICE_METRICS)


@pytest.fixture(scope="session")
def env_example_values(repo_root: Path) -> dict[str, str]:
    return env_example(repo_root / ".env.example")


@pytest.fixture(scope="session")
def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return iter_panels(dashboard)


@pytest.fixture(scope="session")
def grafana_substitute() -> Callable[[str], str]:
    return substitute_grafana_variables


# ---- the live stack (tests/deploy/test_live_stack.py)

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def port_factory() -> Callable[[], int]:
    return free_port


@pytest.fixture(scope="session")
def live_bundles(
    tmp_path_factory: pytest.TempPathFactory, sample_jpegs: dict[str, list[Path]]
) -> dict[str, Path]:
    """A tiny real student and teacher (timm test models, random weights) exported as full bundles."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("deploy-bundles")
    golden = gray_images([sample_jpegs["CNV"][0], sample_jpegs["NORMAL"][0]])
    bundles = {}
    fitting = gate_images(sample_jpegs["CNV"][0].parents[1])
    for role, arch, seed in (("student", "test_efficientnet", 3), ("teacher", "test_convnext", 5)):
        bundles[role] = root / role
        gate = fitting if role == "student" else None
        build_test_bundle(bundles[role], arch, (64, 64), role, golden, seed, name=f"deploy-{role}", gate=gate)
    # A candidate shadowing the student (docs/LIFECYCLE.md): the dashboard's lifecycle row has data.
    bundles["candidate"] = root / "candidate"
    build_test_bundle(
        bundles["candidate"], "test_efficientnet", (64, 64), "student", golden, 13, name="deploy-student",
        version="0.0.2", gate=fitting,
    )  # fmt: skip
    return bundles


@pytest.fixture(scope="session")
def throwaway_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    try:
        name, url = create_database(POSTGRES_ADMIN_URL, prefix="kdoct_deploy_")
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({error}): the live deploy test needs it")
    yield url
    drop_database(name, POSTGRES_ADMIN_URL)


@pytest.fixture(scope="module")
def runtime_database_url(throwaway_database: str) -> Iterator[str]:
    """throwaway_database as the API's runtime login role sees it, created as
    docker/postgres/10-kdoct-runtime-role.sh does (a member of kdoct_runtime; trust auth here)."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    role = f"kdoct_app_{uuid.uuid4().hex[:8]}"
    admin_url = throwaway_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kdoct_runtime') "
            "THEN CREATE ROLE kdoct_runtime NOLOGIN; END IF; END $$"
        )
        admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE kdoct_runtime')
    yield make_url(throwaway_database).set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
