"""On demand, a study already in the PACS: its image series read by WADO-RS (KDOCT_DICOMWEB_URL) and
stored to the node by C-STORE, as a modality would. The node then classifies and reports them like
any other series: the same door, allow-list, budgets, records and export; nothing is classified here.

The retrieval's calling AE title must be on KDOCT_DICOM_CALLERS (as `KDOCT-RETRIEVE@127.0.0.1`, say): an
operator with access to the node's host and a caller the node was told to trust, nothing implicit.
Instances are sent as retrieved (the PACS's transfer syntax where the node accepts it, else Explicit
VR Little Endian); report series (SR, PDF: the node's own among them) are never retrieved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE

from service.dicom_node.scp import CLASSIFIED_SOP_CLASSES
from service.imaging import TRANSFER_SYNTAXES

__all__ = ["IMAGE_MODALITIES", "RetrieveReport", "image_series", "send_study"]

log = logging.getLogger(__name__)

# The modalities of the series the node classifies: OCT (OPT), fundus photography (OP), secondary capture.
IMAGE_MODALITIES = ("OPT", "OP", "SC", "OT")
_SERIES_UID, _MODALITY = "0020000E", "00080060"
TIMEOUT_S = 30


@dataclass
class RetrieveReport:
    series: int = 0
    instances: int = 0
    refused: int = 0  # instances the node answered with a failure status


def image_series(client: DICOMwebClient, study_uid: str) -> list[str]:
    """The Series Instance UIDs of the study's image series (QIDO-RS)."""
    found = client.search_for_series(study_uid, fields=["Modality"], get_remaining=True)
    return [
        item[_SERIES_UID]["Value"][0]
        for item in found
        if _SERIES_UID in item and item.get(_MODALITY, {}).get("Value", [""])[0] in IMAGE_MODALITIES
    ]


def _instances(client: DICOMwebClient, study_uid: str, series_uid: str) -> Iterator[Dataset]:
    for dataset in client.iter_series(study_uid, series_uid):
        if str(dataset.SOPClassUID) in CLASSIFIED_SOP_CLASSES:
            yield dataset


def send_study(
    client: DICOMwebClient, study_uid: str, *, host: str, port: int, node_ae: str, calling_ae: str
) -> RetrieveReport:
    """Retrieve the study's image series and C-STORE them to the node; what was sent and refused.
    Raises ConnectionError when the node refuses the association."""
    report = RetrieveReport()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for sop_class in CLASSIFIED_SOP_CLASSES:
        for syntax in TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    for series_uid in image_series(client, study_uid):
        assoc = ae.associate(host, port, ae_title=node_ae)
        if assoc.is_rejected:
            raise ConnectionError(
                f"the DICOM node at {host}:{port} rejected the association of {calling_ae}: is it on "
                f"KDOCT_DICOM_CALLERS?"
            )
        if not assoc.is_established:
            raise ConnectionError(f"no association with the DICOM node at {host}:{port}: is it running?")
        try:
            report.series += 1
            for dataset in _instances(client, study_uid, series_uid):
                status = assoc.send_c_store(dataset)
                report.instances += 1
                report.refused += int(getattr(status, "Status", 0xC001) != 0x0000)
        finally:
            assoc.release()
    return report
