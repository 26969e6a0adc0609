"""What the tests upload besides plain JPEG files: OCT DICOM files carrying patient tags, images
encoded in a given format, and the grayscale pixels of a B-scan to build them from."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "PID-7731-SECRET"

__all__ = ["PATIENT_ID", "PATIENT_NAME", "encode", "jpeg_gray", "make_dicom"]


def jpeg_gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def make_dicom(
    frames: list[np.ndarray],
    *,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.77.1.5.4",
    deflated: bool = False,
    jpeg2000: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "OPT",
) -> bytes:
    """An uncompressed OCT DICOM (Ophthalmic Tomography Image Storage by default) with patient tags;
    `deflated`: Deflated Explicit VR Little Endian; `jpeg2000`: JPEG 2000 lossless (as Zeiss and
    Heidelberg export), encoded with pylibjpeg-openjpeg. New Study and Series UIDs unless given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    stack = np.stack(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = study_uid or generate_uid()
    dataset.SeriesInstanceUID = series_uid or generate_uid()
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = "19450101"
    dataset.Modality = modality
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
    if jpeg2000:
        from pydicom.uid import JPEG2000Lossless

        dataset.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
