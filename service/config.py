"""Service settings: `KDOCT_*` environment variables and `.env`, checked once at start-up.

Every setting is documented with its default in docs/CONFIGURATION.md. Unsafe or contradictory
combinations are refused here, with a message that names the variable and the fix, so that a
misconfigured replica never becomes ready.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kdoct.errors import ConfigError
from service.audit_key import DEFAULT_AUDIT_KEY_FILE
from service.db.anchor import DEFAULT_ANCHOR_FILE
from service.db.session import DEFAULT_DATABASE_URL
from service.dicom_node.peers import parse_callers, parse_destination

__all__ = ["Settings", "get_settings", "is_loopback", "load_settings", "parse_label_prior"]

MiB = 1 << 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_label_prior(text: str) -> dict[str, float]:
    """ "normal=0.6,drusen=0.25,cnv=0.15" -> shares by label, which must be positive and sum to 1."""
    prior = {}
    for item in text.split(","):
        label, sep, share = item.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not sep or not label.strip() or not 0.0 < value <= 1.0:
            raise ValueError(f"{item.strip()!r} is not label=share with 0 < share <= 1")
        prior[label.strip()] = value
    if abs(sum(prior.values()) - 1.0) > 1e-3:
        raise ValueError(f"the shares sum to {sum(prior.values()):g}, not 1")
    return prior


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _onnx_cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# The prefix of every placeholder secret in .env.example; the service refuses to run with one.
PLACEHOLDER_SECRET = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDOCT_", env_file=".env", extra="ignore", frozen=True)

    # Models: everything else about a model (classes, preprocessing, calibration) is in its bundle.
    student_bundle: Path
    teacher_bundle: Path | None = None
    # None resolves to "auto" when a teacher bundle is configured and "never" otherwise.
    second_opinion: Literal["never", "auto", "always"] | None = None
    # A student confidence below this is "unsure": it asks the teacher (auto) and sets `refer`.
    second_opinion_threshold: float = Field(0.8, gt=0.0, le=1.0)
    # The model lifecycle (docs/LIFECYCLE.md). A candidate student scores a share of live requests off
    # the answer path; its results go to the shadow_results ledger.
    shadow_bundle: Path | None = None
    shadow_share: float = Field(1.0, gt=0.0, le=1.0)
    shadow_timeout_s: float = Field(10.0, gt=0.0)
    # Shadow runs waiting or running at once, per worker; beyond it a request is not shadowed (counted).
    shadow_max_pending: int = Field(64, ge=1)
    # What `model promote` requires of the candidate's shadow record.
    promote_min_shadowed: int = Field(500, ge=1)
    promote_min_agreement: float = Field(0.90, ge=0.0, le=1.0)
    promote_min_sensitivity: float = Field(0.85, ge=0.0, le=1.0)
    promote_min_feedback_per_class: int = Field(20, ge=0)
    # How often each worker reads the newest model event (a promotion or rollback to switch to).
    model_poll_s: float = Field(2.0, gt=0.0, le=300.0)
    # The label mix the drift alarm expects, where the site's differs from the training data by design
    # ("normal=0.6,drusen=0.25,cnv=0.15"); empty: the training prior the bundle records.
    drift_label_prior: str = ""
    # The clinical safety gate (kdoct/safety.py): an image failing the quality check or out of the
    # student's distribution answers gradable: false and refer: true. off is for research only: every
    # image is then forced into a class, and the student bundle need not carry a gate.
    safety_gate: Literal["on", "off"] = "on"

    # Runtime: auto = PyTorch on CUDA when a GPU is present, else ONNX Runtime on CPU.
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # fp16/bf16: PyTorch on CUDA only; golden tolerance `reduced_precision_tolerance`. int8: the student's
    # model.int8.onnx on ONNX Runtime CPU, checked against its own golden outputs (the teacher stays fp32).
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    reduced_precision_tolerance: float = Field(5e-3, gt=0.0, le=0.1)
    # Threads of the one inference session; None = all cores of this machine.
    inference_threads: int | None = Field(None, ge=1, le=256)
    # Threads decoding and preprocessing uploads off the event loop; None = all cores.
    decode_threads: int | None = Field(None, ge=1, le=256)

    # Batching. None = adapt to the runtime: on CPU batch 1 runs faster per image than larger
    # batches, so requests are not held back; on CUDA up to 32 requests wait at most 2 ms.
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    max_batch_wait_ms: float | None = Field(None, ge=0.0, le=1000.0)
    max_queue: int = Field(256, ge=1, le=100_000)
    # A classifying request that finds every admission slot taken waits up to this long for one (body
    # unread, first come first served) before its 503; 0 refuses at once (service/admission.py). More
    # goodput under overload for more latency (docs/BENCHMARKS.md, "versions side by side").
    admission_wait_s: float = Field(0.5, ge=0.0, le=60.0)
    # A request whose inference has not finished after this long gets 503 instead of waiting on.
    inference_timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    # How long shutdown waits for queued and running requests before failing them.
    drain_timeout_s: float = Field(10.0, ge=0.0, le=600.0)

    # Upload limits, enforced before any pixel is decoded.
    max_upload_bytes: int = Field(64 * MiB, ge=1024, le=2048 * MiB)
    # Each read of a request body must arrive within this (408 otherwise): slow senders cannot hold
    # connections open. And at most this many connections at once per worker (uvicorn answers 503).
    body_read_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    limit_concurrency: int = Field(512, ge=1, le=100_000)
    max_image_pixels: int = Field(16_000_000, ge=64, le=500_000_000)
    max_frames: int = Field(256, ge=1, le=10_000)
    max_volume_pixels: int = Field(150_000_000, ge=64, le=4_000_000_000)
    # The ingress layer (service/ingress/, docs/SECURITY.md). max_frames and max_volume_pixels above
    # bound a whole request (all the elements of a /v2 request together), not only one upload.
    # What the requests in flight in one worker may hold (bodies, decoded images, model inputs), counted
    # from headers before decoding: a request that would exceed it now gets 503, one that alone would
    # exceed it 413. A quarter of it may hold bodies still arriving; beyond, they go to body_spill_dir.
    memory_budget_bytes: int = Field(1024 * MiB, ge=16 * MiB, le=1024 * 1024 * MiB)
    body_spill_dir: Path | None = None  # None: the system's temporary directory
    # A body must arrive at this average rate once body_read_timeout_s has passed (408 otherwise).
    min_body_bytes_per_s: float = Field(16 * 1024, gt=0.0, le=1e12)
    # The JSON part of an Open Inference Protocol request is parsed whole: larger tensors go as binary.
    max_json_bytes: int = Field(8 * MiB, ge=1024, le=1024 * MiB)
    # Requests one API key may have in flight in one worker; None: half the admission limit.
    max_in_flight_per_key: int | None = Field(None, ge=1, le=100_000)

    # Records: every answered prediction goes to this database (SQLite embedded, PostgreSQL in
    # production) through a durable writer; while the database is unreachable, to the spool directory.
    database_url: str = DEFAULT_DATABASE_URL
    spool_dir: Path = Path("var/spool")
    writer_queue_size: int = Field(1024, ge=1, le=1_000_000)
    writer_batch_size: int = Field(256, ge=1, le=10_000)
    # A stalled database (a held lock, a hung server) is an outage, not a hang: one statement may run
    # or wait for a lock this long (PostgreSQL), and an answer waits at most record_deadline_s for its
    # record to commit; past that the record goes to the fsync'd spool and the answer goes out.
    db_statement_timeout_s: float = Field(5.0, gt=0.0, le=3600.0)
    db_lock_timeout_s: float = Field(2.0, gt=0.0, le=3600.0)
    record_deadline_s: float = Field(5.0, gt=0.0, le=3600.0)
    # When an answer may go out (docs/RECORDS.md, "Durability"): `spool`, once its record is fsync'd to
    # the local journal in spool_dir, the database insert following in the background (~0.1-3 ms,
    # the spool must be durable storage: a volume that outlives the process and the host's reboot);
    # `database`, once the record is committed (or, past record_deadline_s, spooled).
    record_ack: Literal["spool", "database"] = "spool"
    # PostgreSQL: what to do when the service's role could rewrite the records (owner, superuser, or
    # UPDATE/DELETE/TRUNCATE on them): log an error, or refuse to start (docker compose sets refuse).
    db_role_check: Literal["warn", "refuse"] = "warn"
    # The audit key, a secret the database never sees (service/audit_key.py): it keys the hash under
    # which X-Request-ID is stored and signs the chain checkpoints; created on first start if missing.
    # The checkpoints (service/db/anchor.py) go to anchor_file and the log every anchor_interval_s.
    audit_key_file: Path = DEFAULT_AUDIT_KEY_FILE
    anchor_file: Path = DEFAULT_ANCHOR_FILE
    anchor_interval_s: float = Field(60.0, gt=0.0, le=86400.0)
    # API keys (`python -m service apikey create`). disabled: local SQLite demo only, logged loudly;
    # refused with PostgreSQL and on non-loopback hosts.
    auth: Literal["enabled", "disabled"] = "enabled"
    # Each worker holds every key's hash in memory (service/key_table.py) and reloads them this often:
    # a revoked or rotated key stops working within this time; a new key works at once.
    api_key_refresh_s: float = Field(2.0, ge=0.1, le=3600.0)
    # Beyond this many failed authentications (401) from one address (an IPv6 /64) in the window, the
    # address gets 429 until the window ends, whatever key it sends (service/auth_throttle.py); 0: off.
    auth_failure_limit: int = Field(20, ge=0, le=1_000_000)
    auth_failure_window_s: float = Field(60.0, gt=0.0, le=86400.0)

    # The DICOM node (`python -m service dicom-node`, service/dicom_node/, docs/INTEGRATION.md): a C-STORE
    # and C-ECHO SCP on dicom_host:dicom_port as AE dicom_ae_title. Only the callers in dicom_callers
    # (`AE` or `AE@host`, comma-separated; empty: nobody) may associate.
    dicom_ae_title: str = Field("KDOCT", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(11112, ge=1, le=65535)
    dicom_callers: str = ""
    # Received instances wait here, fsync'd, until their series is classified and its results are
    # delivered or dead-lettered; new associations are refused while it holds dicom_store_max_bytes.
    dicom_store_dir: Path = Path("var/dicom-store")
    dicom_store_max_bytes: int = Field(2048 * MiB, ge=1 * MiB, le=1 << 50)
    # A series is classified once no instance of it has arrived for this long.
    dicom_series_idle_s: float = Field(5.0, gt=0.0, le=3600.0)
    dicom_max_associations: int = Field(8, ge=1, le=1024)
    # Results (a Comprehensive SR and an Encapsulated PDF per series) go by C-STORE to
    # dicom_destination (`AE@host:port`) and/or by STOW-RS to dicomweb_url when dicomweb_stow is true;
    # with dicomweb_url set, each delivery is confirmed by a QIDO-RS query. On-demand retrieval of a
    # study (`python -m service dicom-retrieve`) reads dicomweb_url by WADO-RS.
    dicom_destination: str | None = None
    dicomweb_url: str | None = None
    dicomweb_stow: bool = False
    # Delivery: this many attempts, the wait doubling from dicom_export_backoff_s (at most 60 s), then
    # the objects go to dicom_dead_letter_dir until `python -m service dicom-replay` delivers them.
    dicom_export_attempts: int = Field(4, ge=1, le=100)
    dicom_export_backoff_s: float = Field(1.0, ge=0.0, le=600.0)
    dicom_dead_letter_dir: Path = Path("var/dicom-dead-letter")
    # The node's own HTTP port: GET /metrics (Prometheus), /health/live, /health/ready.
    dicom_http_port: int = Field(9112, ge=1, le=65535)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def second_opinion_policy(self) -> Literal["never", "auto", "always"]:
        if self.second_opinion is not None:
            return self.second_opinion
        return "auto" if self.teacher_bundle is not None else "never"

    @property
    def resolved_device(self) -> Literal["cpu", "cuda"]:
        if self.device != "auto":
            return self.device
        if self.runtime == "onnx" or self.precision == "int8":
            return "cpu"
        return "cuda" if _cuda_available() else "cpu"

    @property
    def resolved_runtime(self) -> Literal["onnx", "torch"]:
        if self.runtime != "auto":
            return self.runtime
        return "torch" if self.resolved_device == "cuda" else "onnx"

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        problems = []
        if self.second_opinion == "always" and self.teacher_bundle is None:
            problems.append(
                "KDOCT_SECOND_OPINION=always needs a teacher: set KDOCT_TEACHER_BUNDLE or choose auto/never"
            )
        if self.device == "cuda":
            if self.runtime == "torch" and not _cuda_available():
                problems.append("KDOCT_DEVICE=cuda with KDOCT_RUNTIME=torch, but PyTorch sees no CUDA device")
            if self.runtime == "onnx" and not _onnx_cuda_available():
                problems.append(
                    "KDOCT_DEVICE=cuda with KDOCT_RUNTIME=onnx, but onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu, or use KDOCT_RUNTIME=torch)"
                )
            if self.runtime == "auto" and not _cuda_available():
                problems.append("KDOCT_DEVICE=cuda, but PyTorch sees no CUDA device: use KDOCT_DEVICE=auto")
        if self.precision == "int8" and (self.device == "cuda" or self.runtime == "torch"):
            problems.append(
                f"KDOCT_PRECISION=int8 serves the student's model.int8.onnx on ONNX Runtime on the CPU only: "
                f"use KDOCT_RUNTIME=onnx (or auto) and KDOCT_DEVICE=cpu (or auto), not "
                f"KDOCT_RUNTIME={self.runtime} KDOCT_DEVICE={self.device}"
            )
        if self.precision in ("fp16", "bf16") and (self.device == "cpu" or self.runtime == "onnx"):
            problems.append(
                f"KDOCT_PRECISION={self.precision} is for PyTorch on CUDA only: use fp32 with "
                f"KDOCT_RUNTIME={self.runtime} KDOCT_DEVICE={self.device}"
            )
        if self.max_batch_size is not None and self.max_queue < self.max_batch_size:
            problems.append(
                f"KDOCT_MAX_QUEUE ({self.max_queue}) is smaller than KDOCT_MAX_BATCH_SIZE "
                f"({self.max_batch_size}): a full batch could never form"
            )
        if self.max_image_pixels > self.max_volume_pixels:
            problems.append("KDOCT_MAX_IMAGE_PIXELS must not exceed KDOCT_MAX_VOLUME_PIXELS")
        if self.auth == "disabled" and self.database_url.startswith(("postgresql", "postgres")):
            problems.append(
                "KDOCT_AUTH=disabled is for the local SQLite demo only and is refused with PostgreSQL: "
                "enable auth and create a key with `python -m service apikey create NAME --scopes ...`"
            )
        if not is_loopback(self.host) and self.auth == "disabled":
            problems.append(
                f"KDOCT_HOST={self.host} exposes the service beyond this machine while KDOCT_AUTH=disabled: "
                f"bind to 127.0.0.1 or enable authentication"
            )
        if PLACEHOLDER_SECRET in self.database_url:
            # .env.example's passwords are public: a deployment that kept one is open to anyone.
            problems.append(
                f"KDOCT_DATABASE_URL holds a '{PLACEHOLDER_SECRET}...' placeholder password from "
                f".env.example: set a real secret (e.g. `openssl rand -hex 24`)"
            )
        same = (
            self.teacher_bundle is not None and self.student_bundle.resolve() == self.teacher_bundle.resolve()
        )
        if same:
            problems.append("KDOCT_TEACHER_BUNDLE is the same bundle as KDOCT_STUDENT_BUNDLE")
        if self.shadow_bundle is not None and self.shadow_bundle.resolve() == self.student_bundle.resolve():
            problems.append(
                "KDOCT_SHADOW_BUNDLE is the same bundle as KDOCT_STUDENT_BUNDLE: nothing to compare"
            )
        if self.drift_label_prior:
            try:
                parse_label_prior(self.drift_label_prior)
            except ValueError as exc:
                problems.append(f"KDOCT_DRIFT_LABEL_PRIOR: {exc}")
        problems += self._dicom_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _dicom_problems(self) -> list[str]:
        problems = []
        for parse, value in (
            (parse_callers, self.dicom_callers),
            (parse_destination, self.dicom_destination),
        ):
            if value:
                try:
                    parse(value)
                except ValueError as exc:
                    problems.append(str(exc))
        return problems


def load_settings(**overrides) -> Settings:
    """Settings from the environment and `.env`, with `overrides`; invalid ones raise ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            variable = f"KDOCT_{where.upper()}" if where else "settings"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "missing":
                message = "is required"
            messages.append(f"{variable}: {message}" if where else message)
        raise ConfigError("invalid service settings: " + "; ".join(messages)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
