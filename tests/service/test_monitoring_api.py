"""GET /monitoring/performance through the app, on known rows (kdoct_testing/feedback.py) whose
figures are worked out by hand; bad parameters are 4xx problem+json; aggregates log no reads; and
feedback accepted through the API is counted in kdoct_feedback_total."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from kdoct_testing.feedback import MODEL_A, store_known_feedback
from service.app import create_app
from service.deps import get_sessions
from service.monitoring.performance import wilson


@pytest.fixture
def known(make_settings, tmp_path):
    """The app on a SQLite file holding the known rows; (client, database URL)."""
    url = f"sqlite:///{tmp_path}/kdoct.db"
    with TestClient(create_app(make_settings(database_url=url, spool_dir=tmp_path / "spool"))) as client:
        engine = create_engine(url)
        store_known_feedback(engine)
        engine.dispose()
        yield client, url


def _count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text(f"SELECT count(*) FROM {table}"))
    finally:
        engine.dispose()


def test_december_by_week_for_one_model(known) -> None:
    client, url = known
    params = {"since": "2026-12-01T00:00:00Z", "until": "2027-01-01T00:00:00Z", "bucket": "week",
              "model_sha256": MODEL_A["model_sha256"]}  # fmt: skip
    response = client.get("/monitoring/performance", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bucket"] == "week" and body["confident_threshold"] == 0.8
    (model,) = body["models"]
    assert model["model"] == {"name": "kdoct-student", "version": "0.1.0", "sha256": "a" * 64}
    overall = model["overall"]
    assert (overall["predictions"], overall["with_feedback"], overall["answered_with_feedback"]) == (8, 7, 6)
    assert overall["feedback_coverage"] == pytest.approx(0.875)
    classes = {c["name"]: c for c in overall["classes"]}
    assert [(c["tp"], c["fn"], c["fp"], c["tn"]) for c in classes.values()] == [
        (2, 0, 1, 3),
        (1, 2, 0, 3),
        (1, 0, 1, 4),
    ]
    normal = classes["normal"]
    assert normal["sensitivity"] == {"value": 1.0, "low": pytest.approx(wilson(2, 2).low), "high": 1.0}
    assert normal["specificity"]["value"] == 0.75 and normal["ppv"]["value"] == pytest.approx(2 / 3)
    assert normal["ppv"]["low"] == pytest.approx(0.2077, abs=1e-4)  # 2/3 by the formula: 0.2077-0.9385
    assert normal["ppv"]["high"] == pytest.approx(0.9385, abs=1e-4)
    assert normal["contradicted_confident"] == 1 and overall["contradicted_confident"] == 1
    assert overall["ungradable"] == {"with_feedback": 1, "by_feedback_label": {"cnv": 1}}
    assert [(w["start"][:10], w["predictions"], w["with_feedback"]) for w in model["buckets"]] == [
        ("2026-11-30", 3, 3), ("2026-12-07", 5, 4)
    ]  # fmt: skip
    # Counts only: nobody was shown a prediction, so no read is logged.
    assert _count(url, "prediction_reads") == 0

    everything = client.get("/monitoring/performance").json()
    assert [m["model"]["version"] for m in everything["models"]] == ["0.1.0", "0.2.0"]
    assert everything["models"][0]["overall"]["predictions"] == 9 and everything["models"][0]["buckets"] == []


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"bucket": "year"}, 422),
        ({"model_sha256": "A" * 64}, 422),
        ({"model_sha256": "abc"}, 422),
        ({"since": "yesterday"}, 422),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, 400),
        ({"since": "2026-12-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, 400),
        ({"since": "0001-01-01T00:00:00+05:00"}, 400),
        ({"until": "9999-12-31T23:59:59Z", "bucket": "month"}, 400),
    ],
)
def test_bad_parameters_are_4xx_problems(known, params, status) -> None:
    client, _ = known
    response = client.get("/monitoring/performance", params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_a_database_that_does_not_answer_is_503(known, tmp_path) -> None:
    client, _ = known
    gone = create_engine(f"sqlite:///{tmp_path}/missing-dir/none.db")
    client.app.dependency_overrides[get_sessions] = lambda: sessionmaker(gone)
    response = client.get("/monitoring/performance")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"


def _feedback_count(client: TestClient, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kdoct_feedback_total{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no kdoct_feedback_total{{{wanted}}} series")


def test_accepted_feedback_is_counted_with_bounded_labels(make_settings, jpeg_paths, tmp_path) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/kdoct.db", spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/classify", files={"file": ("scan.jpeg", jpeg_paths[0].read_bytes(), "image/jpeg")}
        )
        answer = response.json()
        model, predicted = answer["model"]["name"], answer["label"]
        other = next(name for name in answer["probabilities"] if name != predicted)
        labels = {
            "model": model, "predicted": predicted, "actual": other, "agrees": "false",
            "confident": str(answer["confidence"] >= settings.second_opinion_threshold).lower(),
            "gradable": "none" if answer["gradable"] is None else str(answer["gradable"]).lower(),
        }  # fmt: skip
        before = _feedback_count(client, **labels)  # every series exists from the start, at 0 or more
        url = f"/predictions/{answer['prediction_id']}/feedback"
        assert client.post(url, json={"label": other, "note": "free text never a label"}).status_code == 201
        assert _feedback_count(client, **labels) == before + 1
        # Refused feedback is not counted; nothing of the note reaches the metrics.
        assert client.post(url, json={"label": "glaucoma"}).status_code == 422
        metrics = client.get("/metrics").text
        assert "glaucoma" not in metrics and "free text" not in metrics
        assert _feedback_count(client, **labels) == before + 1


def test_the_read_scope_is_needed(make_settings, tmp_path) -> None:
    from service.db.api_clients import create_client
    from service.state import app_state

    settings = make_settings(
        auth="enabled", database_url=f"sqlite:///{tmp_path}/kdoct.db", spool_dir=tmp_path / "spool"
    )
    with TestClient(create_app(settings)) as client:
        with app_state(client.app).records.sessions() as session:
            _, classifier = create_client(session, "modality", ["classify", "feedback"])
            _, reader = create_client(session, "safety-officer", ["read"])
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {classifier}"}, 403)):
            response = client.get("/monitoring/performance", headers=headers)
            assert response.status_code == status and "models" not in response.text
        response = client.get("/monitoring/performance", headers={"Authorization": f"Bearer {reader}"})
        assert response.status_code == 200 and response.json()["models"] == []
