"""Decode each image once per run: a process-wide cache of decoded B-scans, keyed by path.

From ImageNet weights a CPU run trains for a few epochs of a few hundred images, three models per
fold, and JPEG decoding every image every epoch was a visible share of it. The cache holds the decoded
`PIL.Image` (a 512x496 grayscale B-scan is 250 KB; the 513-image sample about 130 MB). Images are
never modified in place by the transforms that read them (they copy or resize first).

`fill` decodes a whole list in the calling process; DataLoader workers forked afterwards inherit the
filled cache (copy-on-write), so the run decodes once whatever `num_workers` is. Off by default
(`data.cache_images`): a paper-scale dataset would need gigabytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from kdoct.errors import DataError

__all__ = ["DecodedImageCache", "decoded_images", "open_image"]

log = logging.getLogger(__name__)


def open_image(path: str) -> Image.Image:
    """Open and fully decode an image; an unreadable file is a DataError naming it, never a placeholder."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


class DecodedImageCache:
    def __init__(self) -> None:
        self.enabled = False
        self._images: dict[str, Image.Image] = {}
        self._lock = threading.Lock()
        self.decodes = 0  # how many files were decoded while enabled (tests read it)

    def enable(self, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            self.clear()

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self.decodes = 0

    def __len__(self) -> int:
        return len(self._images)

    def open(self, path: str) -> Image.Image:
        """The decoded image at `path`: from memory when cached, else decoded (and kept if enabled)."""
        if not self.enabled:
            return open_image(path)
        image = self._images.get(path)
        if image is None:
            image = open_image(path)
            with self._lock:
                self._images[path] = image
                self.decodes += 1
        return image

    def fill(self, paths: Iterable[str], progress: bool = False) -> None:
        if not self.enabled:
            return
        missing = [p for p in dict.fromkeys(paths) if p not in self._images]
        for path in tqdm(missing, desc="decode", unit="image", leave=False, disable=not progress):
            self.open(path)
        if missing:
            pixels = sum(im.width * im.height * len(im.getbands()) for im in self._images.values())
            megabytes = pixels / 2**20  # bytes for 8-bit images; 16-bit and float ones take 2-4x
            log.info("decoded %d images into memory (%d cached, %.0f MB)", len(missing), len(self), megabytes)


decoded_images = DecodedImageCache()
