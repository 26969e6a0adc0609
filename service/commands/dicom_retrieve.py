"""`python -m service dicom-retrieve STUDY_UID`: classify a study already in the PACS, on demand.

Its image series are read from KDOCT_DICOMWEB_URL by WADO-RS and stored to the DICOM node (KDOCT_DICOM_HOST,
KDOCT_DICOM_PORT, KDOCT_DICOM_AE_TITLE) by C-STORE, from the calling AE title --calling-ae, which must be
on the node's KDOCT_DICOM_CALLERS. The node classifies and reports them as it does every series
(service/dicom_node/retrieve.py). Exit 0 when every instance was stored, 1 when the node refused some,
2 on bad settings or an unreachable PACS or node.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dicom-retrieve",
        help="classify a study already in the PACS: WADO-RS from KDOCT_DICOMWEB_URL to the DICOM node",
    )
    parser.add_argument("study_uid", help="the Study Instance UID")
    parser.add_argument(
        "--calling-ae", default="KDOCT-RETRIEVE", help="AE title to store as (on KDOCT_DICOM_CALLERS)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import requests
    from dicomweb_client.api import DICOMwebClient
    from pydicom.uid import UID

    from service.config import load_settings
    from service.dicom_node.peers import parse_ae_title
    from service.dicom_node.retrieve import send_study

    settings = load_settings()
    if not settings.dicomweb_url:
        sys.stderr.write("error: set KDOCT_DICOMWEB_URL, the PACS's DICOMweb root, to retrieve a study\n")
        return 2
    if not UID(args.study_uid).is_valid:
        sys.stderr.write("error: the study UID is not a valid DICOM UID\n")
        return 2
    calling_ae = parse_ae_title(args.calling_ae, "--calling-ae")
    client = DICOMwebClient(settings.dicomweb_url, timeout=30)
    try:
        report = send_study(
            client, args.study_uid, host=settings.dicom_host, port=settings.dicom_port,
            node_ae=settings.dicom_ae_title, calling_ae=calling_ae,
        )  # fmt: skip
    except (requests.RequestException, ConnectionError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(f"series {report.series}, instances {report.instances}, refused by the node {report.refused}")
    return 1 if report.refused else 0
