"""Prometheus config and alert rules: promtool accepts them, they fire when they should, and they use
only metrics the service declares."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

REQUIRED_ALERTS = {
    "KdoctLatencySLOFastBurn",  # multi-window burn rate of the p99 latency SLO
    "KdoctLatencySLOSlowBurn",
    "KdoctHighErrorRate",
    "KdoctSpoolBacklogGrowing",
    "KdoctDatabaseWritesFailing",
    "KdoctModelNotReady",
    "KdoctUngradableShareHigh",  # the safety gate refuses far more than the ~5 % it was fitted for
    "KdoctDicomNodeDown",
    "KdoctDicomDeadLetters",  # results the node could not deliver, waiting for dicom-replay
    "KdoctDicomStoreNearlyFull",  # kdoct_dicom_store_bytes over 90 % of kdoct_dicom_store_capacity_bytes
    "KdoctDicomRefusingStoreFull",
}
# A service metric; not the middle of a recorded series' name (level:metric:operations, checked apart).
METRIC_NAME = re.compile(r"(?<![\w:])kdoct_[a-z_]+\b")
RECORDED_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def _promtool(tool, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config_and_its_rule_files(tool, docker_dir: Path) -> None:
    result = _promtool(tool, "check", "config", docker_dir / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_rules(tool, docker_dir: Path) -> None:
    result = _promtool(tool, "check", "rules", docker_dir / "prometheus" / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_they_should_and_not_otherwise(tool) -> None:
    """tests/deploy/alerts_test.yml: promtool's unit tests of every alert, with expected annotations."""
    result = _promtool(tool, "test", "rules", Path(__file__).with_name("alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_required_alert_exists_with_severity_and_summary(alert_rules: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules if "alert" in rule}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["summary"], name


def test_latency_slo_threshold_is_a_bucket_boundary_of_the_service(alert_rules: list[dict[str, Any]]) -> None:
    from service.prometheus import LATENCY_BUCKETS

    thresholds = {float(le) for rule in alert_rules for le in re.findall(r'le="([0-9.]+)"', rule["expr"])}
    assert thresholds, "the SLO rules must read a histogram bucket"
    assert thresholds <= {float(bucket) for bucket in LATENCY_BUCKETS}, (
        f"SLO threshold(s) {thresholds} are not kdoct_request_duration_seconds buckets: the ratio is empty"
    )


def test_the_declared_metric_list_matches_service_metrics(service_metrics: dict[str, str]) -> None:
    import service.prometheus as module

    declared = {}
    for name in module.__all__:
        metric = getattr(module, name)
        if isinstance(metric, MetricWrapperBase):
            family = metric.describe()[0]
            suffix = "_total" if family.type == "counter" else ""
            declared[family.name + suffix] = family.type
    assert declared == service_metrics


def _used_metrics(expression: str, histograms: set[str]) -> set[str]:
    """Metric families an expression reads (histogram series _bucket/_sum/_count map to their family)."""
    names = set()
    for name in METRIC_NAME.findall(expression):
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(family if family in histograms else name)
    return names


def test_rules_use_only_declared_metrics(
    alert_rules: list[dict[str, Any]], service_metrics: dict[str, str]
) -> None:
    for rule in alert_rules:
        histograms = {name for name, kind in service_metrics.items() if kind == "histogram"}
        unknown = _used_metrics(rule["expr"], histograms) - set(service_metrics)
        assert not unknown, f"{rule.get('alert') or rule.get('record')} uses undeclared {unknown}"


def test_recorded_series_are_named_by_convention_and_used_only_once_recorded(alert_rules) -> None:
    """level:metric:operations (Prometheus' naming of recording rules); a rule reads only series that
    a rule records."""
    recorded = {rule["record"] for rule in alert_rules if "record" in rule}
    assert recorded, "the drift alarms are built on recording rules"
    assert all(RECORDED_NAME.fullmatch(name) for name in recorded), recorded
    read = {name for rule in alert_rules for name in RECORDED_NAME.findall(rule["expr"])}
    assert read <= recorded, f"rules read series no rule records: {read - recorded}"
