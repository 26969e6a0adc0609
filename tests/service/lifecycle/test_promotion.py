"""Promotion and rollback (service/lifecycle/promotion.py, rollout.py): refused on short evidence, chained
model events, every answer switching once the worker has read the event, the restart serving it."""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError
from kdoct_testing.bundles import CLASSES
from service.__main__ import main
from service.audit_key import load_audit_key
from service.db.ledger import MODEL_EVENTS, verify_ledger
from service.db.model_ledgers import append_event, events
from service.db.session import make_engine
from service.db.tables import Feedback, ShadowResult
from service.lifecycle import promotion
from tests.service.lifecycle.conftest import stored_shadow_results

OPEN = {
    "promote_min_shadowed": 4,
    "promote_min_agreement": 0.0,
    "promote_min_sensitivity": 0.0,
    "promote_min_feedback_per_class": 0,
    "model_poll_s": 0.1,
}


def _post(client, path) -> dict:
    response = client.post("/classify", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


def _serving(client, expected: str, timeout_s: float = 20.0) -> str:
    """The student GET /models names once it is `expected` (the worker polls the events)."""
    deadline = time.monotonic() + timeout_s
    while True:
        students = [m for m in client.get("/models").json()["models"] if m["role"] == "student"]
        if students[0]["sha256"] == expected or time.monotonic() > deadline:
            return students[0]["sha256"]
        time.sleep(0.05)


def test_promote_then_roll_back_over_http(lifecycle_app, candidate, bundles, jpeg_paths, tmp_path):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    current, new = load_bundle(bundles["student"]).sha256, load_bundle(candidate).sha256
    with lifecycle_app(shadow_bundle=candidate, **OPEN) as client:
        for path in jpeg_paths[:4]:
            _post(client, path)
        assert stored_shadow_results(url, 4) == 4
        assert client.post("/models/rollback").status_code == 409  # nothing promoted yet
        wrong = client.post(f"/models/candidates/{'0' * 64}/promote")
        assert wrong.status_code == 409 and "must be the one that shadowed" in wrong.json()["detail"]

        promoted = client.post(f"/models/candidates/{new}/promote")
        assert promoted.status_code == 200, promoted.text
        event = promoted.json()
        assert (event["action"], event["actor"], event["from_sha256"], event["to_sha256"]) == (
            "promote", "api:anonymous", current, new,
        )  # fmt: skip
        assert event["evidence"]["shadowed"] == 4
        assert _serving(client, new) == new
        after = _post(client, jpeg_paths[0])
        assert after["model"] == {"name": "test-student", "version": "0.0.2", "sha256": new}
        # The candidate now serves: it no longer shadows itself.
        assert stored_shadow_results(url, 5, timeout_s=1) == 4

        rolled = client.post("/models/rollback")
        assert rolled.status_code == 200, rolled.text
        assert (rolled.json()["from_sha256"], rolled.json()["to_sha256"]) == (new, current)
        assert _serving(client, current) == current
        assert _post(client, jpeg_paths[0])["model"]["sha256"] == current
    engine = make_engine(url)
    history = events(engine)
    assert [e.action for e in history] == ["rollback", "promote"]
    assert verify_ledger(engine, MODEL_EVENTS, load_audit_key(tmp_path / "audit" / "audit.key")).ok


def test_promotion_is_refused_on_short_evidence(lifecycle_app, candidate, jpeg_paths, tmp_path):
    sha256 = load_bundle(candidate).sha256
    with lifecycle_app(shadow_bundle=candidate) as client:
        _post(client, jpeg_paths[0])
        refused = client.post(f"/models/candidates/{sha256}/promote")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert "results, 500 needed" in refused.json()["detail"]
    assert "clinician labels on shadowed predictions, 20 needed" in refused.json()["detail"]
    assert events(make_engine(f"sqlite:///{tmp_path / 'records.db'}")) == []


def test_sensitivity_on_feedback_counts_the_latest_label(lifecycle_app, candidate, jpeg_paths, tmp_path):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    sha256 = load_bundle(candidate).sha256
    with lifecycle_app(shadow_bundle=candidate) as client:
        answers = [_post(client, path) for path in jpeg_paths[:3]]
        assert stored_shadow_results(url, 3) == 3
    engine = make_engine(url)
    with engine.connect() as conn:
        said_by_candidate = dict(
            conn.execute(select(ShadowResult.prediction_id, ShadowResult.candidate_label)).all()
        )
    first = uuid.UUID(answers[0]["prediction_id"])
    said = said_by_candidate[first]
    other = next(name for name in CLASSES if name != said)
    now = datetime.now(UTC)
    with engine.begin() as conn:  # a clinician disagrees with the candidate, then corrects the label
        for label, at in ((other, now - timedelta(minutes=5)), (said, now)):
            conn.execute(
                insert(Feedback).values(id=uuid.uuid4(), prediction_id=first, label=label, created_at=at)
            )
    evidence = promotion.candidate_evidence(engine, sha256, CLASSES, promotion.Thresholds(1, 0.0, 1.0, 1))
    # One label, the latest, agreeing: 1/1, Wilson 95 % [0.2065, 1].
    assert evidence["sensitivity_on_feedback"][said] == {
        "labelled": 1, "value": 1.0, "low": pytest.approx(0.2065, abs=1e-4), "high": 1.0,
    }  # fmt: skip
    assert evidence["sensitivity_on_feedback"][other]["labelled"] == 0
    short = evidence["short_of_thresholds"]
    assert sorted(line.split(":")[0] for line in short) == sorted(name for name in CLASSES if name != said)
    with engine.begin() as conn:  # now a later label contradicts it: sensitivity 0 < 1.0
        conn.execute(
            insert(Feedback).values(
                id=uuid.uuid4(), prediction_id=first, label=other, created_at=now + timedelta(minutes=1)
            )
        )
    evidence = promotion.candidate_evidence(engine, sha256, CLASSES, promotion.Thresholds(1, 0.0, 1.0, 0))
    assert evidence["short_of_thresholds"] == [f"{other}: sensitivity on feedback 0.000 < 1.0"]


def test_a_restarted_service_serves_the_promoted_bundle(lifecycle_app, candidate, jpeg_paths, tmp_path):
    sha256 = load_bundle(candidate).sha256
    url = f"sqlite:///{tmp_path / 'records.db'}"
    with lifecycle_app(shadow_bundle=candidate, **OPEN) as client:
        for path in jpeg_paths[:4]:
            _post(client, path)
        assert stored_shadow_results(url, 4) == 4
        assert client.post(f"/models/candidates/{sha256}/promote").status_code == 200
    with lifecycle_app(**OPEN) as client:  # no waiting: the newest event is read before serving
        assert _post(client, jpeg_paths[0])["model"]["sha256"] == sha256


def test_a_worker_refuses_an_event_whose_bundle_changed_and_serves_on(
    lifecycle_app, make_settings, candidate, bundles, jpeg_paths, tmp_path
):
    copy = tmp_path / "candidate-copy"
    shutil.copytree(candidate, copy)
    url = f"sqlite:///{tmp_path / 'records.db'}"
    current, sha256 = load_bundle(bundles["student"]).sha256, load_bundle(candidate).sha256
    with lifecycle_app(shadow_bundle=copy, **OPEN) as client:
        for path in jpeg_paths[:4]:
            _post(client, path)
        assert stored_shadow_results(url, 4) == 4
        # The candidate's directory altered after it shadowed: it no longer verifies, no promotion.
        (copy / "golden" / "expected.json").write_text("{}")
        refused = client.post(f"/models/candidates/{sha256}/promote")
        assert refused.status_code == 409 and "does not verify" in refused.json()["detail"]
        # An event naming it anyway (written with the audit key, past the checks): the worker refuses
        # to switch, counts it, and serves on.
        before = _switches(client.get("/metrics").text, "refused")
        append_event(
            make_engine(url),
            {
                "action": "promote", "actor": "intruder", "from_sha256": current,
                "from_path": str(bundles["student"]), "to_sha256": sha256, "to_name": "test-student",
                "to_version": "0.0.2", "to_path": str(copy), "evidence": {},
            },
            key=load_audit_key(tmp_path / "audit" / "audit.key"),
            after_sequence=None,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while _switches(client.get("/metrics").text, "refused") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _switches(client.get("/metrics").text, "refused") == before + 1
        assert _post(client, jpeg_paths[0])["model"]["sha256"] == current
    # A restart does not serve it either: it refuses to start, naming the fix.
    with pytest.raises(ConfigError, match="does not verify|sha256|roll back"), lifecycle_app(**OPEN):
        pass


def _switches(metrics: str, outcome: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'kdoct_model_switches_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_command_line_promotes_refuses_and_rolls_back(
    make_settings, candidate, bundles, jpeg_paths, tmp_path, monkeypatch, capsys, lifecycle_app
):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    with lifecycle_app(shadow_bundle=candidate) as client:
        for path in jpeg_paths[:4]:
            _post(client, path)
        assert stored_shadow_results(url, 4) == 4
    monkeypatch.setenv("KDOCT_STUDENT_BUNDLE", str(bundles["student"]))
    monkeypatch.setenv("KDOCT_AUDIT_KEY_FILE", str(tmp_path / "audit" / "audit.key"))
    monkeypatch.setenv("KDOCT_DATABASE_URL", url)
    assert main(["model", "promote", "--bundle", str(candidate)]) == 1
    assert "is not promoted: shadowed 4 results, 500 needed" in capsys.readouterr().err
    monkeypatch.setenv("KDOCT_PROMOTE_MIN_SHADOWED", "4")
    monkeypatch.setenv("KDOCT_PROMOTE_MIN_AGREEMENT", "0")
    monkeypatch.setenv("KDOCT_PROMOTE_MIN_FEEDBACK_PER_CLASS", "0")
    assert main(["model", "promote", "--bundle", str(candidate), "--actor", "dr-safety"]) == 0
    assert "promote by dr-safety" in capsys.readouterr().out
    assert main(["model", "rollback"]) == 0
    assert "rollback by cli:" in capsys.readouterr().out
    assert main(["model", "status"]) == 0
    status = capsys.readouterr().out
    assert status.startswith(f"serving {load_bundle(bundles['student']).sha256}")
    assert main(["audit", "verify", "--no-checkpoints"]) == 0
    assert "2 model_events rows, chain intact" in capsys.readouterr().out


def test_the_model_change_doors_take_no_body(lifecycle_app, candidate):
    """Promotion and rollback are doors of the ingress layer like POST /classify: a body is refused
    from its headers (413), before the route runs."""
    sha256 = load_bundle(candidate).sha256
    with lifecycle_app(shadow_bundle=candidate) as client:
        for path in (f"/models/candidates/{sha256}/promote", "/models/rollback"):
            refused = client.post(
                path, content=b'{"bundle": "/etc"}', headers={"Content-Type": "application/json"}
            )
            assert refused.status_code == 413, refused.text
            assert refused.json()["type"].endswith("/payload-too-large")
        bad = client.get("/models/candidates/not-a-sha/agreement")
        assert bad.status_code == 422 and bad.json()["type"].endswith("/validation-error")
