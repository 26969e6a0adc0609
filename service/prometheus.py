"""Every Prometheus metric of the service, declared once.

Label values are bounded sets (route templates, model names, class labels, reason codes): never ids,
keys or file names. With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (`python -m service
serve --workers N` does it) and `/metrics` aggregates every worker through MultiProcessCollector.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.db.quarantine import QUARANTINE_REASONS

# prometheus_client writes one file per metric and process there as soon as a metric is declared:
# a configured but missing directory would make every import of this module fail.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

__all__ = [
    "AUTH_FAILURES",
    "AUTH_FAILURE_REASONS",
    "BATCH_SIZE",
    "DB_WRITE_DURATION",
    "DB_WRITE_FAILURES",
    "DICOM_ASSOCIATIONS",
    "DICOM_ASSOCIATION_OUTCOMES",
    "DICOM_DEAD_LETTERS",
    "DICOM_DEVICES",
    "DICOM_EXPORTS",
    "DICOM_EXPORT_OUTCOMES",
    "DICOM_INSTANCES",
    "DICOM_INSTANCE_OUTCOMES",
    "DICOM_SERIES",
    "DICOM_SERIES_OUTCOMES",
    "DICOM_STORE_BYTES",
    "DICOM_STORE_CAPACITY",
    "INFERENCE_DURATION",
    "INGRESS_IN_FLIGHT",
    "INGRESS_MEMORY",
    "INGRESS_SPILLED_BODIES",
    "MODEL_CLASS_PRIOR",
    "MODEL_INFO",
    "MODEL_READY",
    "MODEL_SWITCHES",
    "MODEL_SWITCH_OUTCOMES",
    "OOD_REFERENCE_SHARE",
    "OOD_SCORE_BANDS",
    "PREDICTIONS",
    "PREDICTION_CONFIDENCE",
    "QUEUE_DEPTH",
    "QUEUE_WAIT",
    "RECORD_WRITER_RESTARTS",
    "RECORD_WRITER_TASKS",
    "REFERRALS",
    "SAFETY_GATE",
    "REJECTED_REQUESTS",
    "REJECTION_REASONS",
    "REQUEST_DURATION",
    "SECOND_OPINIONS",
    "SECOND_OPINION_OUTCOMES",
    "SHADOW_AGREEMENT",
    "SHADOW_COMPARISONS",
    "SHADOW_GATE",
    "SHADOW_KAPPA",
    "SHADOW_OUTCOMES",
    "SHADOW_RESULTS",
    "SHADOW_TEACHER_COMPARISONS",
    "SPOOL_BACKLOG",
    "SPOOL_QUARANTINED",
    "DICOM_EXPORT_KINDS",
    "FEEDBACK",
    "FEEDBACK_GRADABLE",
    "count_feedback",
    "initialise_dicom_label_sets",
    "initialise_label_sets",
    "render_metrics",
]

# Millisecond inference up to slow multi-frame volumes.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
REJECTION_REASONS = (
    "too_large",
    "unsupported_media_type",
    "invalid_image",
    "decompression_bomb",
    "queue_full",
    "bad_request",
    "record_unavailable",
    "inference_failed",
    "not_ready",
    "not_acceptable",
    "memory_budget",
    "key_in_flight",
    "body_too_slow",
)

REQUEST_DURATION = Histogram(
    "kdoct_request_duration_seconds",
    "HTTP request duration by route template, method and status",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "kdoct_inference_duration_seconds",
    "Duration of one runtime call (one batch)",
    ["model", "runtime"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "kdoct_queue_wait_seconds",
    "Time a request waited in the batch queue before its batch ran",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram("kdoct_batch_size", "Images per runtime call", ["model"], buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge(
    "kdoct_queue_depth", "Requests waiting in the batch queue", ["model"], multiprocess_mode="livesum"
)
PREDICTIONS = Counter(
    "kdoct_predictions_total", "Predictions answered, by model and label", ["model", "label"]
)
PREDICTION_CONFIDENCE = Histogram(
    "kdoct_prediction_confidence", "Calibrated confidence of answered predictions", ["model"],
    buckets=CONFIDENCE_BUCKETS,
)  # fmt: skip
SECOND_OPINIONS = Counter("kdoct_second_opinions_total", "Teacher second opinions by outcome", ["outcome"])
REFERRALS = Counter("kdoct_referrals_total", "Predictions flagged for clinician review", ["model"])
# One count per image judged (each frame of a volume): outcome "gradable" or the reason it is not
# ("quality:blank", ..., "out_of_distribution"), a fixed set (kdoct.safety.QUALITY_REASONS).
SAFETY_GATE = Counter(
    "kdoct_safety_gate_total", "Images judged by the safety gate, by outcome", ["model", "outcome"]
)
REJECTED_REQUESTS = Counter("kdoct_rejected_requests_total", "Requests refused, by reason", ["reason"])
DB_WRITE_DURATION = Histogram(
    "kdoct_db_write_duration_seconds", "Duration of one prediction-record write", buckets=LATENCY_BUCKETS
)
DB_WRITE_FAILURES = Counter("kdoct_db_write_failures_total", "Failed prediction-record writes")
SPOOL_BACKLOG = Gauge(
    "kdoct_spool_backlog",
    "Prediction records spooled locally, awaiting the database",
    multiprocess_mode="livemax",
)
# The ingress layer (service/ingress/): what requests in flight hold, and bodies held on disk.
INGRESS_MEMORY = Gauge(
    "kdoct_ingress_memory_bytes",
    "Bytes charged to the memory budget by requests in flight (bodies, decoded images, inputs)",
    multiprocess_mode="livesum",
)
INGRESS_IN_FLIGHT = Gauge(
    "kdoct_ingress_in_flight", "Requests in flight past the ingress gate, by door", ["door"],
    multiprocess_mode="livesum",
)  # fmt: skip
INGRESS_SPILLED_BODIES = Counter(
    "kdoct_ingress_spilled_bodies_total",
    "Request bodies held in a temporary file because the in-memory share of the budget was taken",
)
# Spool lines (or whole unreadable files) replay set aside in <spool dir>/quarantine/, by reason
# (service/db/quarantine.py QUARANTINE_REASONS).
SPOOL_QUARANTINED = Counter(
    "kdoct_spool_quarantined_total",
    "Spool lines (or unreadable spool files) set aside in the spool's quarantine, by reason",
    ["reason"],
)
RECORD_WRITER_RESTARTS = Counter(
    "kdoct_record_writer_restarts_total",
    "Record writer tasks restarted after an unexpected failure, by task",
    ["task"],
)
AUTH_FAILURES = Counter("kdoct_auth_failures_total", "Failed authentications, by reason", ["reason"])
# Clinician feedback accepted (POST /predictions/{id}/feedback), by the prediction's model and answer,
# the clinician's label (both among the model's classes: the route refuses any other), whether they agree,
# whether the answer was confident (confidence >= KDOCT_SECOND_OPINION_THRESHOLD) and the safety gate's
# verdict (true, false; none: gate off). Every feedback counts, a correction too: the figures where only
# the latest feedback counts are GET /monitoring/performance's and the monthly report's.
FEEDBACK = Counter(
    "kdoct_feedback_total",
    "Clinician feedback accepted, by model, predicted and actual class, agreement, confidence, gradability",
    ["model", "predicted", "actual", "agrees", "confident", "gradable"],
)
FEEDBACK_GRADABLE = ("true", "false", "none")
MODEL_INFO = Gauge(
    "kdoct_model_info", "Loaded model bundles (value 1)", ["role", "name", "version", "sha256"],
    multiprocess_mode="livemax",
)  # fmt: skip
MODEL_READY = Gauge(
    "kdoct_model_ready",
    "1 when the model is warmed up and golden-checked",
    ["role"],
    multiprocess_mode="livemin",
)


# Drift without ground truth (service/monitoring/drift.py): the serving student's references, set by
# every worker alike, and the live traffic to compare with them.
MODEL_CLASS_PRIOR = Gauge(
    "kdoct_model_class_prior", "The label mix the student was trained on (or the site's expected one)",
    ["model", "label"], multiprocess_mode="max",
)  # fmt: skip
OOD_REFERENCE_SHARE = Gauge(
    "kdoct_ood_reference_share",
    "Share of the validation images' out-of-distribution scores in each band of the gate's threshold",
    ["model", "band"], multiprocess_mode="max",
)  # fmt: skip
OOD_SCORE_BANDS = Counter(
    "kdoct_ood_score_band_total", "Judged images and frames by band of out-of-distribution score / threshold",
    ["model", "band"],
)  # fmt: skip
DICOM_DEVICES = Counter(
    "kdoct_dicom_devices_total",
    "DICOM uploads by device (Manufacturer, ManufacturerModelName, SoftwareVersions)",
    ["manufacturer", "device_model", "software"],
)  # fmt: skip

# The model lifecycle (service/lifecycle/): a shadowing candidate, named by its bundle's sha256 (one
# per deployment at a time), and the switches of the serving student.
SHADOW_RESULTS = Counter(
    "kdoct_shadow_results_total", "Requests shadowed by the candidate, by outcome", ["candidate", "outcome"]
)
SHADOW_COMPARISONS = Counter(
    "kdoct_shadow_comparisons_total",
    "Shadowed results: the serving student's label against the candidate's",
    ["candidate", "current_label", "candidate_label", "agrees"],
)
SHADOW_TEACHER_COMPARISONS = Counter(
    "kdoct_shadow_teacher_comparisons_total",
    "Shadowed results the teacher also answered: does the candidate agree with it", ["candidate", "agrees"],
)  # fmt: skip
SHADOW_GATE = Counter(
    "kdoct_shadow_gate_total", "Shadowed results: the safety gate's verdicts, serving student and candidate",
    ["candidate", "current", "shadow"],
)  # fmt: skip
# From the shadow_results ledger (every worker's results): each worker sets the same value.
SHADOW_AGREEMENT = Gauge(
    "kdoct_shadow_agreement_ratio", "Share of shadowed results where the candidate's label agrees",
    ["candidate", "against"], multiprocess_mode="max",
)  # fmt: skip
SHADOW_KAPPA = Gauge(
    "kdoct_shadow_kappa", "Cohen's kappa of the candidate's labels against the student's or the teacher's",
    ["candidate", "against"], multiprocess_mode="max",
)  # fmt: skip
MODEL_SWITCHES = Counter(
    "kdoct_model_switches_total", "Switches of the serving student (promotions, rollbacks), by outcome",
    ["outcome"],
)  # fmt: skip
# stored: in the ledger; not_stored: the database refused or the queue was full (dropped, counted);
# busy: not shadowed, KDOCT_SHADOW_MAX_PENDING reached; timeout, failed: the candidate did not answer.
SHADOW_OUTCOMES = ("stored", "not_stored", "busy", "timeout", "failed")
# switched: this worker serves the new student; refused: the event's bundle did not load or verify.
MODEL_SWITCH_OUTCOMES = ("switched", "refused")

# rate_limited: refused with 429 before the key was looked at (service/auth_throttle.py).
# The DICOM node (service/dicom_node/): its own process and its own scrape target.
DICOM_ASSOCIATIONS = Counter(
    "kdoct_dicom_associations_total", "DICOM associations requested of the node, by outcome", ["outcome"]
)
DICOM_INSTANCES = Counter(
    "kdoct_dicom_instances_total", "C-STORE requests received by the node, by outcome", ["outcome"]
)
DICOM_SERIES = Counter("kdoct_dicom_series_total", "Series the node classified, by outcome", ["outcome"])
DICOM_EXPORTS = Counter(
    "kdoct_dicom_exports_total", "Delivery attempts of result objects (SR, PDF), by kind and outcome",
    ["kind", "outcome"],
)  # fmt: skip
DICOM_DEAD_LETTERS = Gauge(
    "kdoct_dicom_dead_letters", "Series whose results wait in the dead-letter directory"
)
DICOM_STORE_BYTES = Gauge("kdoct_dicom_store_bytes", "Bytes of received instances held in the node's store")
# KDOCT_DICOM_STORE_MAX_BYTES, set once at start: the store-near-full alert divides by it.
DICOM_STORE_CAPACITY = Gauge(
    "kdoct_dicom_store_capacity_bytes", "Bytes the node's store may hold before it refuses associations"
)
# accepted; rejected_caller (not on KDOCT_DICOM_CALLERS), store_full, busy (KDOCT_DICOM_MAX_ASSOCIATIONS, or
# twice that many connections open); oversized_pdu (a PDU announced beyond the node's bound: closed)
DICOM_ASSOCIATION_OUTCOMES = ("accepted", "rejected_caller", "store_full", "busy", "oversized_pdu")
# stored; ignored (an SR or PDF: never classified, so a PACS routing results back makes no loop);
# refused (a failure status: too large, a bomb, undecodable, over budget); failed (the store could not
# write it)
DICOM_INSTANCE_OUTCOMES = ("stored", "ignored", "refused", "failed")
DICOM_SERIES_OUTCOMES = ("classified", "refused", "failed")
DICOM_EXPORT_OUTCOMES = ("delivered", "failed", "unconfirmed", "dead_lettered")
DICOM_EXPORT_KINDS = ("sr", "pdf")
AUTH_FAILURE_REASONS = ("missing", "invalid", "revoked", "forbidden", "rate_limited")
# DurableWriter's task; SpoolFirstWriter's journal and insert tasks (service/db/writer.py, spool_first.py).
RECORD_WRITER_TASKS = ("writer", "journal", "insert")
SECOND_OPINION_OUTCOMES = ("agree", "disagree")


def initialise_label_sets(model: str, class_names: tuple[str, ...] | list[str]) -> None:
    """Create every bounded label set at 0, so each series exists (and rate() works) before its first
    event, and so /metrics lists every metric in multiprocess mode too, which shows only series
    that were touched."""
    for label in class_names:
        PREDICTIONS.labels(model=model, label=label)
    REFERRALS.labels(model=model)
    for outcome in SECOND_OPINION_OUTCOMES:
        SECOND_OPINIONS.labels(outcome=outcome)
    for reason in REJECTION_REASONS:
        REJECTED_REQUESTS.labels(reason=reason)
    for reason in AUTH_FAILURE_REASONS:
        AUTH_FAILURES.labels(reason=reason)
    for reason in QUARANTINE_REASONS:
        SPOOL_QUARANTINED.labels(reason=reason)
    for task in RECORD_WRITER_TASKS:
        RECORD_WRITER_RESTARTS.labels(task=task)
    for outcome in MODEL_SWITCH_OUTCOMES:
        MODEL_SWITCHES.labels(outcome=outcome)
    for predicted in class_names:
        for actual in class_names:
            for confident in (True, False):
                for gradable in (True, False, None):
                    _feedback_series(model, predicted, actual, confident=confident, gradable=gradable)


def _feedback_series(model: str, predicted: str, actual: str, *, confident: bool, gradable: bool | None):
    return FEEDBACK.labels(
        model=model,
        predicted=predicted,
        actual=actual,
        agrees=str(predicted == actual).lower(),
        confident=str(confident).lower(),
        gradable="none" if gradable is None else str(gradable).lower(),
    )


def count_feedback(
    model: str, predicted: str, actual: str, *, confident: bool, gradable: bool | None
) -> None:
    _feedback_series(model, predicted, actual, confident=confident, gradable=gradable).inc()


def initialise_dicom_label_sets() -> None:
    """The DICOM node's label sets at 0 (the node's process only)."""
    for outcome in DICOM_ASSOCIATION_OUTCOMES:
        DICOM_ASSOCIATIONS.labels(outcome=outcome)
    for outcome in DICOM_INSTANCE_OUTCOMES:
        DICOM_INSTANCES.labels(outcome=outcome)
    for outcome in DICOM_SERIES_OUTCOMES:
        DICOM_SERIES.labels(outcome=outcome)
    for kind in DICOM_EXPORT_KINDS:
        for outcome in DICOM_EXPORT_OUTCOMES:
            DICOM_EXPORTS.labels(kind=kind, outcome=outcome)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text and its content type; aggregated over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
