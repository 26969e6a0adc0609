"""The Grafana dashboard and its provisioning: well-formed, every panel queries Prometheus with valid
PromQL, and together the panels cover every metric of the service."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

# A service metric; not the middle of a recorded series' name (level:metric:operations, checked apart).
METRIC_NAME = re.compile(r"(?<![\w:])kdoct_[a-z_]+\b")
RECORDED_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
# What the operations team must see.
REQUIRED_TOPICS = [
    "request rate", "error rate", "request latency", "inference latency", "queue wait", "queue depth",
    "batch size", "predictions by label", "confidence distribution", "referral", "disagreement",
    "database write failures", "spool backlog", "authentication failures", "models", "safety gate",
    "ungradable", "dicom associations", "dicom instances", "dicom series", "dicom exports",
    "dicom dead letters", "dicom store",
    "real-world sensitivity", "real-world ppv", "contradicted confident",
    "shadow agreement", "shadow results", "shadow disagreements", "shadow gate", "model switches",
    "label mix drift", "out-of-distribution score drift", "dicom devices", "alerts firing",
]  # fmt: skip


def test_datasource_is_provisioned_with_the_uid_the_dashboard_uses(
    docker_dir: Path, dashboard_panels: list[dict[str, Any]]
) -> None:
    provisioning = docker_dir / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    uid = datasources[0]["uid"]
    for panel in dashboard_panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(target["datasource"]["uid"] == uid for target in panel["targets"]), panel["title"]


def test_dashboard_provider_loads_the_mounted_directory(
    docker_dir: Path, compose_raw: dict[str, Any]
) -> None:
    provider = yaml.safe_load(
        (docker_dir / "grafana" / "provisioning" / "dashboards" / "kdoct.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    mounts = compose_raw["services"]["grafana"]["volumes"]
    assert f"./docker/grafana/dashboards:{path}:ro" in mounts


def test_every_panel_has_a_promql_target_and_a_unique_id(
    dashboard: dict[str, Any], dashboard_panels: list[dict[str, Any]]
) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert len(dashboard_panels) >= 15
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} target {target['refId']} is empty"


def test_panels_cover_every_topic_and_every_service_metric(
    dashboard_panels: list[dict[str, Any]], dashboard_queries, service_metrics: dict[str, str], alert_rules
) -> None:
    recorded_series = {rule["record"] for rule in alert_rules if "record" in rule}
    titles = " | ".join(panel["title"].lower() for panel in dashboard_panels)
    missing_topics = [topic for topic in REQUIRED_TOPICS if topic not in titles]
    assert not missing_topics, f"no panel for {missing_topics}"
    used = {name for _, _, expr in dashboard_queries for name in METRIC_NAME.findall(expr)}
    recorded = {name for _, _, expr in dashboard_queries for name in RECORDED_NAME.findall(expr)}
    assert recorded <= recorded_series, f"panels read series no rule records: {recorded - recorded_series}"
    histograms = {name for name, kind in service_metrics.items() if kind == "histogram"}
    bases = set()
    for name in used:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        bases.add(family if family in histograms else name)
    assert bases <= set(service_metrics), f"undeclared metrics: {bases - set(service_metrics)}"
    assert set(service_metrics) <= bases, f"metrics without a panel: {set(service_metrics) - bases}"


def test_range_windows_use_grafana_interval_variables(dashboard_panels: list[dict[str, Any]]) -> None:
    """Hard-coded windows break when the scrape interval or zoom changes; $__rate_interval adapts."""
    windows = {
        window
        for panel in dashboard_panels
        for target in panel["targets"]
        for window in re.findall(r"\[([^\]]+)\]", target["expr"])
    }
    assert windows and windows <= {"$__rate_interval", "$__range"}, windows


def test_every_dashboard_expression_is_valid_promql(tool, dashboard_queries, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule: a syntax error names the panel."""
    rules = [
        {"record": f"dashboard:panel_{index}", "expr": expr, "labels": {"panel": title[:60], "ref": ref}}
        for index, (title, ref, expr) in enumerate(dashboard_queries)
    ]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
