"""GET /models: what this replica serves, straight from the verified bundle manifests."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import ClassifierDep, StateDep
from service.inference.classifier import ServedModel

__all__ = ["router"]

router = APIRouter(tags=["models"])


class ModelInfo(BaseModel):
    role: str = Field(
        examples=["student"],
        description="student, teacher, or shadow: the candidate scoring live requests off the answer path "
        "(docs/LIFECYCLE.md)",
    )
    name: str
    version: str
    sha256: str
    arch: str = Field(examples=["efficientnet_b2"])
    class_names: list[str] = Field(examples=[["normal", "drusen", "cnv"]])
    preprocess: dict
    calibration: dict = Field(examples=[{"temperature": 1.3}])
    metrics: dict = Field(description="the bundle's evaluation metrics (per fold and mean ± std)")
    provenance: dict
    runtime: dict = Field(examples=[{"name": "onnx", "device": "cpu", "precision": "fp32"}])
    safety_gate: dict | None = Field(
        None,
        description="the safety gate applied to this model: quality bounds, the out-of-distribution "
        "threshold and how they were fitted; null when none is applied",
    )
    golden_max_difference: float = Field(
        description="max |p - p_golden| measured at start-up on this runtime"
    )


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    second_opinion: str = Field(description="the default policy: never, auto or always")
    second_opinion_threshold: float


def _describe(served: ServedModel) -> dict:
    loaded = served.loaded
    manifest = loaded.bundle.manifest
    return {
        "role": loaded.role,
        **loaded.identity(),
        "arch": loaded.bundle.arch,
        "class_names": list(loaded.class_names),
        "preprocess": manifest["preprocess"],
        "calibration": manifest.get("calibration", {"temperature": 1.0}),
        "metrics": manifest.get("metrics", {}),
        "provenance": manifest.get("provenance", {}),
        "runtime": {
            "name": loaded.runtime.name,
            "device": loaded.runtime.device,
            "precision": loaded.runtime.precision,
            "max_batch_size": served.batcher.max_batch_size,
            "max_batch_wait_ms": served.batcher.max_wait_s * 1000.0,
        },
        "golden_max_difference": loaded.golden_difference,
        # The gate this service applies to the model (the student's), with its threshold and bounds.
        "safety_gate": None
        if loaded.gate is None
        else {
            **loaded.gate.summary,
            "ood": {**loaded.gate.summary.get("ood", {}), "threshold": loaded.gate.ood.threshold},
        },
    }


@router.get("/models", response_model=ModelsResponse, summary="The loaded model bundles and their manifests")
async def models(classifier: ClassifierDep, state: StateDep) -> ModelsResponse:
    served = [classifier.student] + ([classifier.teacher] if classifier.teacher else [])
    described = [_describe(item) for item in served]
    if state.shadow is not None:
        described.append({**_describe(state.shadow.candidate.student), "role": "shadow"})
    return ModelsResponse(
        models=described,
        second_opinion=classifier.policy,
        second_opinion_threshold=classifier.threshold,
    )
