"""The query and feedback API through the app: bad input is a 4xx, a database that does not answer a 503."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from service.app import create_app


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
        client.app.state.records.sessions = sessionmaker(gone)
        for response in (
            client.get("/predictions"),
            client.get(f"/predictions/{prediction_id}"),
            client.post(f"/predictions/{prediction_id}/feedback", json={"label": "cnv"}),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
            assert response.json()["type"].endswith("/not-ready")
