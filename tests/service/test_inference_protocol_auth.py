"""The Open Inference Protocol's routes with auth on (the e2e server runs with it off): health is
public; model metadata, readiness and infer need a key with the classify scope, checked before an
infer body is read; errors keep the protocol's {"error": ...} shape; the record names the client."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from service.app import create_app
from service.db.api_clients import create_client
from service.state import app_state

MODEL = "test-student"


def _infer_body(data: bytes) -> dict:
    element = base64.b64encode(data).decode()
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [element]}]}


def test_keys_and_scopes_guard_the_model_routes(make_settings, jpeg_paths, tmp_path):
    settings = make_settings(
        auth="enabled", database_url=f"sqlite:///{tmp_path}/kdoct.db", spool_dir=tmp_path / "spool"
    )
    with TestClient(create_app(settings)) as client:
        with app_state(client.app).records.sessions() as session:
            _, clinic = create_client(session, "clinic", ["classify", "read"])
            _, reader = create_client(session, "reader", ["read"])
        for path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path
        body = _infer_body(jpeg_paths[0].read_bytes())
        infer = f"/v2/models/{MODEL}/infer"
        for key, status in ((None, 401), ("kdoct_not-a-key", 401), (reader, 403)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for response in (
                client.get(f"/v2/models/{MODEL}", headers=headers),
                client.get(f"/v2/models/{MODEL}/ready", headers=headers),
                client.post(infer, json=body, headers=headers),
            ):
                assert response.status_code == status, response.text
                assert response.json()["error"]
        clinic_headers = {"Authorization": f"Bearer {clinic}"}
        assert client.get(f"/v2/models/{MODEL}", headers=clinic_headers).json()["name"] == MODEL
        answer = client.post(infer, json=body, headers=clinic_headers)
        assert answer.status_code == 200, answer.text
        outputs = {output["name"]: output["data"] for output in answer.json()["outputs"]}
        (prediction_id,) = outputs["prediction_id"]
        stored = client.get(f"/predictions/{prediction_id}", headers=clinic_headers).json()
        assert stored["client_id"] == "clinic" and stored["label"] == outputs["label"][0]
