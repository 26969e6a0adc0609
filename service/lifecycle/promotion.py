"""Promotion and rollback of the serving student, decided on evidence and written as chained events.

`promote` refuses unless the candidate bundle verifies (every file's sha256, role student, the serving
student's classes) and its own shadow record (shadow_results under the bundle's sha256: the bundle
promoted is the one that shadowed) meets the thresholds of the settings: at least
KDOCT_PROMOTE_MIN_SHADOWED results, agreement with the serving student at least
KDOCT_PROMOTE_MIN_AGREEMENT, and for every class at least KDOCT_PROMOTE_MIN_FEEDBACK_PER_CLASS
clinician labels on shadowed predictions with the candidate's sensitivity on them at least
KDOCT_PROMOTE_MIN_SENSITIVITY. `rollback` returns to the bundle served before the current one: the
events replay as a stack (a promotion pushes, a rollback pops), so A -> B -> C rolls back to B, then A.

Both append one model_events row (who, when, from, to, the evidence; service/db/model_ledgers.py),
which every worker reads within KDOCT_MODEL_POLL_S and switches to (service/lifecycle/rollout.py).
The command line and the admin endpoint call the same functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from kdoct.bundle import Bundle, load_bundle
from kdoct.errors import BundleError, KdoctError
from service.audit_key import AuditKey
from service.db.model_ledgers import (
    ModelEventRow,
    append_event,
    candidate_feedback_pairs,
    events,
    shadow_counts,
)
from service.lifecycle.agreement import ShadowCount, summarise
from service.monitoring.performance import class_performance_from_counts

__all__ = [
    "LifecycleRefused",
    "Serving",
    "Thresholds",
    "candidate_evidence",
    "evidence_against_serving",
    "promote",
    "rollback",
    "serving",
]


class LifecycleRefused(KdoctError):
    """A promotion or rollback the evidence or the state does not allow; the message says why."""


@dataclass(frozen=True)
class Thresholds:
    min_shadowed: int
    min_agreement: float
    min_sensitivity: float
    min_feedback_per_class: int

    @classmethod
    def from_settings(cls, settings) -> Thresholds:
        return cls(
            min_shadowed=settings.promote_min_shadowed,
            min_agreement=settings.promote_min_agreement,
            min_sensitivity=settings.promote_min_sensitivity,
            min_feedback_per_class=settings.promote_min_feedback_per_class,
        )


@dataclass(frozen=True)
class Serving:
    """A student bundle as the events name it."""

    sha256: str
    path: str
    name: str
    version: str


def _serving_stack(engine: Engine, configured: Path) -> tuple[list[Serving], int | None]:
    """The bundles served, oldest first, as the events replay (the configured student at the bottom),
    and the newest event's sequence."""
    history = list(reversed(events(engine)))
    if history:
        first = history[0]
        stack = [Serving(first.from_sha256, first.from_path, "", "")]
    else:
        bundle = load_bundle(configured)
        stack = [Serving(bundle.sha256, str(configured), bundle.name, bundle.version)]
    for event in history:
        if event.action == "promote":
            stack.append(Serving(event.to_sha256, event.to_path, event.to_name, event.to_version))
        elif len(stack) > 1:
            stack.pop()
    return stack, history[-1].sequence if history else None


def serving(engine: Engine, configured: Path) -> Serving:
    """What every worker serves (or switches to): the newest event's bundle, else the configured one."""
    stack, _ = _serving_stack(engine, configured)
    return stack[-1]


def candidate_evidence(
    engine: Engine, sha256: str, class_names: tuple[str, ...], thresholds: Thresholds
) -> dict[str, Any]:
    """The candidate's shadow record against the thresholds: agreement, kappa, the gate's verdicts,
    per-class sensitivity on clinician feedback (Wilson 95 % interval), and what falls short."""
    agreement = summarise([ShadowCount(*row) for row in shadow_counts(engine, sha256)], class_names)
    pairs = {
        (actual, predicted): count for actual, predicted, count in candidate_feedback_pairs(engine, sha256)
    }
    sensitivity: dict[str, Any] = {}
    short: list[str] = []
    for item in class_performance_from_counts(pairs, class_names):
        labelled = item.tp + item.fn
        sensitivity[item.name] = {"labelled": labelled, **asdict(item.sensitivity)}
        if labelled < thresholds.min_feedback_per_class:
            short.append(
                f"{item.name}: {labelled} clinician labels on shadowed predictions, "
                f"{thresholds.min_feedback_per_class} needed"
            )
        elif labelled and item.sensitivity.value < thresholds.min_sensitivity:
            short.append(
                f"{item.name}: sensitivity on feedback {item.sensitivity.value:.3f} "
                f"< {thresholds.min_sensitivity}"
            )
    if agreement.shadowed < thresholds.min_shadowed:
        short.insert(0, f"shadowed {agreement.shadowed} results, {thresholds.min_shadowed} needed")
    elif agreement.agreement is None or agreement.agreement < thresholds.min_agreement:
        short.insert(0, f"agreement {agreement.agreement:.3f} < {thresholds.min_agreement}")
    return {
        "candidate_sha256": sha256,
        "shadowed": agreement.shadowed,
        "agreement": agreement.agreement,
        "kappa": agreement.kappa,
        "teacher_compared": agreement.teacher_compared,
        "teacher_agreement": agreement.teacher_agreement,
        "teacher_kappa": agreement.teacher_kappa,
        "confusion": agreement.confusion,
        "gate": agreement.gate,
        "sensitivity_on_feedback": sensitivity,
        "thresholds": asdict(thresholds),
        "short_of_thresholds": short,
    }


def evidence_against_serving(
    engine: Engine, sha256: str, configured: Path, thresholds: Thresholds
) -> dict[str, Any]:
    """A candidate's evidence, in the class set of the student serving now."""
    class_names = load_bundle(Path(serving(engine, configured).path)).class_names
    return candidate_evidence(engine, sha256, class_names, thresholds)


def _candidate(path: Path, expected_sha256: str | None, current: Bundle) -> Bundle:
    try:
        bundle = load_bundle(path)  # every file's sha256 against bundle.json
    except BundleError as exc:
        raise LifecycleRefused(f"the candidate does not verify: {exc}") from None
    if expected_sha256 is not None and bundle.sha256 != expected_sha256:
        raise LifecycleRefused(
            f"{path} is bundle {bundle.sha256}, not the {expected_sha256} asked for: the bundle promoted "
            "must be the one that shadowed"
        )
    if bundle.role != "student":
        raise LifecycleRefused(f"{path} is a {bundle.role} bundle: only a student is promoted")
    if bundle.class_names != current.class_names:
        raise LifecycleRefused(
            f"the candidate's classes {list(bundle.class_names)} differ from the serving student's "
            f"{list(current.class_names)}: a new class set needs a new deployment, not a promotion"
        )
    return bundle


def promote(
    engine: Engine,
    key: AuditKey,
    bundle_dir: Path,
    *,
    actor: str,
    thresholds: Thresholds,
    configured: Path,
    expected_sha256: str | None = None,
) -> ModelEventRow:
    """Promote the bundle at `bundle_dir`, refused (LifecycleRefused) unless it verifies and its
    shadow record meets `thresholds`."""
    stack, head = _serving_stack(engine, configured)
    current = stack[-1]
    candidate = _candidate(bundle_dir, expected_sha256, load_bundle(Path(current.path)))
    if candidate.sha256 == current.sha256:
        raise LifecycleRefused(
            f"{candidate.name} {candidate.version} ({candidate.sha256[:12]}) is serving already"
        )
    evidence = candidate_evidence(engine, candidate.sha256, candidate.class_names, thresholds)
    if evidence["short_of_thresholds"]:
        raise LifecycleRefused(
            f"{candidate.name} {candidate.version} ({candidate.sha256[:12]}) is not promoted: "
            + "; ".join(evidence["short_of_thresholds"])
        )
    values = {
        "action": "promote",
        "actor": actor,
        "from_sha256": current.sha256,
        "from_path": current.path,
        "to_sha256": candidate.sha256,
        "to_name": candidate.name,
        "to_version": candidate.version,
        "to_path": str(bundle_dir.resolve()),
        "evidence": evidence,
    }
    return append_event(engine, values, key=key, after_sequence=head)


def rollback(engine: Engine, key: AuditKey, *, actor: str, configured: Path) -> ModelEventRow:
    """Return to the bundle served before the current one; refused when there is none."""
    stack, head = _serving_stack(engine, configured)
    if len(stack) < 2:
        raise LifecycleRefused("nothing to roll back to: no promotion is in force")
    current, previous = stack[-1], stack[-2]
    try:
        bundle = load_bundle(Path(previous.path))
    except BundleError as exc:
        raise LifecycleRefused(f"the previous bundle at {previous.path} does not verify: {exc}") from None
    if bundle.sha256 != previous.sha256:
        raise LifecycleRefused(
            f"the bundle at {previous.path} is now {bundle.sha256}, not the {previous.sha256} served before: "
            "restore it, or promote a bundle on its evidence"
        )
    values = {
        "action": "rollback",
        "actor": actor,
        "from_sha256": current.sha256,
        "from_path": current.path,
        "to_sha256": bundle.sha256,
        "to_name": bundle.name,
        "to_version": bundle.version,
        "to_path": previous.path,
        "evidence": {"undoes_sequence": head},
    }
    return append_event(engine, values, key=key, after_sequence=head)
