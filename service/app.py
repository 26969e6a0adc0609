"""The FastAPI application. Everything is built inside `create_app` and its lifespan, never at import,
so tests can run several apps with their own settings in one process. What they build is one typed
AppState (service/state.py), which handlers reach through the dependencies of service/deps.py.

Start-up order: load and verify the bundles, build their runtimes, warm up, reproduce each bundle's
golden probabilities on the runtime that will serve it (a mismatch refuses to start), start the
batchers and the record sink, and only then report ready. Shutdown drains in the reverse order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.exc import SQLAlchemyError

from kdoct.errors import ConfigError, KdoctError
from service import prometheus
from service.admission import Admission
from service.api import (
    classify,
    health,
    inference_protocol,
    lifecycle,
    manifests,
    monitoring,
    page,
    predictions,
    scrape,
)
from service.audit_key import load_audit_key
from service.config import Settings, get_settings, parse_label_prior
from service.db import migrate
from service.db.anchor import ChainAnchor
from service.db.components import build_records
from service.db.roles import audit_log_rewrite_powers
from service.db.session import is_postgresql
from service.explain import Explainer
from service.imaging import ImageLimits
from service.inference.classifier import Classifier
from service.inference.loaded_model import LoadedModel
from service.inference.runtime import cpu_count, keep_blas_to_one_thread
from service.ingress.body import MemoryShare
from service.ingress.budget import MemoryBudget, RequestLimits
from service.ingress.gate import IngressGate
from service.intake import Intake
from service.lifecycle.rollout import Rollout
from service.lifecycle.shadow import Shadow
from service.logs import configure_logging
from service.middleware import BodyPolicy, RequestContextMiddleware
from service.model_set import input_bytes, load_models, load_student, serve
from service.monitoring import drift
from service.pipeline import ClassificationPipeline
from service.problems import install_problem_handlers
from service.records import PredictionSink, Recorder
from service.security import Authenticator, require_scope
from service.state import AppState, app_state, install_state

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)

API_DESCRIPTION = """Retinal OCT B-scan classification (normal / drusen / CNV) with a knowledge-distilled
student and an optional teacher second opinion. Every answered prediction is on record first.
Errors are RFC 9457 `application/problem+json` with a stable `type` URI."""


def _check_database_role(engine, mode: str) -> None:
    """Log (or refuse, KDOCT_DB_ROLE_CHECK=refuse) a database role that could rewrite the records. A
    database that is down now is not checked: the service starts on its spool (docs/RECORDS.md)."""
    try:
        powers = audit_log_rewrite_powers(engine)
    except SQLAlchemyError as exc:
        log.warning("database role not checked (database unreachable: %s)", type(exc).__name__)
        return
    if not powers:
        return
    message = (
        f"the service's database role could rewrite the audit log ({', '.join(powers)}): log in as a "
        f"member of kdoct_runtime instead (docs/SECURITY.md)"
    )
    if mode == "refuse":
        raise ConfigError(message + "; refusing to start (KDOCT_DB_ROLE_CHECK=refuse)")
    log.error("%s", message)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app_state(app)
    settings, sink = state.settings, state.sink
    keep_blas_to_one_thread()
    if not is_postgresql(settings.database_url):
        # The embedded SQLite store migrates itself (first: the model events say which student serves);
        # PostgreSQL is migrated by the deployment (`python -m service db upgrade` in
        # docker/entrypoint.sh) before replicas start.
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
    else:
        await asyncio.to_thread(_check_database_role, state.records.engine, settings.db_role_check)
    try:
        student, teacher, candidate = await asyncio.to_thread(load_models, settings, state.records.engine)
    except KdoctError as exc:
        log.error("refusing to start: %s", exc)
        raise
    keep_blas_to_one_thread()  # again: loading may have brought in another OpenBLAS (scipy's)
    decode_threads = settings.decode_threads or cpu_count()
    served = [serve(student, settings, decode_threads)]
    if teacher:
        served.append(serve(teacher, settings, decode_threads))
    # Now that the student's batch size is resolved (adaptive by runtime): what may wait, what may run,
    # and what the decode threads prepare meanwhile (without them the queue runs dry between batches).
    state.admission.limit = settings.max_queue + served[0].batcher.max_batch_size + decode_threads
    # Each frame of a request becomes a float32 input of each model's size (ingress budget, per frame).
    state.gate.input_bytes_per_frame = sum(input_bytes(item.loaded) for item in served)
    # Uploads are decoded, checked and preprocessed for the student in the decode pool.
    intake = Intake(
        student.spec,
        student.gate,
        limits=ImageLimits(settings.max_image_pixels, settings.max_frames, settings.max_volume_pixels),
        pool=ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="kdoct-decode"),
    )
    classifier = Classifier(
        served[0],
        served[1] if teacher else None,
        policy=settings.second_opinion_policy,
        threshold=settings.second_opinion_threshold,
        preprocess=intake.preprocess,
        prepare_again=intake.prepare_again,
    )
    # Grad-CAM runs on its own worker thread, built with the models and closed with them.
    explainer = Explainer()
    state.pipeline = ClassificationPipeline(intake, classifier, explainer)
    shadow = None
    if candidate is not None:
        shadow = _shadow(state, candidate, intake, decode_threads)
        state.pipeline.on_answer = shadow.offer
        state.shadow = shadow
        served.append(shadow.candidate.student)

    prior = _label_prior(settings, student)

    def switched(old: LoadedModel, new: LoadedModel) -> None:
        prometheus.MODEL_INFO.labels(role="student", **old.identity()).set(0)
        prometheus.MODEL_INFO.labels(role="student", **new.identity()).set(1)
        prometheus.initialise_label_sets(new.bundle.name, new.class_names)
        drift.export_references(new, prior)
        state.gate.input_bytes_per_frame += input_bytes(new) - input_bytes(old)

    rollout = Rollout(
        classifier, intake, engine=state.records.engine,
        load=functools.partial(load_student, settings),
        serve=functools.partial(serve, settings=settings, decode_threads=decode_threads),
        on_switch=switched, poll_s=settings.model_poll_s, drain_timeout_s=settings.drain_timeout_s,
    )  # fmt: skip
    await sink.start()
    await state.anchor.start()
    await state.authenticator.start()  # after the migration: loads the API keys, keeps them fresh
    for item in served:
        item.batcher.start()
    for item in served[: 2 if teacher else 1]:
        prometheus.MODEL_INFO.labels(role=item.loaded.role, **item.loaded.identity()).set(1)
        prometheus.MODEL_READY.labels(role=item.loaded.role).set(1)
    if shadow is not None:
        shadow.start()
        prometheus.MODEL_INFO.labels(role="shadow", **candidate.identity()).set(1)
    rollout.start()
    prometheus.initialise_label_sets(student.bundle.name, student.class_names)
    drift.export_references(student, prior)
    state.ready = True
    shadowing = ""
    if candidate is not None:
        shadowing = (
            f", shadow {candidate.bundle.name} {candidate.bundle.version} ({candidate.bundle.sha256[:12]}) "
            f"on {settings.shadow_share:.0%} of requests"
        )
    log.info("ready: second opinion %s, threshold %.2f, safety gate %s%s", settings.second_opinion_policy,
             settings.second_opinion_threshold, settings.safety_gate, shadowing)  # fmt: skip
    if settings.safety_gate == "off":
        log.warning(
            "KDOCT_SAFETY_GATE=off: every image is forced into a class, blank frames and photographs "
            "included; for research only, never in clinical use"
        )
    try:
        yield
    finally:
        state.ready = False
        await rollout.stop()
        await state.authenticator.stop()
        prometheus.MODEL_READY.labels(role="student").set(0)
        if teacher:
            prometheus.MODEL_READY.labels(role="teacher").set(0)
        student_batchers = [classifier.student.batcher] + ([classifier.teacher.batcher] if teacher else [])
        await asyncio.gather(*(batcher.stop(settings.drain_timeout_s) for batcher in student_batchers))
        if shadow is not None:
            await shadow.stop(settings.drain_timeout_s)
            await shadow.candidate.student.batcher.stop(0.0)
        try:
            await sink.stop()
        finally:
            await state.anchor.stop()  # after the writer drained: its last append is checkpointed
        await asyncio.to_thread(state.records.engine.dispose)
        intake.close()
        explainer.close()


def _label_prior(settings: Settings, student: LoadedModel) -> dict[str, float] | None:
    """KDOCT_DRIFT_LABEL_PRIOR, checked against the student's classes; None: the bundle's own prior."""
    if not settings.drift_label_prior:
        return None
    prior = parse_label_prior(settings.drift_label_prior)
    if set(prior) != set(student.class_names):
        raise ConfigError(
            f"KDOCT_DRIFT_LABEL_PRIOR names {sorted(prior)}; the student's classes are "
            f"{sorted(student.class_names)}"
        )
    return prior


def _shadow(state: AppState, candidate: LoadedModel, intake: Intake, decode_threads: int) -> Shadow:
    """The candidate as a classifier of its own (its batcher labelled apart in the metrics), shadowing
    a share of the answers (service/lifecycle/shadow.py)."""
    settings = state.settings
    served = serve(candidate, settings, decode_threads, label=f"shadow:{candidate.bundle.name}")
    classifier = Classifier(
        served, None, policy="never", threshold=settings.second_opinion_threshold,
        preprocess=intake.preprocess, prepare_again=intake.prepare_again,
    )  # fmt: skip
    student = state.pipeline.classifier
    return Shadow(
        classifier, engine=state.records.engine, key=state.audit_key, share=settings.shadow_share,
        timeout_s=settings.shadow_timeout_s, max_pending=settings.shadow_max_pending,
        answers_waiting=lambda: student.student.batcher.depth > 0,
    )  # fmt: skip


def _build_state(settings: Settings, sink: PredictionSink | None) -> AppState:
    """What the app holds from the start; the lifespan adds the pipeline. Nothing here touches a
    database: the engine and the writer connect lazily."""
    audit_key = load_audit_key(settings.audit_key_file)
    anchor = ChainAnchor(audit_key, settings.anchor_file, interval_s=settings.anchor_interval_s)
    records = build_records(
        settings.database_url,
        settings.spool_dir,
        chain_key=audit_key,
        auth_enabled=settings.auth == "enabled",
        queue_size=settings.writer_queue_size,
        batch_size=settings.writer_batch_size,
        statement_timeout_s=settings.db_statement_timeout_s,
        lock_timeout_s=settings.db_lock_timeout_s,
        record_ack=settings.record_ack,
        record_deadline_s=settings.record_deadline_s,
        on_append=anchor.note,
    )
    auth_enabled = settings.auth == "enabled"
    authenticator = Authenticator(
        records.sessions if auth_enabled else None,
        enabled=auth_enabled,
        refresh_s=settings.api_key_refresh_s,
        failure_limit=settings.auth_failure_limit,
        failure_window_s=settings.auth_failure_window_s,
        on_failure=lambda reason: prometheus.AUTH_FAILURES.labels(reason=reason).inc(),
    )
    sink = sink if sink is not None else records.writer
    # Classifying requests are admitted before their body is read (service/admission.py); the limit is
    # final once the lifespan has resolved the batch size.
    admission = Admission(
        settings.max_queue + (settings.max_batch_size or 1), wait_s=settings.admission_wait_s
    )
    gate = IngressGate(
        admission,
        MemoryBudget(settings.memory_budget_bytes),
        RequestLimits(max_frames=settings.max_frames, max_pixels=settings.max_volume_pixels),
        max_in_flight_per_key=settings.max_in_flight_per_key,
    )
    return AppState(
        settings=settings,
        audit_key=audit_key,
        anchor=anchor,
        records=records,
        authenticator=authenticator,
        sink=sink,
        recorder=Recorder(sink, audit_key),
        admission=admission,
        gate=gate,
    )


def create_app(settings: Settings | None = None, *, sink: PredictionSink | None = None) -> FastAPI:
    """The service app; models load in its lifespan. `sink` defaults to the durable database writer."""
    settings = settings if settings is not None else get_settings()
    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("kdoct")
    except PackageNotFoundError:
        app_version = "0+unknown"
    app = FastAPI(
        title="kdoct: OCT B-scan classification service",
        description=API_DESCRIPTION,
        version=app_version,
        lifespan=_lifespan,
        # /docs is ours (service/api/page.py): FastAPI's loads Swagger UI from a CDN. No ReDoc (CDN too).
        docs_url=None,
        redoc_url=None,
    )
    state = _build_state(settings, sink)
    install_state(app, state)
    install_problem_handlers(app)
    routers = (
        classify.router,
        health.router,
        scrape.router,
        page.router,
        predictions.router,
        lifecycle.router,
        monitoring.router,
    )
    for router in routers:
        app.include_router(router)
    # The Open Inference Protocol v2 (tritonclient, KServe): its routes check their own scopes.
    app.include_router(inference_protocol.router)
    # GET /models tells what is deployed: a reader's business, not the public's.
    app.include_router(manifests.router, dependencies=[Depends(require_scope("read"))])
    page.mount_static(app)
    known_paths = {getattr(route, "path", "") for route in app.routes}
    app.add_middleware(
        RequestContextMiddleware,
        gate=state.gate,
        body=BodyPolicy(
            max_upload_bytes=settings.max_upload_bytes,
            read_timeout_s=settings.body_read_timeout_s,
            min_rate=settings.min_body_bytes_per_s,
            max_json_bytes=settings.max_json_bytes,
        ),
        share=MemoryShare(settings.memory_budget_bytes // 4, settings.body_spill_dir),
        known_paths=known_paths,
        # Keys and scopes are checked before a body is read (docs/SECURITY.md); auth off: nothing to check.
        authenticate=state.authenticator.authenticate if settings.auth == "enabled" else None,
    )
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory (`service.app:create_app_from_env`): settings from KDOCT_* and .env."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
