"""Drift without ground truth, the service's side (service/monitoring/drift.py): the serving student's
references exported at start-up, live out-of-distribution scores and DICOM devices counted through the
app, device labels bounded against hostile headers, a site's expected label mix checked."""

from __future__ import annotations

import io

import pydicom
import pytest
from fastapi.testclient import TestClient

from kdoct.errors import ConfigError
from kdoct_testing.uploads import jpeg_gray, make_dicom
from service import prometheus
from service.app import create_app
from service.monitoring import drift


def _samples(metrics: str, name: str, **labels: str) -> dict[str, float]:
    """Series of `name` whose labels include `labels`: {line's labels: value}."""
    found = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head, value = line.rsplit(" ", 1)
            found[head] = float(value)
    return found


def _with_device(data: bytes, manufacturer: str, model: str, software) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.Manufacturer, dataset.ManufacturerModelName, dataset.SoftwareVersions = (
        manufacturer,
        model,
        software,
    )
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_students_references_are_exported_and_live_scores_counted(make_settings, jpeg_paths):
    with TestClient(create_app(make_settings(second_opinion="never"))) as client:
        model = client.get("/models").json()["models"][0]["name"]
        before = client.get("/metrics").text
        for path in jpeg_paths:
            response = client.post("/classify", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
            assert response.status_code == 200, response.text
        after = client.get("/metrics").text
    prior = _samples(after, "kdoct_model_class_prior", model=model)
    assert len(prior) == 3 and sum(prior.values()) == pytest.approx(1.0, abs=1e-5)
    reference = _samples(after, "kdoct_ood_reference_share", model=model)
    assert len(reference) == 8 and sum(reference.values()) == pytest.approx(1.0, abs=1e-5)
    counted = sum(_samples(after, "kdoct_ood_score_band_total", model=model).values()) - sum(
        _samples(before, "kdoct_ood_score_band_total", model=model).values()
    )
    assert counted == len(jpeg_paths)  # each judged image, in its band


def test_a_dicom_upload_counts_its_device_and_hostile_values_stay_bounded(make_settings, jpeg_paths):
    frame = jpeg_gray(jpeg_paths[0])
    plain = _with_device(
        make_dicom([frame]), "Heidelberg Engineering", "SPECTRALIS", ["6.16.2", "VIEWER 1.0"]
    )
    hostile = _with_device(make_dicom([frame]), "Evil\nCorp\x7f" + "x" * 200, "", "1.0")
    with TestClient(create_app(make_settings(second_opinion="never"))) as client:
        for data in (plain, hostile):
            response = client.post("/classify", files={"file": ("scan.dcm", data, "application/dicom")})
            assert response.status_code == 200, response.text
        metrics = client.get("/metrics").text
    seen = _samples(metrics, "kdoct_dicom_devices_total")
    assert any(
        'manufacturer="Heidelberg Engineering"' in key and 'software="6.16.2\\\\VIEWER 1.0"' in key
        for key in seen
    ), seen
    hostile_key = next(key for key in seen if "Evil" in key)
    assert 'manufacturer="Evil?Corp?' in hostile_key and 'device_model="unknown"' in hostile_key
    assert len(hostile_key.split('manufacturer="')[1].split('"')[0]) <= 64


def test_distinct_devices_are_capped_per_process(monkeypatch):
    monkeypatch.setattr(drift, "_devices", set())
    for index in range(drift.DEVICE_LABEL_SETS + 10):
        drift.count_device("Maker", f"model-{index}", "1.0")
    counted = {labels for labels in drift._devices}
    assert len(counted) == drift.DEVICE_LABEL_SETS
    other = prometheus.DICOM_DEVICES.labels(manufacturer="other", device_model="other", software="other")
    assert other._value.get() >= 10


def test_a_sites_expected_label_mix_replaces_the_prior_and_is_checked(make_settings):
    with pytest.raises(ConfigError, match="KDOCT_DRIFT_LABEL_PRIOR: the shares sum to 0.9"):
        make_settings(drift_label_prior="normal=0.5,drusen=0.2,cnv=0.2")
    with pytest.raises(ConfigError, match="not label=share"):
        make_settings(drift_label_prior="normal=lots")
    app = create_app(make_settings(drift_label_prior="normal=0.5,dme=0.5"))
    with pytest.raises(ConfigError, match="the student's classes"), TestClient(app):
        pass
    with TestClient(create_app(make_settings(drift_label_prior="normal=0.6,drusen=0.25,cnv=0.15"))) as client:
        model = client.get("/models").json()["models"][0]["name"]
        prior = _samples(client.get("/metrics").text, "kdoct_model_class_prior", model=model)
    assert sorted(prior.values()) == [0.15, 0.25, 0.6]


def test_an_unreadable_device_attribute_is_unknown_not_a_refusal(monkeypatch):
    """pydicom parses a value when it is read: a malformed Manufacturer must not refuse an image that
    decoded (found by the drift helper's branch; ported)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    from service.imaging import _dicom_device

    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
    dataset = Dataset()
    dataset.ManufacturerModelName = "SPECTRALIS"
    tag = Tag("Manufacturer")
    dataset._dict[tag] = RawDataElement(tag, "UL", 3, b"abc", 0, True, True)  # 3 bytes cannot be a UL
    with pytest.raises(Exception):  # noqa: B017, PT011 - what pydicom raises is its own business
        dataset.get("Manufacturer")
    assert _dicom_device(dataset) == (None, "SPECTRALIS", None)
    assert drift.sanitise(None) == "unknown"
