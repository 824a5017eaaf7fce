"""Sample documents: PDF, CDA N1/N3, XDM archives, e-mails (tests, `mssgate demo`, benches).

They follow the shapes of the ANS examples (CI-SIS header, CR-IMG DICOM pointers, DRIMbox
METADATA.XML) so that a clone without ../shared/fixtures still exercises every code path.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage

from lxml import etree

HL7 = "urn:hl7-org:v3"
PS320 = "urn:dicom-org:ps3-20"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
SOAP = "http://www.w3.org/2003/05/soap-envelope"
OID_TEST = "1.2.250.1.213.1.4.10"
OID_NIR = "1.2.250.1.213.1.4.8"


@dataclass(frozen=True)
class Patient:
    ins: str = "279035121518989"
    oid: str = OID_TEST
    family: str = "PAT-TROIS"
    given_list: str = "DOMINIQUE MARIE-LOUISE"
    first_given: str = "DOMINIQUE"
    sex: str = "F"
    birth_time: str = "19790328"
    birthplace: str | None = "51215"


PAT_TROIS = Patient()
NESSI = Patient(
    ins="277076322082910",
    family="NESSI",
    given_list="RUTH",
    first_given="RUTH",
    sex="F",
    birth_time="19770714",
    birthplace="63220",
)
CORSE = Patient(
    ins="188102B17295165",
    family="CORSE",
    given_list="FIGATELLIX",
    first_given="FIGATELLIX",
    sex="M",
    birth_time="19881012",
    birthplace="2B033",
)


# -- PDF ---------------------------------------------------------------------------------


def _pdf_from_objects(objects: Sequence[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def make_pdf(
    lines: Sequence[str],
    *,
    pages: int = 1,
    title: str | None = None,
    info: Mapping[str, str] | None = None,
    page_lines: Sequence[Sequence[str]] = (),
) -> bytes:
    """A small valid PDF showing `lines` (Helvetica) on each of `pages` pages.

    `page_lines`, when given, are the lines of each page instead (one page per item).
    `title` and `info` (names without the slash: Author, Producer...) fill the Info dictionary.
    """
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    font_number = 3
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for shown in page_lines or [lines] * pages:
        commands = [b"BT /F1 12 Tf 72 720 Td"]
        commands.extend(_pdf_string(line) + b" Tj 0 -16 Td" for line in shown)
        commands.append(b"ET")
        content = b" ".join(commands)
        content_number = len(objects) + 1
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        page_number = len(objects) + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
            % (font_number, content_number)
        )
        kids.append(page_number)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    pdf = _pdf_from_objects(objects)
    entries = {**({"Title": title} if title is not None else {}), **(info or {})}
    if entries:
        # Info dictionary through an incremental-free rewrite is overkill; pypdf reads /Title
        # from the trailer, so add an Info object.
        pairs = b" ".join(
            b"/" + k.encode("ascii") + b" " + _pdf_string(v) for k, v in entries.items()
        )
        objects.append(b"<< " + pairs + b" >>")
        pdf = _pdf_from_objects(objects).replace(
            b"/Root 1 0 R >>", b"/Root 1 0 R /Info %d 0 R >>" % len(objects)
        )
    return pdf


def make_loop_pdf() -> bytes:
    """A PDF whose page tree points back to itself (Pages -> Pages -> first Pages)."""
    return _pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Pages /Kids [2 0 R] /Parent 2 0 R /Count 1 >>",
        ]
    )


# -- CDA ---------------------------------------------------------------------------------


def _h(tag: str) -> str:
    return f"{{{HL7}}}{tag}"


def _sub(
    parent: etree._Element, tag: str, text: str | None = None, **attrib: str
) -> etree._Element:
    element = etree.SubElement(parent, _h(tag), attrib)
    if text is not None:
        element.text = text
    return element


@dataclass(frozen=True)
class CdaSpec:
    patient: Patient = PAT_TROIS
    level: str = "N3"
    code: str = "18748-4"
    title: str = "CR d'imagerie médicale"
    doc_root: str = "1.2.250.1.999.1.1.45.1"
    set_root: str = "1.2.250.1.999.1.1.45"
    version: int = 1
    replaces: str | None = None
    author_rpps: str = "801234560801"
    accessions: tuple[tuple[str, str], ...] = (("1.2.250.1.999.27", "ACC-0001"),)
    studies: tuple[str, ...] = ("1.2.250.1.999.27.123.1",)
    sections: tuple[tuple[str, str], ...] = (
        ("55752-0", "Informations cliniques"),
        ("55111-9", "Technique d'imagerie"),
        ("59776-5", "Résultats"),
        ("19005-8", "Conclusion"),
    )
    dicom_catalog: bool = True
    pdf: bytes | None = None
    pdf_base64: str | None = None
    omit_traits: frozenset[str] = frozenset()
    extra_patient_ids: tuple[tuple[str, str], ...] = ()
    include_ins: bool = True
    overrides: dict[str, str] = field(default_factory=dict)


def make_cda(spec: CdaSpec = CdaSpec()) -> bytes:
    """A CI-SIS CDA R2 header with a CR-IMG-like N3 body, or an N1 body with `spec.pdf`."""
    root = etree.Element(_h("ClinicalDocument"), nsmap={None: HL7, "ps3-20": PS320})  # type: ignore[dict-item]
    _sub(root, "realmCode", code="FR")
    _sub(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    _sub(root, "templateId", root="2.16.840.1.113883.2.8.2.1")
    _sub(root, "templateId", root="1.2.250.1.213.1.1.1.1")
    if spec.level == "N1":
        _sub(root, "templateId", root="1.3.6.1.4.1.19376.1.2.20")
    else:
        _sub(root, "templateId", root="1.2.250.1.213.1.1.1.45", extension="2024.01")
    _sub(root, "id", root=spec.doc_root)
    _sub(root, "code", code=spec.code, codeSystem="2.16.840.1.113883.6.1")
    _sub(root, "title", spec.title)
    _sub(root, "effectiveTime", value="20210108111700+0100")
    _sub(root, "confidentialityCode", code="N", codeSystem="2.16.840.1.113883.5.25")
    _sub(root, "languageCode", code="fr-FR")
    _sub(root, "setId", root=spec.set_root)
    _sub(root, "versionNumber", value=str(spec.version))
    role = _sub(_sub(root, "recordTarget"), "patientRole")
    patient = spec.patient
    if spec.include_ins:
        _sub(role, "id", root=patient.oid, extension=patient.ins)
    _sub(role, "id", root="1.2.3.4.567.8.9.10", extension="IPP-0001")
    for oid, value in spec.extra_patient_ids:
        _sub(role, "id", root=oid, extension=value)
    person = _sub(role, "patient", classCode="PSN")
    name = _sub(person, "name")
    if "family" not in spec.omit_traits:
        _sub(name, "family", patient.family, qualifier="BR")
    if "given" not in spec.omit_traits:
        _sub(name, "given", patient.given_list)
        _sub(name, "given", patient.first_given, qualifier="BR")
    _sub(name, "family", patient.family, qualifier="CL")
    if "sex" not in spec.omit_traits:
        _sub(
            person, "administrativeGenderCode", code=patient.sex, codeSystem="2.16.840.1.113883.5.1"
        )
    if "birth_date" not in spec.omit_traits:
        _sub(person, "birthTime", value=patient.birth_time)
    if "birthplace" not in spec.omit_traits and patient.birthplace:
        addr = _sub(_sub(_sub(person, "birthplace"), "place"), "addr")
        _sub(addr, "county", patient.birthplace)
    author = _sub(_sub(root, "author"), "assignedAuthor")
    _sub(author, "id", root="1.2.250.1.71.4.2.1", extension=spec.author_rpps)
    custodian = _sub(
        _sub(_sub(root, "custodian"), "assignedCustodian"), "representedCustodianOrganization"
    )
    _sub(custodian, "id", root="1.2.250.1.71.4.2.2", extension="1920008059")
    _sub(custodian, "name", "Centre de radiologie")
    for index, (acc_root, acc_value) in enumerate(spec.accessions):
        order = _sub(_sub(root, "inFulfillmentOf"), "order")
        _sub(order, "id", root="1.2.250.1.999.12", extension=f"ORD-{index}")
        etree.SubElement(order, f"{{{PS320}}}accessionNumber", root=acc_root, extension=acc_value)
    for uid in spec.studies:
        event = _sub(_sub(root, "documentationOf"), "serviceEvent", classCode="ACT")
        _sub(event, "id", root=uid)
    if spec.replaces is not None:
        related = _sub(root, "relatedDocument", typeCode="RPLC")
        _sub(_sub(related, "parentDocument"), "id", root=spec.replaces)
    component = _sub(root, "component")
    if spec.level == "N1":
        body = _sub(component, "nonXMLBody")
        payload = spec.pdf_base64
        if payload is None:
            payload = base64.encodebytes(spec.pdf or make_pdf(["Compte rendu"])).decode()
        _sub(body, "text", payload, mediaType="application/pdf", representation="B64")
    else:
        structured = _sub(component, "structuredBody")
        for code, title in spec.sections:
            section = _sub(_sub(structured, "component"), "section")
            _sub(section, "code", code=code, codeSystem="2.16.840.1.113883.6.1")
            _sub(section, "title", title)
            _sub(section, "text", f"{title}.")
            if code == "55111-9" and spec.dicom_catalog:
                _catalog(section, spec.studies)
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    for old, new in spec.overrides.items():
        xml = xml.replace(old.encode(), new.encode())
    return xml


def _catalog(parent: etree._Element, studies: Sequence[str]) -> None:
    section = _sub(_sub(parent, "component"), "section")
    _sub(section, "code", code="121181", codeSystem="1.2.840.10008.2.16.4")
    _sub(section, "title", "Catalogue d'objets DICOM")
    for uid in studies:
        study = _sub(_sub(section, "entry"), "act", classCode="ACT", moodCode="EVN")
        _sub(study, "id", root=uid)
        _sub(study, "code", code="113014", codeSystem="1.2.840.10008.2.16.4")
        series = _sub(_sub(study, "entryRelationship", typeCode="COMP"), "act", classCode="ACT")
        _sub(series, "id", root=f"{uid}.1")
        code = _sub(series, "code", code="113015", codeSystem="1.2.840.10008.2.16.4")
        qualifier = _sub(code, "qualifier")
        _sub(qualifier, "name", code="121139")
        _sub(qualifier, "value", code="CT")
        sop = _sub(
            _sub(series, "entryRelationship", typeCode="COMP"), "observation", classCode="DGIMG"
        )
        _sub(sop, "id", root=f"{uid}.1.1")
        _sub(sop, "code", code="1.2.840.10008.5.1.4.1.1.2", codeSystem="1.2.840.10008.2.6.1")
        _sub(
            _sub(sop, "text", mediaType="application/dicom"),
            "reference",
            value=f"http://wado.example/{uid}",
        )


# -- XDM ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntrySpec:
    name: str
    data: bytes
    mime_type: str = "text/xml"
    type_code: str = "18748-4"
    patient_id: str | None = None  # CX; defaults to the patient's INS under its OID
    source_patient_info: tuple[str, ...] | None = None
    references: tuple[str, ...] = ()
    write_hash: bool = True
    size_override: int | None = None
    class_code: str = "REPORTS"


def cx(patient: Patient) -> str:
    return f"{patient.ins}^^^&{patient.oid}&ISO^NH"


def pid_info(patient: Patient) -> tuple[str, ...]:
    values = [
        f"PID-5|{patient.family}^{patient.first_given}^^^^^L",
        f"PID-7|{patient.birth_time}",
        f"PID-8|{patient.sex}",
    ]
    if patient.birthplace:
        values.append(f"PID-11|^^^^^^BDL^^{patient.birthplace}")
    return tuple(values)


def _rim(tag: str) -> str:
    return f"{{{RIM}}}{tag}"


def _slot(parent: etree._Element, name: str, values: Sequence[str]) -> None:
    slot = etree.SubElement(parent, _rim("Slot"), name=name)
    value_list = etree.SubElement(slot, _rim("ValueList"))
    for value in values:
        etree.SubElement(value_list, _rim("Value")).text = value


def _classification(parent: etree._Element, scheme: str, code: str, coding: str, obj: str) -> None:
    node = etree.SubElement(
        parent,
        _rim("Classification"),
        classificationScheme=scheme,
        classifiedObject=obj,
        nodeRepresentation=code,
        id=f"cl-{obj}-{scheme[-4:]}",
    )
    _slot(node, "codingScheme", [coding])


def _external(parent: etree._Element, scheme: str, value: str, obj: str) -> None:
    etree.SubElement(
        parent,
        _rim("ExternalIdentifier"),
        identificationScheme=scheme,
        value=value,
        registryObject=obj,
        id=f"ei-{obj}-{scheme[-4:]}",
    )


def make_metadata(
    patient: Patient,
    entries: Sequence[EntrySpec],
    *,
    subset: str,
    uri_prefix: str = "",
    soap: bool = False,
    submission_patient: str | None = None,
) -> bytes:
    request = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"rim": RIM, "lcm": LCM})
    objects = etree.SubElement(request, _rim("RegistryObjectList"))
    package = etree.SubElement(objects, _rim("RegistryPackage"), id="SubmissionSet01")
    _external(
        package,
        "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
        submission_patient or cx(patient),
        "SubmissionSet01",
    )
    for index, entry in enumerate(entries, start=1):
        obj = f"Document{index:02d}"
        element = etree.SubElement(
            objects,
            _rim("ExtrinsicObject"),
            id=obj,
            mimeType=entry.mime_type,
            objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",
        )
        _slot(element, "creationTime", ["20240116151112"])
        if entry.write_hash:
            _slot(element, "hash", [hashlib.sha1(entry.data, usedforsecurity=False).hexdigest()])
            _slot(element, "size", [str(entry.size_override or len(entry.data))])
        _slot(element, "sourcePatientId", [entry.patient_id or cx(patient).replace("^NH", "^PI")])
        _slot(element, "sourcePatientInfo", list(entry.source_patient_info or pid_info(patient)))
        _slot(element, "URI", [uri_prefix + entry.name])
        if entry.references:
            _slot(element, "urn:ihe:iti:xds:2013:referenceIdList", list(entry.references))
        name = etree.SubElement(element, _rim("Name"))
        etree.SubElement(name, _rim("LocalizedString"), value=f"Document {index}")
        author = etree.SubElement(
            element,
            _rim("Classification"),
            classificationScheme="urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
            classifiedObject=obj,
            nodeRepresentation="",
            id=f"author-{obj}",
        )
        _slot(
            author, "authorPerson", ["801234560801^DOC^KIT^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"]
        )
        _classification(
            element,
            "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
            entry.class_code,
            "1.2.250.1.213.1.1.4.1",
            obj,
        )
        _classification(
            element,
            "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",
            entry.type_code,
            "2.16.840.1.113883.6.1",
            obj,
        )
        _classification(
            element,
            "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
            "N",
            "2.16.840.1.113883.5.25",
            obj,
        )
        _external(
            element,
            "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
            entry.patient_id or cx(patient),
            obj,
        )
        _external(
            element, "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab", f"1.2.250.1.999.{index}", obj
        )
    root = request
    if soap:
        envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
        etree.SubElement(envelope, f"{{{SOAP}}}Header")
        etree.SubElement(envelope, f"{{{SOAP}}}Body").append(request)
        root = envelope
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def make_xdm(
    patient: Patient,
    entries: Sequence[EntrySpec],
    *,
    subset: str = "SUBSET01",
    uri_relative_to_root: bool = False,
    soap: bool = False,
    submission_patient: str | None = None,
    extra_members: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    """An IHE_XDM.ZIP: README.TXT, INDEX.HTM, IHE_XDM/<subset>/METADATA.XML + documents."""
    metadata = make_metadata(
        patient,
        entries,
        subset=subset,
        uri_prefix=f"{subset}/" if uri_relative_to_root else "",
        soap=soap,
        submission_patient=submission_patient,
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.TXT", "Emetteur : tests\n")
        archive.writestr("INDEX.HTM", "<html>index</html>")
        archive.writestr(f"IHE_XDM/{subset}/METADATA.XML", metadata)
        for entry in entries:
            archive.writestr(f"IHE_XDM/{subset}/{entry.name}", entry.data)
        for name, data in extra_members:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_tree(files: Sequence[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


# -- e-mail ------------------------------------------------------------------------------


def make_mail(
    attachments: Sequence[tuple[str | None, bytes, str]],
    *,
    subject: str = "XDM/1.0/DDM+CR d'imagerie PAT-TROIS DOMINIQUE 28/03/1979",
) -> bytes:
    message = EmailMessage()
    message["From"] = "radiologue@hopital.mssante.fr"
    message["To"] = "ris@clinique.mssante.fr"
    message["Subject"] = subject
    message["Message-ID"] = "<test-0001@hopital.mssante.fr>"
    message.set_content("Veuillez trouver ci-joint le compte rendu.")
    for filename, data, content_type in attachments:
        maintype, subtype = content_type.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def with_patient(spec: CdaSpec, patient: Patient) -> CdaSpec:
    return replace(spec, patient=patient)


# -- the shipped samples (`mssgate sample`, `mssgate demo`) ------------------------------


def make_sample_cda() -> bytes:
    """The CR-IMG report of the test patient PAT-TROIS: accepted with test INS allowed."""
    return make_cda(CdaSpec())


def make_sample_xdm() -> bytes:
    """An IHE_XDM.ZIP holding `make_sample_cda()` as its one document."""
    return make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", make_sample_cda())])
