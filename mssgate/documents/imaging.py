"""DICOM pointers of imaging reports: accession numbers, Study/Series/SOP Instance UIDs.

From a CR-IMG CDA: `inFulfillmentOf/order/ps3-20:accessionNumber` (and `order/id`, the placer
number), `documentationOf/serviceEvent/id/@root` (one Study Instance UID per exam) and the
"DICOM object catalog" section (code DCM 121181). From XDM metadata: referenceIdList.
"""

from __future__ import annotations

import re
from typing import Final

from lxml import etree
from pydantic import BaseModel, ConfigDict

from mssgate.documents.hl7values import CX, REF_ACCESSION, REF_ORDER, REF_STUDY_UID
from mssgate.documents.xml import local_name

HL7_NS: Final = "urn:hl7-org:v3"
_NS: Final = {"h": HL7_NS}
_UID_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)+")
# DCM codes of the catalog section and of its acts (PS3.20 / CDA imaging templates).
_DICOM_CATALOG: Final = "121181"
_STUDY_ACT: Final = "113014"
_SERIES_ACT: Final = "113015"


class Identifier(BaseModel):
    model_config = ConfigDict(frozen=True)

    root: str | None = None
    extension: str | None = None


class DicomInstance(BaseModel):
    model_config = ConfigDict(frozen=True)

    sop_instance_uid: str
    sop_class_uid: str | None = None
    wado_url: str | None = None


class DicomSeries(BaseModel):
    model_config = ConfigDict(frozen=True)

    series_instance_uid: str
    modality: str | None = None
    instances: tuple[DicomInstance, ...] = ()


class DicomStudy(BaseModel):
    model_config = ConfigDict(frozen=True)

    study_instance_uid: str
    series: tuple[DicomSeries, ...] = ()


class ImagingPointers(BaseModel):
    """Everything a DRIMbox/RIS needs to find the images a document talks about."""

    model_config = ConfigDict(frozen=True)

    accession_numbers: tuple[Identifier, ...] = ()
    order_ids: tuple[Identifier, ...] = ()
    study_instance_uids: tuple[str, ...] = ()
    catalog: tuple[DicomStudy, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.accession_numbers or self.study_instance_uids or self.catalog)


class ImagingRef(BaseModel):
    """One line of a document record's `imaging` list."""

    model_config = ConfigDict(frozen=True)

    study_instance_uid: str | None = None
    accession_number: str | None = None


def is_dicom_uid(value: str | None) -> bool:
    return value is not None and len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def _identifier(element: etree._Element) -> Identifier | None:
    root, extension = element.get("root"), element.get("extension")
    if not root and not extension:
        return None
    return Identifier(root=root or None, extension=extension or None)


def _study_uid(element: etree._Element) -> str | None:
    root, extension = element.get("root"), element.get("extension")
    # An id with a real extension is a local exam number, not a UID (CR-BIO, DA-IMG do this);
    # one ANS HL7 example writes extension="studyInstanceUID" next to the UID.
    if extension and extension != "studyInstanceUID":
        return None
    return root if is_dicom_uid(root) else None


def _code_of(element: etree._Element) -> str | None:
    code = element.find(f"{{{HL7_NS}}}code")
    return None if code is None else code.get("code")


def _catalog(root: etree._Element) -> tuple[DicomStudy, ...]:
    studies: list[DicomStudy] = []
    for section in root.iter(f"{{{HL7_NS}}}section"):
        if _code_of(section) != _DICOM_CATALOG:
            continue
        for study_act in section.iter(f"{{{HL7_NS}}}act"):
            if _code_of(study_act) != _STUDY_ACT:
                continue
            study_id = study_act.find(f"{{{HL7_NS}}}id")
            uid = study_id.get("root") if study_id is not None else None
            if uid is None or not is_dicom_uid(uid):
                continue
            studies.append(DicomStudy(study_instance_uid=uid, series=_series(study_act)))
    return tuple(studies)


def _series(study_act: etree._Element) -> tuple[DicomSeries, ...]:
    series: list[DicomSeries] = []
    for act in study_act.iter(f"{{{HL7_NS}}}act"):
        code = act.find(f"{{{HL7_NS}}}code")
        if code is None or code.get("code") != _SERIES_ACT:
            continue
        series_id = act.find(f"{{{HL7_NS}}}id")
        uid = series_id.get("root") if series_id is not None else None
        if uid is None or not is_dicom_uid(uid):
            continue
        modality = None
        for qualifier in code.iter(f"{{{HL7_NS}}}qualifier"):
            value = qualifier.find(f"{{{HL7_NS}}}value")
            if value is not None and value.get("code"):
                modality = value.get("code")
        instances: list[DicomInstance] = []
        for observation in act.iter(f"{{{HL7_NS}}}observation"):
            sop_id = observation.find(f"{{{HL7_NS}}}id")
            sop_uid = sop_id.get("root") if sop_id is not None else None
            if sop_uid is None or not is_dicom_uid(sop_uid):
                continue
            sop_code = observation.find(f"{{{HL7_NS}}}code")
            reference = observation.find(f"{{{HL7_NS}}}text/{{{HL7_NS}}}reference")
            instances.append(
                DicomInstance(
                    sop_instance_uid=sop_uid,
                    sop_class_uid=sop_code.get("code") if sop_code is not None else None,
                    wado_url=reference.get("value") if reference is not None else None,
                )
            )
        series.append(
            DicomSeries(series_instance_uid=uid, modality=modality, instances=tuple(instances))
        )
    return tuple(series)


def imaging_from_cda(root: etree._Element, *, is_imaging_report: bool) -> ImagingPointers:
    """Pointers from a CDA header and body. Study UIDs only for imaging reports."""
    accessions: list[Identifier] = []
    orders: list[Identifier] = []
    for order in root.iterfind("h:inFulfillmentOf/h:order", namespaces=_NS):
        for child in order:
            if local_name(child) == "accessionNumber":
                if (ident := _identifier(child)) is not None:
                    accessions.append(ident)
            elif local_name(child) == "id" and (ident := _identifier(child)) is not None:
                orders.append(ident)
    studies: list[str] = []
    catalog: tuple[DicomStudy, ...] = ()
    if is_imaging_report or accessions:
        for service_id in root.iterfind("h:documentationOf/h:serviceEvent/h:id", namespaces=_NS):
            uid = _study_uid(service_id)
            if uid is not None and uid not in studies:
                studies.append(uid)
        catalog = _catalog(root)
        for study in catalog:
            if study.study_instance_uid not in studies:
                studies.append(study.study_instance_uid)
    return ImagingPointers(
        accession_numbers=tuple(accessions),
        order_ids=tuple(orders),
        study_instance_uids=tuple(studies),
        catalog=catalog,
    )


def imaging_from_references(references: tuple[CX, ...]) -> ImagingPointers:
    """Pointers from an XDS referenceIdList (CXi values typed by URN)."""
    accessions = tuple(
        Identifier(root=r.authority_oid, extension=r.value)
        for r in references
        if r.type_code == REF_ACCESSION
    )
    orders = tuple(
        Identifier(root=r.authority_oid, extension=r.value)
        for r in references
        if r.type_code == REF_ORDER
    )
    studies = tuple(
        dict.fromkeys(
            r.value for r in references if r.type_code == REF_STUDY_UID and is_dicom_uid(r.value)
        )
    )
    return ImagingPointers(
        accession_numbers=accessions, order_ids=orders, study_instance_uids=studies
    )


def merge_pointers(a: ImagingPointers, b: ImagingPointers) -> ImagingPointers:
    return ImagingPointers(
        accession_numbers=tuple(dict.fromkeys(a.accession_numbers + b.accession_numbers)),
        order_ids=tuple(dict.fromkeys(a.order_ids + b.order_ids)),
        study_instance_uids=tuple(dict.fromkeys(a.study_instance_uids + b.study_instance_uids)),
        catalog=a.catalog or b.catalog,
    )


def imaging_refs(pointers: ImagingPointers) -> tuple[ImagingRef, ...]:
    """The record's flat list. A study gets an accession number only when that is certain.

    Nothing in a CDA links the n-th accession number to the n-th study, so with one accession
    number it applies to every study; with several, studies and accession numbers are listed
    separately rather than paired by guesswork.
    """
    accession_values = list(
        dict.fromkeys(a.extension for a in pointers.accession_numbers if a.extension)
    )
    if len(accession_values) == 1:
        only = accession_values[0]
        if not pointers.study_instance_uids:
            return (ImagingRef(accession_number=only),)
        return tuple(
            ImagingRef(study_instance_uid=uid, accession_number=only)
            for uid in pointers.study_instance_uids
        )
    refs = [ImagingRef(study_instance_uid=uid) for uid in pointers.study_instance_uids]
    refs.extend(ImagingRef(accession_number=value) for value in accession_values)
    return tuple(refs)
