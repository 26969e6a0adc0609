"""Drift without ground truth, as Prometheus series (docs/RECORDS.md, "Drift alarms"): what the serving
student was trained and validated on, and what live traffic looks like against it.

- `kdoct_model_class_prior{model,label}`: the training label prior (the safety gate's file records it,
  kdoct/drift.py), or the site's expected mix (KDOCT_DRIFT_LABEL_PRIOR) where it differs by design;
  against `kdoct_predictions_total` for the chi-square of the label mix.
- `kdoct_ood_reference_share{model,band}` and `kdoct_ood_score_band_total{model,band}`: the validation
  patients' out-of-distribution scores and the live ones, in the same bands of the gate's threshold,
  for the population stability index.
- `kdoct_dicom_devices_total{manufacturer,device_model,software}`: uploads by device and software
  version, from the DICOM header's Manufacturer, ManufacturerModelName and SoftwareVersions (device
  attributes, never a patient's); for the new-device alarm. Values are sanitised and their distinct
  combinations per process capped, so uploads cannot blow up the series.

A bundle whose gate file has no drift reference (exported before it existed) exports no prior or
reference: its drift rules have nothing to compare and stay silent (the ungradable share still works).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping

from kdoct.drift import ood_band
from service import prometheus
from service.answer import ClassifyResponse
from service.inference.loaded_model import LoadedModel

__all__ = ["DEVICE_LABEL_SETS", "count_device", "count_ood_scores", "export_references", "sanitise"]

log = logging.getLogger(__name__)

DEVICE_LABEL_SETS = 64  # distinct (manufacturer, model, software) per process; beyond: "other"
_VALUE_CHARS = 64
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_thresholds: dict[str, float] = {}  # model name -> its gate's OOD threshold (for the bands)
_devices: set[tuple[str, str, str]] = set()
_devices_lock = threading.Lock()  # counted from the decode pool's threads


def export_references(loaded: LoadedModel, prior_override: Mapping[str, float] | None = None) -> None:
    """Set the serving student's references (at start-up and after each switch)."""
    model = loaded.bundle.name
    reference = loaded.gate.summary.get("drift") if loaded.gate is not None else None
    prior = dict(prior_override) if prior_override else None
    if prior is None and reference is not None:
        prior = dict(zip(loaded.class_names, reference["class_prior"], strict=True))
    if prior is not None:
        for label, share in prior.items():
            prometheus.MODEL_CLASS_PRIOR.labels(model=model, label=label).set(share)
    if reference is None or loaded.gate is None:
        log.warning(
            "%s has no drift reference in its safety gate: label-mix and score drift not measured", model
        )
        _thresholds.pop(model, None)
        return
    _thresholds[model] = loaded.gate.ood.threshold
    for band, share in reference["ood_bands"].items():
        prometheus.OOD_REFERENCE_SHARE.labels(model=model, band=band).set(share)
        prometheus.OOD_SCORE_BANDS.labels(model=model, band=band)  # at 0: the shares exist from the start


def count_ood_scores(answer: ClassifyResponse) -> None:
    """Each judged image or frame of an answered upload, in its band of the answering model's threshold."""
    threshold = _thresholds.get(answer.model.name)
    if threshold is None:
        return
    for judged in answer.frames or [answer]:
        if judged.ood_score is not None:
            band = ood_band(judged.ood_score, threshold)
            prometheus.OOD_SCORE_BANDS.labels(model=answer.model.name, band=band).inc()


def sanitise(value: object) -> str:
    """A DICOM string attribute (multi-valued ones joined by '\\') as a bounded, printable label value."""
    if value is None:
        return "unknown"
    # pydicom's MultiValue (several SoftwareVersions) is neither a list nor a str: any other iterable.
    multi = isinstance(value, Iterable) and not isinstance(value, str | bytes)
    text = "\\".join(str(item) for item in value) if multi else str(value)
    text = _UNPRINTABLE.sub("?", text).strip()[:_VALUE_CHARS]
    return text or "unknown"


def count_device(manufacturer: object, device_model: object, software: object) -> None:
    """One DICOM upload from this device and software version."""
    labels = (sanitise(manufacturer), sanitise(device_model), sanitise(software))
    with _devices_lock:
        if labels not in _devices:
            if len(_devices) >= DEVICE_LABEL_SETS:
                labels = ("other", "other", "other")
            else:
                _devices.add(labels)
    prometheus.DICOM_DEVICES.labels(manufacturer=labels[0], device_model=labels[1], software=labels[2]).inc()
