"""A candidate shadowing live requests (service/lifecycle/shadow.py): answers unchanged, its results in
the chained shadow_results ledger beside the predictions, agreement in /metrics and over HTTP, and its
failures never reaching the caller."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError
from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.uploads import jpeg_gray, make_dicom
from service.audit_key import load_audit_key
from service.db.ledger import SHADOW_RESULTS, verify_ledger
from service.db.session import make_engine
from service.db.tables import Prediction, ShadowResult
from service.lifecycle.agreement import cohen_kappa
from tests.service.lifecycle.conftest import stored_shadow_results

VOLATILE = {"prediction_id", "request_id", "timing_ms"}


def _post(client, path: Path):
    response = client.post("/classify", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


def _stable(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key not in VOLATILE}


def _rows(database_url: str, table) -> list:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(table.__table__)).mappings())
    finally:
        engine.dispose()


def test_answers_are_the_same_with_and_without_the_shadow(
    lifecycle_app, candidate, bundles, jpeg_paths, tmp_path
):
    with lifecycle_app() as client:
        plain = [_post(client, path) for path in jpeg_paths]
    with lifecycle_app(
        shadow_bundle=candidate, database_url=f"sqlite:///{tmp_path / 'shadowed.db'}"
    ) as client:
        shadowed = [_post(client, path) for path in jpeg_paths]
    assert [_stable(a) for a in shadowed] == [_stable(a) for a in plain]
    assert {a["model"]["sha256"] for a in shadowed} == {load_bundle(bundles["student"]).sha256}


def test_shadow_results_are_chained_beside_their_predictions_and_agreement_is_published(
    lifecycle_app, candidate, jpeg_paths, tmp_path
):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    sha256 = load_bundle(candidate).sha256
    with lifecycle_app(shadow_bundle=candidate) as client:
        before = client.get("/metrics").text  # counters are the process's: other tests' count too
        answers = [_post(client, path) for path in jpeg_paths]
        volume = make_dicom([jpeg_gray(path) for path in jpeg_paths[:3]])
        response = client.post("/classify", files={"file": ("v.dcm", volume, "application/dicom")})
        assert response.status_code == 200, response.text
        answers.append(response.json())
        expected = len(jpeg_paths) + 3 + 1  # each image; each frame of the volume, and the volume
        assert stored_shadow_results(url, expected) == expected
        metrics = client.get("/metrics").text
        agreement = client.get(f"/models/candidates/{sha256}/agreement")
        models = client.get("/models").json()["models"]
    assert [(m["role"], m["version"]) for m in models] == [
        ("student", "0.0.1"),
        ("teacher", "0.0.1"),
        ("shadow", "0.0.2"),
    ]
    assert agreement.status_code == 200, agreement.text
    shadow = _rows(url, ShadowResult)
    predictions = {str(row["id"]): row for row in _rows(url, Prediction)}
    for row in shadow:
        shadowed = predictions[str(row["prediction_id"])]  # each beside the prediction it shadows
        assert row["current_label"] == shadowed["label"]
        assert row["current_sha256"] == shadowed["model_sha256"]
        assert row["candidate_sha256"] == sha256
        assert abs(sum(row["candidate_probabilities"].values()) - 1.0) < 1e-6
    assert verify_ledger(
        make_engine(url), SHADOW_RESULTS, load_audit_key(tmp_path / "audit" / "audit.key")
    ).ok
    assert not verify_ledger(make_engine(url), SHADOW_RESULTS, CHAIN_KEY).ok  # keyed: another key fails

    body = agreement.json()
    names = ["normal", "drusen", "cnv"]
    matrix = [
        [sum(1 for r in shadow if (r["current_label"], r["candidate_label"]) == (a, b)) for b in names]
        for a in names
    ]
    assert body["shadowed"] == expected
    assert body["confusion"] == {
        a: dict(zip(names, row, strict=True)) for a, row in zip(names, matrix, strict=True)
    }
    assert body["agreement"] == sum(matrix[i][i] for i in range(3)) / expected
    assert body["kappa"] == cohen_kappa(matrix)
    assert sum(body["gate"].values()) == expected
    assert body["short_of_thresholds"]  # 9 results are far from the default 500
    for name, needles in (
        ("kdoct_shadow_comparisons_total", ()),
        ("kdoct_shadow_results_total", ('outcome="stored"',)),
    ):
        counted = _metric_sum(metrics, name, sha256, *needles) - _metric_sum(before, name, sha256, *needles)
        assert counted == expected, name


def _metric_sum(text: str, name: str, sha256: str, *needles: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith(name + "{")
            and f'candidate="{sha256}"' in line
            and all(n in line for n in needles)
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_candidate_of_other_preprocessing_shadows_on_its_own_input(
    lifecycle_app, candidate_72, jpeg_paths, tmp_path
):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    with lifecycle_app(shadow_bundle=candidate_72) as client:
        for path in jpeg_paths[:3]:
            _post(client, path)
        assert stored_shadow_results(url, 3) == 3
    assert {row["candidate_sha256"] for row in _rows(url, ShadowResult)} == {load_bundle(candidate_72).sha256}


def test_a_shadow_that_times_out_or_is_busy_never_reaches_the_caller(
    lifecycle_app, candidate, jpeg_paths, tmp_path
):
    sha256 = load_bundle(candidate).sha256
    timeouts = 'outcome="timeout"'
    with lifecycle_app(shadow_bundle=candidate, shadow_timeout_s=1e-6) as client:
        before = _metric_sum(client.get("/metrics").text, "kdoct_shadow_results_total", sha256, timeouts)
        for path in jpeg_paths[:4]:
            _post(client, path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the shadows end off the answer path, after it
            counted = _metric_sum(client.get("/metrics").text, "kdoct_shadow_results_total", sha256, timeouts)
            if counted - before >= 4:
                break
            time.sleep(0.05)
    assert counted - before == 4
    assert _rows(f"sqlite:///{tmp_path / 'records.db'}", ShadowResult) == []


def test_the_shadow_share_samples_requests(lifecycle_app, candidate, jpeg_paths, tmp_path):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    with lifecycle_app(shadow_bundle=candidate, shadow_share=0.5) as client:
        answers = [_post(client, path) for path in jpeg_paths * 4]
        sampled = [a for a in answers if int(a["prediction_id"].replace("-", ""), 16) % 10_000 < 5_000]
        assert stored_shadow_results(url, len(sampled), timeout_s=10) == len(sampled)
    assert {str(r["prediction_id"]) for r in _rows(url, ShadowResult)} == {
        a["prediction_id"] for a in sampled
    }
    assert 0 < len(sampled) < len(answers)  # 24 answers: all or none sampled at 1/2 is 2**-23


def test_the_student_itself_is_refused_as_its_own_shadow(make_settings, bundles):
    with pytest.raises(ConfigError, match="KDOCT_SHADOW_BUNDLE is the same bundle"):
        make_settings(shadow_bundle=bundles["student"])
