"""The query and feedback API through the app: bad input is a 4xx, a database that does not answer a 503."""

from __future__ import annotations

import base64
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from service.app import create_app
from service.audit_key import load_audit_key
from service.db.anchor import read_checkpoints
from service.db.audit import verify
from service.deps import get_sessions


def _classified(client: TestClient, jpeg_paths) -> str:
    response = client.post(
        "/classify", files={"file": ("scan.jpeg", jpeg_paths[0].read_bytes(), "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    return response.json()["prediction_id"]


def test_bad_cursor_and_unknown_feedback_label_are_4xx(make_settings, jpeg_paths, tmp_path):
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/kdoct.db", spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings)) as client:
        prediction_id = _classified(client, jpeg_paths)
        huge = base64.urlsafe_b64encode(b"s" + b"9" * 20).decode().rstrip("=")
        response = client.get("/predictions", params={"cursor": huge})
        assert response.status_code == 400 and "invalid cursor" in response.json()["detail"]
        response = client.post(f"/predictions/{prediction_id}/feedback", json={"label": "glaucoma"})
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "unknown label 'glaucoma'" in response.json()["detail"]
        response = client.post(f"/predictions/{prediction_id}/feedback", json={"label": "drusen"})
        assert response.status_code == 201 and response.json()["label"] == "drusen"


def test_unreachable_database_answers_503_on_reads(make_settings, jpeg_paths, tmp_path):
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/kdoct.db", spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings)) as client:
        prediction_id = _classified(client, jpeg_paths)
        # A database file that cannot be opened stands in for a database server that is down.
        gone = create_engine(f"sqlite:///{tmp_path}/missing-dir/none.db")
        client.app.dependency_overrides[get_sessions] = lambda: sessionmaker(gone)
        for response in (
            client.get("/predictions"),
            client.get(f"/predictions/{prediction_id}"),
            client.post(f"/predictions/{prediction_id}/feedback", json={"label": "cnv"}),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
            assert response.json()["type"].endswith("/not-ready")


def _reads(database_url: str) -> list[tuple]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT prediction_id, route, request_id FROM prediction_reads")))
    finally:
        engine.dispose()


def test_every_read_is_logged_first_and_a_read_that_cannot_be_logged_is_not_answered(
    make_settings, jpeg_paths, tmp_path
):
    database_url = f"sqlite:///{tmp_path}/kdoct.db"
    settings = make_settings(database_url=database_url, spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings)) as client:
        ids = [_classified(client, jpeg_paths) for _ in range(3)]
        assert _reads(database_url) == []  # classifying is not reading

        assert client.get(f"/predictions/{ids[0]}").status_code == 200
        assert client.get("/predictions", params={"limit": 2}).status_code == 200
        assert client.get(f"/predictions/{uuid.uuid4()}").status_code == 404  # nothing shown, nothing logged
        reads = _reads(database_url)
        assert sorted((str(uuid.UUID(str(p))), route) for p, route, _ in reads) == sorted(
            [(ids[0], "/predictions/{prediction_id}"), (ids[2], "/predictions"), (ids[1], "/predictions")]
        )
        assert all(request_id.startswith("hmac-sha256:") for _, _, request_id in reads)

        # The read log refuses rows (a full disk, a revoked grant): the predictions are not shown.
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_reads BEFORE INSERT ON prediction_reads "
                    "BEGIN SELECT RAISE(ABORT, 'read log unavailable'); END"
                )
            )
        engine.dispose()
        for response in (client.get(f"/predictions/{ids[0]}"), client.get("/predictions")):
            assert response.status_code == 503, response.text
            assert "probabilities" not in response.text and response.json()["type"].endswith("/not-ready")
        assert len(_reads(database_url)) == 3


def test_the_service_checkpoints_its_chain_head_at_shutdown(make_settings, jpeg_paths, tmp_path):
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path}/kdoct.db",
        spool_dir=tmp_path / "spool",
        audit_key_file=tmp_path / "audit" / "audit.key",
        anchor_file=tmp_path / "audit" / "anchors.jsonl",
        anchor_interval_s=3600,  # only the shutdown checkpoint
    )
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            _classified(client, jpeg_paths)
        assert not settings.anchor_file.exists()
    key = load_audit_key(settings.audit_key_file, create=False)
    found = read_checkpoints(settings.anchor_file, key)
    assert found.ok and [c.sequence for c in found.checkpoints] == [2]
    engine = create_engine(settings.database_url)
    try:
        assert verify(engine, found.checkpoints, key=key).checkpoints_checked == 1
    finally:
        engine.dispose()
