"""The application's state, typed: what `create_app` builds (settings, audit key, records, the sink and
its Recorder, authenticator, admission, ingress gate) and its lifespan completes (the pipeline, once
the models are loaded, warmed up and golden-checked; `ready`), in one `AppState` kept on the app.

Request handlers never read it from the app: they declare what they need with the dependency aliases
of service/deps.py (and service/security.py's `get_authenticator`), which all start from `get_state`,
so a test can replace any of them with `app.dependency_overrides`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

if TYPE_CHECKING:  # only for the annotations: this module imports nothing of the service when run
    from starlette.applications import Starlette

    from service.admission import Admission
    from service.audit_key import AuditKey
    from service.config import Settings
    from service.db.anchor import ChainAnchor
    from service.db.components import Records
    from service.ingress.gate import IngressGate
    from service.lifecycle.shadow import Shadow
    from service.pipeline import ClassificationPipeline
    from service.records import PredictionSink, Recorder
    from service.security import Authenticator

__all__ = ["AppState", "app_state", "get_state", "install_state"]


@dataclass(eq=False)
class AppState:
    settings: Settings
    audit_key: AuditKey
    anchor: ChainAnchor  # checkpoints of the chain's newest links
    records: Records  # engine, sessions, durable writer
    authenticator: Authenticator
    sink: PredictionSink  # where records go: records.writer, unless create_app was given another
    recorder: Recorder  # puts answers on record through `sink`
    admission: Admission
    gate: IngressGate
    # Set by the lifespan: the pipeline once the models are loaded; ready once everything has started.
    pipeline: ClassificationPipeline | None = None
    shadow: Shadow | None = None  # the candidate shadowing live requests (KDOCT_SHADOW_BUNDLE)
    ready: bool = False


def install_state(app: Starlette, state: AppState) -> None:
    app.state.kdoct = state


def app_state(app: Starlette) -> AppState:
    """The app's state (the app itself and tests; request handlers use the dependencies)."""
    return app.state.kdoct


async def get_state(request: Request) -> AppState:
    """The dependency every other one starts from (`async`: FastAPI runs a sync one in a thread)."""
    return app_state(request.app)
