"""The routes take what they need from the dependencies of service/deps.py, all rooted in the typed
AppState (service/state.py), never from the app's state directly: `app.dependency_overrides` replaces
any of them, and the route uses the replacement."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fastapi.testclient import TestClient

from kdoct_testing.records import MemorySink
from service.app import create_app
from service.deps import get_recorder
from service.records import Recorder
from service.state import app_state, get_state

SERVICE = Path(__file__).resolve().parents[2] / "service"


def test_an_overridden_recorder_takes_the_answers_of_post_classify(make_settings, jpeg_paths) -> None:
    own_sink, other_sink = MemorySink(), MemorySink()
    app = create_app(make_settings(second_opinion="never"), sink=own_sink)
    with TestClient(app) as client:
        app.dependency_overrides[get_recorder] = lambda: Recorder(other_sink, app_state(app).audit_key)
        data = jpeg_paths[0].read_bytes()
        response = client.post("/classify", files={"file": ("scan.jpeg", data, "image/jpeg")})
        assert response.status_code == 200, response.text
        assert other_sink.get(response.json()["prediction_id"]) is not None
        assert own_sink.all() == []  # the app's own Recorder was never asked

        app.dependency_overrides.clear()
        response = client.post("/classify", files={"file": ("scan.jpeg", data, "image/jpeg")})
        assert own_sink.get(response.json()["prediction_id"]) is not None


async def _ready_sink() -> bool:
    return True


def test_the_state_itself_is_a_dependency(make_settings) -> None:
    """Without its lifespan (no model loaded) the app is not ready; a state that says it is, given
    through get_state, is what /health/ready and /v2/health/ready read."""
    app = create_app(make_settings())
    client = TestClient(app)  # not entered: the lifespan does not run
    assert client.get("/health/ready").status_code == 503
    sink = SimpleNamespace(ready=_ready_sink, degraded=True)
    app.dependency_overrides[get_state] = lambda: SimpleNamespace(ready=True, sink=sink)
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json() == {"status": "ready", "records": "spool"}
    assert client.get("/v2/health/ready").status_code == 200


def test_no_route_reads_the_app_state() -> None:
    offending = [
        f"{path.relative_to(SERVICE.parent)}:{number}"
        for path in sorted((SERVICE / "api").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "app.state" in line
    ]
    assert offending == []
