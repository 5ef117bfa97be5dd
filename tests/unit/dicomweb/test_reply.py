"""The STOW-RS response builder: status choice and the Store Instances Response Module (PS3.18 10.5.3, Annex I)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from gateway.dicomweb.reply import InstanceOutcome, build_reply, choose_status, wants_xml

CT = "1.2.840.10008.5.1.4.1.1.2"
OK = InstanceOutcome(CT, "1.2.3.1", 0, study_instance_uid="1.2", series_instance_uid="1.2.9")
WARNED = InstanceOutcome(CT, "1.2.3.2", 0xB000, study_instance_uid="1.2", series_instance_uid="1.2.9")
NOT_DICOM = InstanceOutcome("", "", 0xC000, "not DICOM")
MISMATCH = InstanceOutcome(CT, "1.2.3.3", 0xA900, "study", study_instance_uid="9.9", series_instance_uid="9.9.1")
NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


class StatusTests(SynchronousTestCase):
    """PS3.18 Table 10.5.3-1: 200 all stored, 202 some, 409 none."""

    def test_all_stored_is_200_warnings_included(self) -> None:
        """Stored instances, with or without a warning, give 200."""
        self.assertEqual(choose_status([OK, WARNED]), 200)

    def test_some_stored_is_202(self) -> None:
        """A mix of stored and failed instances gives 202."""
        self.assertEqual(choose_status([OK, NOT_DICOM]), 202)

    def test_none_stored_is_409(self) -> None:
        """Only failures (a single study mismatch included) give 409."""
        self.assertEqual(choose_status([MISMATCH]), 409)
        self.assertEqual(choose_status([MISMATCH, NOT_DICOM]), 409)


class JsonTests(SynchronousTestCase):
    """The DICOM JSON Model body (PS3.18 F.2)."""

    def test_referenced_and_failed_sequences(self) -> None:
        """Stored instances go to 0008,1199 (a warning as 0008,1196), failures to 0008,1198 with 0008,1197."""
        reply = build_reply([OK, WARNED, NOT_DICOM, MISMATCH])
        self.assertEqual((reply.code, reply.content_type), (202, "application/dicom+json"))
        body = json.loads(reply.body)
        referenced = body["00081199"]["Value"]
        self.assertEqual([i["00081155"]["Value"][0] for i in referenced], ["1.2.3.1", "1.2.3.2"])
        self.assertNotIn("00081196", referenced[0])
        self.assertEqual(referenced[1]["00081196"], {"vr": "US", "Value": [0xB000]})
        failed = body["00081198"]["Value"]
        self.assertEqual([i["00081197"]["Value"][0] for i in failed], [0xC000, 0xA900])
        self.assertEqual(failed[0]["00081155"], {"vr": "UI"})  # unknown UID: no Value (PS3.18 F.2.5)
        self.assertNotIn("00081190", body)  # no retrieve_url configured: no Retrieve URL

    def test_retrieve_urls_only_when_configured(self) -> None:
        """With ``retrieve_url``, the study's and each stored instance's WADO-RS URLs are written."""
        body = json.loads(build_reply([OK], retrieve_url="https://pacs/dicomweb/", study="1.2").body)
        self.assertEqual(body["00081190"], {"vr": "UR", "Value": ["https://pacs/dicomweb/studies/1.2"]})
        self.assertEqual(
            body["00081199"]["Value"][0]["00081190"]["Value"],
            ["https://pacs/dicomweb/studies/1.2/series/1.2.9/instances/1.2.3.1"],
        )


class XmlTests(SynchronousTestCase):
    """The Native DICOM Model body (PS3.19 A.1), when the client asks for it."""

    def test_xml_body_parses_and_carries_the_same_items(self) -> None:
        """The XML reply is well-formed and lists the same instances and reasons as the JSON one."""
        reply = build_reply([OK, NOT_DICOM], xml=True)
        self.assertEqual(reply.content_type, "application/dicom+xml")
        root = ET.fromstring(reply.body)
        self.assertEqual(root.tag, NS + "NativeDicomModel")
        sequences = {a.get("keyword"): a for a in root.findall(NS + "DicomAttribute")}
        self.assertEqual(set(sequences), {"FailedSOPSequence", "ReferencedSOPSequence"})
        reason = sequences["FailedSOPSequence"].find(f"{NS}Item/{NS}DicomAttribute[@tag='00081197']/{NS}Value")
        self.assertEqual(reason.text, str(0xC000))
        uid = sequences["ReferencedSOPSequence"].find(f"{NS}Item/{NS}DicomAttribute[@tag='00081155']/{NS}Value")
        self.assertEqual(uid.text, "1.2.3.1")

    def test_accept_header_choice(self) -> None:
        """XML only when the client prefers it; JSON by default and on ties."""
        self.assertFalse(wants_xml(None))
        self.assertFalse(wants_xml("*/*"))
        self.assertTrue(wants_xml("application/dicom+xml"))
        self.assertFalse(wants_xml("application/dicom+xml, application/dicom+json"))
        self.assertTrue(wants_xml("application/dicom+json;q=0.5, application/dicom+xml"))
