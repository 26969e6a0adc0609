"""The monitoring stack against the real service: docker/entrypoint.sh starts uvicorn (2 workers, a
throwaway PostgreSQL database), a real Prometheus scrapes it with the repository's config and alert
rules, and after real traffic every dashboard query returns data and every rule evaluates cleanly.

Only what cannot run here is swapped: the compose DNS discovery becomes a static target, intervals
shrink to 1 s, and Grafana's variables get fixed values (conftest.GRAFANA_VARIABLES).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]

STARTUP_TIMEOUT_S = 90
SCRAPE_INTERVAL = "1s"


@dataclass(frozen=True)
class LiveService:
    url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_until(predicate, timeout_s: float, what: str, on_timeout=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{on_timeout()}")


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def service_env(
    live_bundles, throwaway_database, runtime_database_url, repo_root: Path, tmp_path_factory, compose_config
) -> dict[str, str]:
    """The API container's environment, as docker-compose.yml gives it (with local paths and URLs)."""
    work = tmp_path_factory.mktemp("deploy-service")
    # A previous run's metric file: the entrypoint must wipe it, or /metrics would sum it in.
    (work / "metrics").mkdir()
    (work / "metrics" / "counter_999999.db").write_bytes(b"stale")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KDOCT_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        # `python` and `alembic` of this virtual environment, as on the image's PATH.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        # The checkout's code, as the image has it installed (an editable install elsewhere must not win).
        PYTHONPATH=str(repo_root),
        # As in docker-compose.yml: the server as the read-and-append role (refusing anything more
        # privileged); migrations and the CLI as the owner, in containers of their own (owner_env).
        KDOCT_DATABASE_URL=runtime_database_url,
        KDOCT_DB_ROLE_CHECK="refuse",
        KDOCT_STUDENT_BUNDLE=str(live_bundles["student"]),
        KDOCT_TEACHER_BUNDLE=str(live_bundles["teacher"]),
        KDOCT_SHADOW_BUNDLE=str(live_bundles["candidate"]),
        KDOCT_SECOND_OPINION="",  # as compose passes an unset choice: the entrypoint must drop it
        KDOCT_AUTH="enabled",
        KDOCT_HOST="127.0.0.1",
        KDOCT_WORKERS="2",
        KDOCT_INFERENCE_THREADS="1",
        KDOCT_DECODE_THREADS="1",
        KDOCT_SPOOL_DIR=str(work / "spool"),
        KDOCT_DB_WAIT_SECONDS="20",
        KDOCT_ALEMBIC_CONFIG=str(repo_root / "alembic.ini"),
        PROMETHEUS_MULTIPROC_DIR=str(work / "metrics"),
        WORK_DIR=str(work),
    )
    if "KDOCT_MIGRATION_DATABASE_URL" in compose_config["services"]["api"]["environment"]:
        env["KDOCT_MIGRATION_DATABASE_URL"] = throwaway_database  # what the API container would hold
    return env


@pytest.fixture(scope="module")
def owner_env(service_env: dict[str, str], throwaway_database: str, compose_config) -> dict[str, str]:
    """The environment of the container that migrates as the owner (compose's one-shot `migrate`
    service; before it existed, the API container itself): the owner's URL, no server settings."""
    services = compose_config["services"]
    migrating = services.get("migrate", services["api"])
    assert "KDOCT_MIGRATION_DATABASE_URL" in migrating["environment"]
    env = {k: v for k, v in service_env.items() if not k.startswith("KDOCT_")}
    env.update(
        KDOCT_MIGRATION_DATABASE_URL=throwaway_database,
        KDOCT_DB_WAIT_SECONDS=service_env["KDOCT_DB_WAIT_SECONDS"],
        KDOCT_ALEMBIC_CONFIG=service_env["KDOCT_ALEMBIC_CONFIG"],
    )
    return env


@pytest.fixture(scope="module")
def live_service(
    service_env: dict[str, str], owner_env: dict[str, str], docker_dir: Path, port_factory
) -> Iterator[LiveService]:
    entrypoint = str(docker_dir / "entrypoint.sh")
    work = Path(service_env["WORK_DIR"])
    # compose's `migrate` service: wait for the database and migrate as the owner, then exit.
    migrated = subprocess.run(
        ["sh", entrypoint, "migrate"], env=owner_env, cwd=work, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, f"entrypoint migrate failed:\n{migrated.stderr[-3000:]}"
    # compose's `admin` service, the entrypoint's CLI path: create a key (printed once).
    created = subprocess.run(
        ["sh", entrypoint, "apikey", "create", "deploy-test", "--scopes", "classify", "read", "feedback"],
        env=owner_env, cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert created.returncode == 0, f"entrypoint apikey create failed:\n{created.stderr[-3000:]}"
    api_key = created.stdout.strip().splitlines()[-1]

    port = port_factory()
    log_path = work / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", entrypoint, "serve"], env={**service_env, "KDOCT_PORT": str(port)}, cwd=work,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    service = LiveService(f"http://127.0.0.1:{port}", api_key, process, log_path)
    try:
        _wait_until(
            lambda: process.poll() is not None or _get_ok(f"{service.url}/health/ready"),
            STARTUP_TIMEOUT_S, "the service to become ready", service.log_tail,
        )  # fmt: skip
        assert process.poll() is None, f"the service exited with {process.returncode}:\n{service.log_tail()}"
        yield service
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # only reached when a test failed before the SIGTERM test
            process.wait(10)


@pytest.fixture(scope="module")
def prometheus(
    live_service: LiveService, docker_dir: Path, tool, port_factory, tmp_path_factory
) -> Iterator[str]:
    """A real Prometheus with the repository's config and rules, aimed at the live service."""
    work = tmp_path_factory.mktemp("deploy-prometheus")
    port = port_factory()
    rules = yaml.safe_load((docker_dir / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = SCRAPE_INTERVAL
    (work / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))

    config = yaml.safe_load((docker_dir / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL, scrape_timeout="1s"
    )
    config["rule_files"] = [str(work / "alerts.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "dns_sd_configs" in jobs["kdoct-api"], "the compose config discovers API replicas through DNS"
    del jobs["kdoct-api"]["dns_sd_configs"]
    api_target = live_service.url.removeprefix("http://")
    jobs["kdoct-api"].update(static_configs=[{"targets": [api_target]}], scrape_interval=SCRAPE_INTERVAL)
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(
            lambda: process.poll() is not None or _get_ok(f"{url}/-/ready"), 30, "Prometheus",
            lambda: log_path.read_text(errors="replace")[-3000:],
        )  # fmt: skip
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}\n-> {body}"
    assert body["data"]["resultType"] == "vector", expr
    return body["data"]["result"]


def _scalar(prometheus_url: str, expr: str) -> float:
    result = _query(prometheus_url, expr)
    return float(result[0]["value"][1]) if result else 0.0


def _send_traffic(service: LiveService, jpegs: list[Path]) -> int:
    """Real uploads, a second opinion, a rejected upload, a call without a key; returns predictions made."""
    auth = {"Authorization": f"Bearer {service.api_key}"}
    with httpx.Client(base_url=service.url, timeout=30) as client:
        predictions = 0
        for index, path in enumerate(jpegs):
            params = {"second_opinion": "always"} if index == 0 else {}
            files = {"file": (path.name, path.read_bytes(), "image/jpeg")}
            response = client.post("/classify", files=files, params=params, headers=auth)
            assert response.status_code == 200, response.text
            if index == 0:
                assert response.json()["second_opinion"] is not None
            predictions += 1
            truth = path.parent.name.lower()
            if truth in ("cnv", "drusen", "normal"):  # a clinician's label: the real-world row's data
                _feedback(client, auth, response.json()["prediction_id"], truth)
        garbage = client.post(
            "/classify", files={"file": ("x.jpeg", b"not an image", "image/jpeg")}, headers=auth
        )
        assert garbage.status_code == 415, garbage.text
        anonymous = client.post("/classify", files={"file": ("x.jpeg", jpegs[0].read_bytes(), "image/jpeg")})
        assert anonymous.status_code == 401, anonymous.text
        assert client.get("/models", headers=auth).status_code == 200
    return predictions


def _feedback(client: httpx.Client, auth: dict[str, str], prediction_id: str, label: str) -> None:
    # Another worker may not have inserted the record yet (docs/API.md): retry for a moment.
    deadline = time.monotonic() + 5
    while True:
        response = client.post(f"/predictions/{prediction_id}/feedback", json={"label": label}, headers=auth)
        if response.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def scraped_traffic(live_service: LiveService, prometheus: str, sample_jpegs) -> str:
    """Two rounds of traffic, each seen by Prometheus: counters created in round one then grow, so
    rates and quantiles over the window are real numbers, not 0 or NaN."""
    jpegs = [sample_jpegs[name][0] for name in ("CNV", "DRUSEN", "NORMAL", "DME")]
    expected = 0
    for _ in range(2):
        expected += _send_traffic(live_service, jpegs)
        _wait_until(
            lambda n=expected: _scalar(prometheus, "sum(kdoct_predictions_total)") == n, 30,
            f"Prometheus to scrape {expected} predictions",
            lambda: str(_query(prometheus, "up")),
        )  # fmt: skip
        time.sleep(2)  # a few more scrapes and rule evaluations after the counters moved
    return prometheus


def test_prometheus_scrapes_the_service_through_the_repository_config(
    scraped_traffic: str, service_env: dict[str, str]
) -> None:
    assert not (Path(service_env["PROMETHEUS_MULTIPROC_DIR"]) / "counter_999999.db").exists()
    up = _query(scraped_traffic, 'up{job="kdoct-api"}')
    assert [sample["value"][1] for sample in up] == ["1"]
    # Two workers answered together: the multiprocess registry sums them, nothing is lost. The
    # random-weight student is unsure of every scan, so the default policy (auto: the entrypoint
    # dropped the empty KDOCT_SECOND_OPINION) asked the teacher for all 8 predictions.
    assert _scalar(scraped_traffic, "sum(kdoct_predictions_total)") == 8
    assert _scalar(scraped_traffic, 'sum(kdoct_second_opinions_total{outcome=~"agree|disagree"})') == 8
    assert _scalar(scraped_traffic, 'sum(kdoct_auth_failures_total{reason="missing"})') == 2


def test_every_dashboard_query_returns_data(scraped_traffic: str, dashboard_queries) -> None:
    empty, failed = [], []
    for title, ref, expr in dashboard_queries:
        result = _query(scraped_traffic, expr)
        values = [float(sample["value"][1]) for sample in result]
        if not values:
            empty.append(f"{title} [{ref}]: {expr}")
        elif not any(math.isfinite(value) for value in values):
            failed.append(f"{title} [{ref}] only NaN/Inf: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert not failed, "\n".join(failed)


def test_every_rule_evaluates_without_error(scraped_traffic: str, alert_rules: list[dict[str, Any]]) -> None:
    for rule in alert_rules:
        _query(scraped_traffic, rule["expr"])  # asserts Prometheus accepted and evaluated it
    groups = httpx.get(f"{scraped_traffic}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {rule.get("alert") or rule["record"] for rule in alert_rules}
    assert set(loaded) == expected
    unhealthy = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
    assert not unhealthy, unhealthy
    # The service is healthy: these must not even be pending. (The latency alerts are left out: on a
    # busy 2-core machine a /classify answer may really take longer than 0.5 s.)
    healthy_alerts = {
        "KdoctApiDown",
        "KdoctHighErrorRate",
        "KdoctModelNotReady",
        "KdoctDatabaseWritesFailing",
        "KdoctSpoolBacklogGrowing",
    }
    active = [name for name in healthy_alerts if loaded[name].get("state") != "inactive"]
    assert not active, active
    # The SLO recording rules see the traffic.
    slow_ratio = _query(scraped_traffic, "kdoct:classify_slow_ratio:rate5m")
    assert slow_ratio, "the SLO recording rule has no data"
    assert 0.0 <= float(slow_ratio[0]["value"][1]) <= 1.0


def test_image_healthcheck_passes_against_the_live_service(
    live_service: LiveService, docker_dir: Path
) -> None:
    command = [sys.executable, str(docker_dir / "healthcheck.py"), f"{live_service.url}/health/live"]
    assert subprocess.run(command, timeout=20).returncode == 0


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (uvicorn's workers, multiprocessing's helpers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def test_no_process_of_the_api_holds_the_owners_credentials(
    live_service: LiveService, service_env: dict[str, str], throwaway_database: str
) -> None:
    """Issue 23, case 5: `entrypoint.sh serve` with 2 workers had the owner's URL and password in
    /proc/<pid>/environ of the master and both workers. Started the way the API container starts
    (service_env mirrors docker-compose.yml), no process of it may hold them."""
    owner_forms = {
        throwaway_database,
        throwaway_database.replace("postgresql+psycopg://", "postgresql://", 1),
    }
    processes = _descendants(live_service.process.pid)
    servers = []
    for pid in processes:
        try:
            entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        environ = dict(entry.decode(errors="replace").partition("=")[::2] for entry in entries if entry)
        holds_owner_variable = "KDOCT_MIGRATION_DATABASE_URL" in environ  # (not the dict: no URLs in output)
        assert not holds_owner_variable, f"process {pid} holds KDOCT_MIGRATION_DATABASE_URL"
        leaked = [name for name, value in environ.items() if any(form in value for form in owner_forms)]
        assert not leaked, f"process {pid}: {leaked} hold the owner's URL"
        if environ.get("KDOCT_DATABASE_URL") == service_env["KDOCT_DATABASE_URL"]:
            servers.append(pid)
    assert len(servers) >= 3, f"expected the master and 2 workers among {processes}, found {servers}"


def test_sigterm_reaches_uvicorn_and_it_exits_cleanly(live_service: LiveService) -> None:
    """The entrypoint execs: the process the container runtime signals is uvicorn itself."""
    command_line = Path(f"/proc/{live_service.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"service" in command_line and b"serve" in command_line, command_line
    live_service.process.send_signal(signal.SIGTERM)
    try:
        returncode = live_service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"uvicorn did not stop within 30 s of SIGTERM:\n{live_service.log_tail()}")
    assert returncode == 0, live_service.log_tail()
