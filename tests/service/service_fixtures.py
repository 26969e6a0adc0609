"""Builders shared by tests/service and tests/e2e: tiny real bundles and OCT DICOM files.

Bundles: timm `test_efficientnet` (student) and `test_convnext` (teacher), random weights, exported
by model_training.export.export_bundle with real B-scans as golden inputs. Built once per session.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdoct_testing.bundles import build_test_bundle, gray_images

CLASSES = ("normal", "drusen", "cnv")
PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "PID-7731-SECRET"
STUDENT_TEMPERATURE = 1.5


def golden_images(sample_dir: Path) -> list[Image.Image]:
    return gray_images([sorted((sample_dir / c).glob("*.jpeg"))[0] for c in ("CNV", "NORMAL")])


def build_bundles(root: Path, sample_dir: Path) -> dict[str, Path]:
    """Student and teacher bundles under `root` (reused when already built in this session)."""
    torch.set_num_threads(1)
    specs = {
        "student": ("test_efficientnet", (64, 64), STUDENT_TEMPERATURE),
        "teacher": ("test_convnext", (72, 72), 1.0),
    }
    paths = {}
    for role, (arch, size, temperature) in specs.items():
        out = root / role
        paths[role] = out
        if (out / "bundle.json").is_file():
            continue
        build_test_bundle(
            out,
            arch,
            size,
            role,
            golden_images(sample_dir),
            seed=7 if role == "student" else 11,
            calibration={"temperature": temperature},
            metrics={"accuracy": {"mean": 0.5, "std": 0.0}},
        )
    return paths


def jpeg_gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def make_dicom(frames: list[np.ndarray], *, sop_class: str = "1.2.840.10008.5.1.4.1.1.77.1.5.4") -> bytes:
    """An uncompressed OCT DICOM (Ophthalmic Tomography Image Storage by default) with patient tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stack = np.stack(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = "19450101"
    dataset.Modality = "OPT"
    dataset.Rows, dataset.Columns = stack.shape[1], stack.shape[2]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    bits = 16 if stack.dtype == np.uint16 else 8
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    if len(frames) > 1:
        dataset.NumberOfFrames = len(frames)
    dataset.PixelData = stack.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
