"""Class sets by name. The order of a class set is the order of the model's outputs."""

from __future__ import annotations

from collections.abc import Iterable

from kdoct.errors import LabelError

__all__ = ["CLASS_SETS", "class_names", "parse_label", "parse_labels"]

CLASS_SETS: dict[str, tuple[str, ...]] = {
    # Noor Eye Hospital: the paper's 3-class setting.
    "neh3": ("normal", "drusen", "cnv"),
    # UCSD / Kermany OCT2017: alphabetical, as the dataset's folders.
    "ucsd4": ("cnv", "dme", "drusen", "normal"),
}


def class_names(class_set: str) -> tuple[str, ...]:
    """The ordered class names of a class set (`neh3`, `ucsd4`)."""
    try:
        return CLASS_SETS[class_set.strip().lower()]
    except KeyError:
        raise LabelError(
            f"unknown class set {class_set!r}: choose one of {', '.join(sorted(CLASS_SETS))}"
        ) from None


def parse_label(label: str, classes: Iterable[str]) -> str:
    """Normalise a label to its canonical lower-case class name; case and surrounding space are ignored."""
    allowed = tuple(classes)
    name = str(label).strip().lower()
    if name not in allowed:
        raise LabelError(f"unknown label {label!r}: expected one of {', '.join(allowed)}")
    return name


def parse_labels(labels: Iterable[str], classes: Iterable[str]) -> list[str]:
    """Parse many labels at once; the error names every unknown label, not just the first."""
    allowed = tuple(classes)
    parsed, unknown = [], []
    for label in labels:
        name = str(label).strip().lower()
        if name in allowed:
            parsed.append(name)
        elif label not in unknown:
            unknown.append(label)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise LabelError(f"unknown labels {shown}{more}: expected one of {', '.join(allowed)}")
    return parsed
