"""The models a worker serves, loaded and served: the student (the newest model event's, else
KDOCT_STUDENT_BUNDLE), the teacher, the shadowing candidate (KDOCT_SHADOW_BUNDLE), each verified,
warmed up and golden-checked on this service's runtime (service/inference/loaded_model.py), and the
micro-batcher each is served through. service/app.py's lifespan and the rollout watcher
(service/lifecycle/rollout.py) both load through here."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from kdoct.errors import BundleError, ConfigError
from service.config import Settings
from service.db.model_ledgers import head_event
from service.inference.batcher import Batcher
from service.inference.classifier import ServedModel
from service.inference.loaded_model import LoadedModel, load_model

__all__ = ["input_bytes", "load_models", "load_student", "serve"]

log = logging.getLogger(__name__)


def _model_options(settings: Settings) -> dict:
    return {
        "runtime": settings.resolved_runtime,
        "device": settings.resolved_device,
        "precision": settings.precision,
        "threads": settings.inference_threads,
        "reduced_precision_tolerance": settings.reduced_precision_tolerance,
        "warmup_batch": settings.max_batch_size,  # None: the runtime's own preferred batch size
    }


def load_student(settings: Settings, path: Path) -> LoadedModel:
    """A student bundle (the serving one, a promoted one, a shadowing candidate), verified, warmed up
    and golden-checked on this service's runtime."""
    return load_model(
        path, expected_role="student", safety_gate=settings.safety_gate == "on", **_model_options(settings)
    )


def _load_teacher(settings: Settings, student: LoadedModel) -> LoadedModel | None:
    if settings.teacher_bundle is None:
        return None
    options = _model_options(settings)
    # INT8 is the student's (exported with `export --int8`); the second opinion stays fp32.
    if settings.precision == "int8":
        options["precision"] = "fp32"
    teacher = load_model(settings.teacher_bundle, expected_role="teacher", **options)
    if teacher.class_names != student.class_names:
        raise ConfigError(
            f"the teacher's classes {teacher.class_names} differ from the student's "
            f"{student.class_names}: KDOCT_TEACHER_BUNDLE must be trained on the same class set"
        )
    return teacher


def _student_path(settings: Settings, engine: Engine) -> tuple[Path, str | None]:
    """The bundle to serve and the sha256 it must have: the newest model event's (a promotion or
    rollback, service/lifecycle/), else KDOCT_STUDENT_BUNDLE. A database that is down now is not read:
    the configured bundle serves until the rollout watcher reads the events."""
    try:
        event = head_event(engine)
    except SQLAlchemyError as exc:
        log.warning("model events not read (database unreachable: %s): serving KDOCT_STUDENT_BUNDLE until "
                    "they can be", type(exc).__name__)  # fmt: skip
        return settings.student_bundle, None
    if event is None:
        return settings.student_bundle, None
    log.info("serving the student of model event %d (%s by %s)", event.sequence, event.action, event.actor)
    return Path(event.to_path), event.to_sha256


def load_models(
    settings: Settings, engine: Engine
) -> tuple[LoadedModel, LoadedModel | None, LoadedModel | None]:
    """The student (the newest model event's, else the configured one), the teacher and the shadowing
    candidate, each verified and golden-checked."""
    path, expected_sha256 = _student_path(settings, engine)
    try:
        student = load_student(settings, path)
    except BundleError as exc:
        if expected_sha256 is None:
            raise
        raise ConfigError(
            f"the newest model event names the student at {path}, which does not load ({exc}): restore that "
            f"bundle, or roll back (`python -m service model rollback`)"
        ) from None
    if expected_sha256 is not None and student.bundle.sha256 != expected_sha256:
        raise ConfigError(
            f"the newest model event names bundle {expected_sha256} at {path}, which now holds "
            f"{student.bundle.sha256}: restore that bundle, or roll back (`python -m service model rollback`)"
        )
    teacher = _load_teacher(settings, student)
    candidate = None
    if settings.shadow_bundle is not None:
        candidate = load_student(settings, settings.shadow_bundle)
        if candidate.class_names != student.class_names:
            raise ConfigError(
                f"the shadow candidate's classes {candidate.class_names} differ from the student's "
                f"{student.class_names}: KDOCT_SHADOW_BUNDLE must be trained on the same class set"
            )
    return student, teacher, candidate


def serve(
    loaded: LoadedModel, settings: Settings, decode_threads: int, *, label: str | None = None
) -> ServedModel:
    runtime = loaded.runtime
    if settings.max_batch_wait_ms is not None:
        wait_ms = settings.max_batch_wait_ms
    else:
        wait_ms = 2.0 if runtime.batching_helps else 0.0
    batch_size = settings.max_batch_size or runtime.preferred_batch_size
    batcher = Batcher(
        runtime,
        model_label=label or loaded.bundle.name,
        max_batch_size=batch_size,
        max_wait_s=wait_ms / 1000.0,
        # Admission (service/admission.py) lets in max_queue + batch + decode_threads requests, and all
        # of them may be queued here at once (the runner has not taken the first batch yet): each waits
        # for its turn instead of being refused after paying for its decode. The bound stays as a
        # second line (the teacher's queue, explanations).
        max_queue=settings.max_queue + batch_size + decode_threads,
        timeout_s=settings.inference_timeout_s,
        num_classes=len(loaded.class_names),
    )
    return ServedModel(loaded=loaded, batcher=batcher)


def input_bytes(loaded: LoadedModel) -> int:
    height, width = loaded.spec.input_size
    return 3 * height * width * 4
