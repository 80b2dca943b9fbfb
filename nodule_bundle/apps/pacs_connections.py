"""The two ways to talk to a PACS, behind one interface (:class:`Pacs`): DICOMweb (QIDO-RS, WADO-RS,
STOW-RS, with dicomweb-client) and, where a PACS has no DICOMweb, DIMSE (C-FIND, C-MOVE, C-STORE, with
pynetdicom).

For C-MOVE the PACS sends the study to an AE title of ours: :class:`DimsePacs` listens for it on
``port`` while it asks, and the PACS must know that AE title with this machine's address and that port
(Orthanc: ``DicomModalities``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import pydicom
from dicomweb_client.api import DICOMwebClient
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from nodule_bundle.core.errors import NoduleBundleError

SUCCESS, PENDING = 0x0000, (0xFF00, 0xFF01)


class Pacs(Protocol):
    """What the bundle needs of a PACS."""

    name: str

    def study_uids(self) -> list[str]:
        """Every study it holds."""

    def retrieve_study(self, study_uid: str) -> list[pydicom.Dataset]:
        """The study's instances."""

    def series_descriptions(self, study_uid: str, modality: str) -> list[str]:
        """The descriptions of the study's series of ``modality``."""

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Store ``datasets`` (in the studies they name)."""


class DicomWebPacs:
    """A PACS's DICOMweb service at ``url`` (Orthanc: ``http://HOST:8042/dicom-web``)."""

    def __init__(self, url: str):
        self.client, self.name = DICOMwebClient(url), url

    def study_uids(self) -> list[str]:
        return [study["0020000D"]["Value"][0] for study in self.client.search_for_studies()]

    def retrieve_study(self, study_uid: str) -> list[pydicom.Dataset]:
        return self.client.retrieve_study(study_uid)

    def series_descriptions(self, study_uid: str, modality: str) -> list[str]:
        found = self.client.search_for_series(study_uid, search_filters={"Modality": modality}, fields=["SeriesDescription"])
        return [s.get("0008103E", {}).get("Value", [""])[0] for s in found]

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        self.client.store_instances(list(datasets))


def parse_dimse_address(address: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` -> (AE title, host, port)."""
    try:
        ae_title, rest = address.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return ae_title, host, int(port)
    except ValueError:
        raise NoduleBundleError(f"{address}: a DIMSE address is AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242)") from None


class DimsePacs:
    """A PACS's DICOM service at ``AET@HOST:PORT``, called as ``ae_title``, which receives C-MOVEs on ``port``."""

    def __init__(self, address: str, ae_title: str = "NODULEBUNDLE", port: int = 11113):
        self.called, self.host, self.pacs_port = parse_dimse_address(address)
        self.ae_title, self.port, self.name = ae_title, port, address

    def _associate(self, contexts: Iterable) -> object:
        ae = AE(ae_title=self.ae_title)
        for context in contexts:
            ae.add_requested_context(context)
        assoc = ae.associate(self.host, self.pacs_port, ae_title=self.called)
        if not assoc.is_established:
            raise NoduleBundleError(f"{self.name}: no DICOM association (is a PACS listening there, under that AE title, and does it accept {self.ae_title}?)")
        return assoc

    def _find(self, level: str, **keys: str) -> list[pydicom.Dataset]:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        assoc = self._associate([FIND])
        try:
            found = []
            for status, identifier in assoc.send_c_find(query, FIND):
                code = getattr(status, "Status", None)
                if code in PENDING and identifier is not None:
                    found.append(identifier)
                elif code != SUCCESS:
                    raise NoduleBundleError(f"{self.name}: C-FIND at {level} level failed (status {code if code is None else hex(code)})")
            return found
        finally:
            assoc.release()

    def study_uids(self) -> list[str]:
        return [str(ds.StudyInstanceUID) for ds in self._find("STUDY", StudyInstanceUID="")]

    def series_descriptions(self, study_uid: str, modality: str) -> list[str]:
        found = self._find("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", Modality=modality, SeriesDescription="")
        return [str(ds.get("SeriesDescription", "")) for ds in found]

    def retrieve_study(self, study_uid: str) -> list[pydicom.Dataset]:
        received: list[pydicom.Dataset] = []

        def keep(event) -> int:
            dataset = event.dataset
            dataset.file_meta, dataset.preamble = event.file_meta, b"\0" * 128  # as read from a DICOM file
            received.append(dataset)
            return SUCCESS

        listener = AE(ae_title=self.ae_title)
        listener.supported_contexts = StoragePresentationContexts
        server = listener.start_server(("", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)])
        try:
            query = pydicom.Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study_uid
            assoc = self._associate([MOVE])
            try:
                final = None
                for status, _ in assoc.send_c_move(query, self.ae_title, MOVE):
                    final = getattr(status, "Status", None)
            finally:
                assoc.release()
        finally:
            server.shutdown()
        if final != SUCCESS:
            raise NoduleBundleError(
                f"{self.name}: C-MOVE of study {study_uid} to {self.ae_title} failed (status {final if final is None else hex(final)}); "
                f"the PACS must know {self.ae_title} with this machine's address and port {self.port}"
            )  # fmt: skip
        return received

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        assoc = self._associate(sorted({str(ds.SOPClassUID) for ds in datasets}))
        try:
            for dataset in datasets:
                status = assoc.send_c_store(dataset)
                code = getattr(status, "Status", None)
                if code != SUCCESS:
                    raise NoduleBundleError(f"{self.name}: C-STORE of {dataset.SOPInstanceUID} failed (status {code if code is None else hex(code)})")
        finally:
            assoc.release()
