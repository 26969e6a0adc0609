"""The public contract of POST /classify: /openapi.json names its answer's schema, and every answer to
real uploads (images, a single DICOM frame, a volume; with second opinions and explanations)
validates against that schema, made strict: a key the schema does not document fails too."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
import pytest

from kdoct_testing.uploads import jpeg_gray, make_dicom


def _strict(schema: Any) -> Any:
    """Every object with documented properties may hold nothing else."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


@pytest.fixture
def answer_validator(client):
    openapi = client.get("/openapi.json").json()
    ok = openapi["paths"]["/classify"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ClassifyResponse"}
    schema = {**ok, "components": _strict(copy.deepcopy(openapi["components"]))}
    return jsonschema_rs.validator_for(schema)


def _check(validator, response) -> dict:
    assert response.status_code == 200, response.text
    answer = response.json()
    errors = [
        f"{'/'.join(map(str, error.instance_path))}: {error.message}"
        for error in validator.iter_errors(answer)
    ]
    assert errors == [], errors
    return answer


def _post(client, data: bytes, name: str, **params):
    return client.post("/classify", files={"file": (name, data)}, params=params)


def test_every_answer_validates_against_the_published_schema(client, jpeg_paths, answer_validator) -> None:
    seen_explained_opinion = False
    for index, path in enumerate(jpeg_paths):
        params = {"second_opinion": "always", "explain": "true"} if index % 2 else {"second_opinion": "never"}
        answer = _check(answer_validator, _post(client, path.read_bytes(), path.name, **params))
        if index % 2:
            assert answer["explanation"]["class_name"] == answer["label"]
            seen_explained_opinion |= "explanation" in answer["second_opinion"]
        else:
            assert "explanation" not in answer and answer["second_opinion"] is None
    assert seen_explained_opinion

    frames = [jpeg_gray(path) for path in jpeg_paths[:3]]
    volume = _check(
        answer_validator,
        _post(client, make_dicom(frames), "volume.dcm", second_opinion="always", explain="true"),
    )
    assert len(volume["frames"]) == 3 and volume["second_opinion"]["frames_reviewed"] == 3
    assert all("frames_reviewed" not in frame["second_opinion"] for frame in volume["frames"])
    single = _check(answer_validator, _post(client, make_dicom(frames[:1]), "one.dcm"))
    assert single["frames"][0]["prediction_id"] == single["prediction_id"]


def test_the_strict_schema_refuses_an_undocumented_key(client, jpeg_paths, answer_validator) -> None:
    answer = _check(answer_validator, _post(client, jpeg_paths[0].read_bytes(), "scan.jpeg"))
    answer["input"]["patient_name"] = "DOE^JANE"
    assert not answer_validator.is_valid(answer)
