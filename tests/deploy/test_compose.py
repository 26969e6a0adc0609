"""docker-compose.yml parses, references only files that exist, and wires the stack as documented: the
API containers hold only the runtime role's credentials, a one-shot service migrates as the owner."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

EXPECTED_SERVICES = {
    "api", "api-gpu", "dicom", "train", "postgres", "prometheus", "grafana", "migrate", "admin"
}  # fmt: skip
API_SERVICES = ("api", "api-gpu")
# The long-running servers that write records: the APIs and the DICOM node.
SERVERS = (*API_SERVICES, "dicom")
# Services that may hold the tables' owner's password: the database itself, the one-shot migration
# and the operators' CLI (docs/SECURITY.md, issue 23 case 5).
OWNER_HOLDERS = {"postgres", "migrate", "admin"}


def _bind_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [volume for volume in service.get("volumes", []) if _volume(volume)["type"] == "bind"]


def _volume(volume: str | dict[str, Any]) -> dict[str, Any]:
    """docker-compose v1 prints short syntax `source:target[:mode]`; normalise it to the long one."""
    if isinstance(volume, dict):
        return volume
    source, target, *mode = volume.split(":")
    kind = "bind" if source.startswith(("/", ".")) else "volume"
    return {"type": kind, "source": source, "target": target, "read_only": "ro" in mode}


def _variable_sources(compose_raw: dict[str, Any]) -> set[str]:
    """Container paths whose host side comes from a variable: operator data (bundles, datasets, runs)."""
    targets = set()
    for service in compose_raw["services"].values():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("${"):
                targets.add(
                    volume.rsplit(":", 2)[1] if volume.endswith((":ro", ":rw")) else volume.rsplit(":", 1)[1]
                )
    return targets


def test_compose_resolves_every_service_with_env_example(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == EXPECTED_SERVICES


def test_compose_refuses_to_start_without_secrets(repo_root: Path, tool, tmp_path: Path) -> None:
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    result = subprocess.run(
        [tool("docker-compose"), "--env-file", str(empty_env), "--project-directory", str(repo_root),
         "-f", str(repo_root / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_every_built_and_mounted_repository_file_exists(
    compose_config: dict[str, Any], compose_raw: dict[str, Any], repo_root: Path
) -> None:
    operator_data = _variable_sources(compose_raw)
    assert operator_data == {"/bundles", "/data", "/runs"}, "only operator data may come from variables"
    checked = []
    for name, service in compose_config["services"].items():
        if "build" in service:
            context = Path(service["build"]["context"])
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            checked.append(dockerfile)
        for mount in map(_volume, _bind_mounts(service)):
            if mount["target"] in operator_data:
                continue
            source = Path(mount["source"])
            assert source.is_relative_to(repo_root), f"{name}: {source} is outside the repository"
            assert source.exists(), f"{name}: mounted {source} does not exist"
            checked.append(source)
    assert len(checked) >= 6


def test_env_example_defines_every_variable_the_compose_file_uses(
    repo_root: Path, env_example_values: dict[str, str]
) -> None:
    lines = (repo_root / "docker-compose.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    # $${VAR} is an escaped dollar for the container's shell, not a compose variable.
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert used, "no variables found: the pattern is wrong"
    missing = used - set(env_example_values)
    assert not missing, f".env.example does not document {sorted(missing)}"
    assert env_example_values["COMPOSE_PROFILES"] in {"cpu", "gpu"}


def test_api_services_mount_bundles_read_only_and_keep_the_spool(compose_config: dict[str, Any]) -> None:
    for name in SERVERS:
        service = compose_config["services"][name]
        mounts = {mount["target"]: mount for mount in map(_volume, service["volumes"])}
        assert mounts["/bundles"]["read_only"], f"{name}: bundles must be mounted read-only"
        assert mounts["/var/lib/kdoct/spool"]["type"] == "volume", f"{name}: the spool needs a named volume"
        # The audit key must survive restarts and must never sit where the database's owner can read it.
        audit = mounts["/var/lib/kdoct/audit"]
        assert audit["type"] == "volume" and not audit.get("read_only"), name
        postgres_volumes = {_volume(v)["source"] for v in compose_config["services"]["postgres"]["volumes"]}
        assert audit["source"] not in postgres_volumes, f"{name}: the audit key shares PostgreSQL's volume"
        environment = service["environment"]
        assert environment["KDOCT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert environment["KDOCT_STUDENT_BUNDLE"].startswith("/bundles/")
        assert environment["KDOCT_AUTH"] == "enabled"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_gpu_service_reserves_a_gpu_and_answers_as_api(compose_config: dict[str, Any]) -> None:
    service = compose_config["services"]["api-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert service["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert "api" in service["networks"]["default"]["aliases"]
    assert service["profiles"] == ["gpu"]
    assert compose_config["services"]["api"]["profiles"] == ["cpu"]


def test_train_profile_runs_model_training(compose_config: dict[str, Any]) -> None:
    service = compose_config["services"]["train"]
    assert service["profiles"] == ["train"]
    assert service["entrypoint"] == ["python", "-m", "model_training"]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_postgres_has_a_named_volume_and_a_healthcheck(compose_config: dict[str, Any]) -> None:
    service = compose_config["services"]["postgres"]
    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    data = [
        mount for mount in map(_volume, service["volumes"]) if mount["target"] == "/var/lib/postgresql/data"
    ]
    assert data and data[0]["type"] == "volume"
    assert "pgdata" in compose_config["volumes"]


def test_prometheus_and_grafana_are_provisioned_from_the_repository(compose_config: dict[str, Any]) -> None:
    prometheus = compose_config["services"]["prometheus"]
    flags = " ".join(prometheus["command"])
    assert "--storage.tsdb.retention.time=30d" in flags
    assert "--config.file=/etc/prometheus/prometheus.yml" in flags
    grafana = compose_config["services"]["grafana"]
    targets = {mount["target"] for mount in map(_volume, grafana["volumes"])}
    assert {"/etc/grafana/provisioning", "/etc/grafana/dashboards"} <= targets
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"], "Grafana must not keep its default password"


def _owner_url(env: dict[str, str]) -> str:
    return (
        f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{env['POSTGRES_DB']}"
    )


def test_api_containers_never_receive_the_owners_credentials(
    compose_config: dict[str, Any], env_example_values: dict[str, str], repo_root: Path
) -> None:
    """Whatever a container's environment holds is in /proc/<pid>/environ of every process in it."""
    password, owner = env_example_values["POSTGRES_PASSWORD"], env_example_values["POSTGRES_USER"]
    assert password and owner
    holders = {
        name for name, service in compose_config["services"].items() if password in yaml.safe_dump(service)
    }
    assert holders == OWNER_HOLDERS, f"the owner's password reaches {sorted(holders - OWNER_HOLDERS)}"
    for name in SERVERS:
        service = compose_config["services"][name]
        environment = service["environment"]
        assert "KDOCT_MIGRATION_DATABASE_URL" not in environment, name
        assert not [value for value in environment.values() if f"://{owner}:" in str(value)], name
        assert environment["KDOCT_DATABASE_URL"].startswith(
            f"postgresql+psycopg://{env_example_values['RUNTIME_DB_USER']}:"
        ), name
        assert environment["KDOCT_DB_ROLE_CHECK"] == "refuse", name
        # Nor by a file: no env_file, no secrets, no mount of .env or of the repository.
        assert "env_file" not in service and "secrets" not in service, name
        sources = {Path(_volume(volume)["source"]) for volume in service["volumes"]}
        assert not [source for source in sources if source.name == ".env" or source == repo_root], name


def test_a_one_shot_service_migrates_as_the_owner_before_the_api_starts(
    compose_config: dict[str, Any], env_example_values: dict[str, str]
) -> None:
    services = compose_config["services"]
    migrate = services["migrate"]
    assert migrate["command"] == [
        "migrate"
    ]  # docker/entrypoint.sh: wait for PostgreSQL, alembic upgrade head
    assert migrate["environment"]["KDOCT_MIGRATION_DATABASE_URL"] == _owner_url(env_example_values)
    assert "KDOCT_DATABASE_URL" not in migrate["environment"]
    assert migrate["restart"] == "no" and "ports" not in migrate
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Whichever API profile runs, the migration runs first, and the API only if it succeeded.
    for name in SERVERS:
        assert set(services[name]["profiles"]) <= set(migrate["profiles"]), name
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_the_operators_cli_runs_as_the_owner_in_a_service_of_its_own(
    compose_config: dict[str, Any], env_example_values: dict[str, str]
) -> None:
    admin = compose_config["services"]["admin"]
    assert admin["profiles"] == ["admin"], "run on demand only: docker compose run --rm admin ..."
    assert admin["environment"]["KDOCT_MIGRATION_DATABASE_URL"] == _owner_url(env_example_values)
    assert "ports" not in admin and admin["restart"] == "no"
    mounts = {mount["target"]: mount for mount in map(_volume, admin["volumes"])}
    # `audit verify` needs the audit key and the checkpoints; it never writes them.
    assert mounts["/var/lib/kdoct/audit"]["read_only"] and mounts["/var/lib/kdoct/audit"]["type"] == "volume"


def test_the_dicom_node_runs_from_the_api_image_with_durable_volumes_of_its_own(
    compose_config: dict[str, Any], repo_root: Path
) -> None:
    services, volumes = compose_config["services"], compose_config["volumes"]
    dicom, api = services["dicom"], services["api"]
    assert dicom["command"] == ["dicom-node"]  # docker/entrypoint.sh: serve's checks, then the node
    assert dicom["image"] == api["image"] and dicom["build"] == api["build"]
    assert dicom["profiles"] == ["dicom"]
    for same in ("restart", "stop_grace_period", "security_opt", "cap_drop", "tmpfs"):
        assert dicom[same] == api[same], same
    environment = dicom["environment"]
    assert environment["KDOCT_DICOM_HOST"] == "0.0.0.0"
    assert environment["KDOCT_STUDENT_BUNDLE"] == api["environment"]["KDOCT_STUDENT_BUNDLE"]
    mounts = {mount["target"]: mount for mount in map(_volume, dicom["volumes"])}
    api_mounts = {mount["target"]: mount for mount in map(_volume, api["volumes"])}
    # Its own spool (each process replays only what it journalled), the API's audit key.
    assert mounts["/var/lib/kdoct/spool"]["source"] != api_mounts["/var/lib/kdoct/spool"]["source"]
    assert mounts["/var/lib/kdoct/audit"]["source"] == api_mounts["/var/lib/kdoct/audit"]["source"]
    # The store and the dead letters are durable named volumes used by no other service.
    others = {
        _volume(volume)["source"]
        for name, service in services.items()
        if name != "dicom"
        for volume in service.get("volumes", [])
    }
    for setting in ("KDOCT_DICOM_STORE_DIR", "KDOCT_DICOM_DEAD_LETTER_DIR", "KDOCT_SPOOL_DIR"):
        path = environment.get(setting, "/var/lib/kdoct/spool")
        mount = mounts[path]
        assert mount["type"] == "volume" and not mount.get("read_only"), setting
        assert mount["source"] in volumes and mount["source"] not in others, setting
    # The image creates the mount points owned by its user, so new named volumes are writable.
    dockerfile = (repo_root / "docker" / "Dockerfile").read_text()
    for setting in ("KDOCT_DICOM_STORE_DIR", "KDOCT_DICOM_DEAD_LETTER_DIR"):
        assert environment[setting] in dockerfile, setting
    # The SCP is published (on 11112 in the container: 104 needs a capability it does not have); its
    # HTTP port (metrics, health) is not: Prometheus reaches it on the compose network.
    published = [str(port) for port in dicom["ports"]]
    assert len(published) == 1 and ":11112" in published[0], published
    assert [str(port) for port in dicom["expose"]] == [environment["KDOCT_DICOM_HTTP_PORT"]] == ["9112"]
    healthcheck = dicom["healthcheck"]["test"]
    assert healthcheck[-1] == "http://127.0.0.1:9112/health/ready" and "healthcheck.py" in healthcheck[-2]


def test_prometheus_scrapes_the_dicom_node(docker_dir: Path, compose_config: dict[str, Any]) -> None:
    config = yaml.safe_load((docker_dir / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (discovery,) = jobs["kdoct-dicom"]["dns_sd_configs"]
    assert discovery["names"] == ["dicom"] and "dicom" in compose_config["services"]
    environment = compose_config["services"]["dicom"]["environment"]
    assert discovery["port"] == int(environment["KDOCT_DICOM_HTTP_PORT"])
    assert jobs["kdoct-dicom"]["metrics_path"] == "/metrics"
