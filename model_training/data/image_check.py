"""Is an image file usable? And a collector that reports every bad file at once.

The reference code turned an unreadable image into a black placeholder. Here an unreadable file is
an error that names it, and all such files are reported together, so one run shows the whole damage.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from kdoct.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ProblemList", "check_images", "image_problem"]

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp"})
_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
_MAX_SHOWN = 50


def image_problem(path: str | Path) -> str | None:
    """None when PIL can open and fully decode `path`, else why not.

    `verify()` alone misses truncated JPEGs, so the pixels are decoded; a decompression bomb is a
    problem, not a warning.
    """
    path = Path(path)
    if not path.is_file():
        return "file not found"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_FORMATS) as image:
                if image.width < 1 or image.height < 1:
                    return f"empty image {image.width}x{image.height}"
                image.load()
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


class ProblemList:
    """Collects (file, reason) pairs and raises one DataError naming them all."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[tuple[str, str]] = []

    def add(self, name: str | Path, reason: str) -> None:
        self.items.append((str(name), reason))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [f"  {name}: {reason}" for name, reason in self.items[:_MAX_SHOWN]]
        if len(self.items) > _MAX_SHOWN:
            lines.append(f"  ... and {len(self.items) - _MAX_SHOWN} more")
        raise DataError(
            f"{self.what}: {len(self.items)} problem file(s), fix or remove them and run again:\n"
            + "\n".join(lines)
        )


def check_images(paths: Iterable[str | Path], problems: ProblemList, progress: bool = False) -> None:
    """Add every unreadable image of `paths` to `problems`."""
    paths = list(paths)
    for path in tqdm(paths, desc="checking images", unit="img", disable=not progress):
        reason = image_problem(path)
        if reason is not None:
            problems.add(path, reason)
