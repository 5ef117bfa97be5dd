"""Routing rules and morphing end to end (issue 4): storescu -> gateway -> storescp +B.

The gateway runs as a real process; modalities are DCMTK ``storescu`` (or
the pynetdicom SCU where a test needs the C-STORE status of each
instance); destinations are ``storescp +B``, which writes the data set
bytes exactly as the gateway sent them. For each morphing route the
received file is compared with the original element by element (what the
route touches changed as expected, nothing else changed) and its pixel
data, from the (7FE0,0010) element header to the end of the file, is
byte-identical. Waits poll state with a bound; nothing sleeps for a fixed
time.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.datasets import ct_dataset, write_instance
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin, pynetdicom_store

#: The element header of Pixel Data (7FE0,0010) in explicit VR little endian.
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"


def pixel_tail(path: Path) -> bytes:
    """The bytes from the Pixel Data element header to the end of the file.

    :param path: a Part 10 file in explicit VR little endian.
    :returns: the bytes.
    :raises AssertionError: when the file has no Pixel Data element.
    """
    data = path.read_bytes()
    offset = data.find(PIXEL_DATA_HEADER)
    assert offset > 0, f"{path}: no (7FE0,0010) OW element"
    return data[offset:]


def header_values(path: Path) -> dict[str, Any]:
    """The top-level data set elements (no file meta, no pixel data) by keyword or tag.

    :param path: a Part 10 file.
    :returns: ``{name: value}`` with multi-values as lists.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    values: dict[str, Any] = {}
    for element in ds:
        if element.VR == "SQ":
            values[element.keyword or str(element.tag)] = [str(item) for item in element.value]
            continue
        value = element.value
        values[element.keyword or str(element.tag)] = (
            [str(v) for v in value] if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)
        )
    return values


def is_valid_uid(text: str) -> bool:
    """PS3.5 9.1: at most 64 characters, digits and dots, no leading zero in a component.

    :param text: the UID.
    :returns: whether it is valid.
    """
    parts = text.split(".")
    return 0 < len(text) <= 64 and all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)


class RulesTestCase(ForwardTestMixin, TestCase):
    """Shared helpers: send with storescu and wait for one file per storescp."""

    skip = dcmtk.skip_reason("storescu", "storescp")
    timeout = 180

    def send(self, gateway: GatewayProcess, *paths: Path, calling_ae: str = "STORESCU") -> None:
        """Send files with storescu (explicit VR little endian first) and require success.

        :param gateway: the gateway.
        :param paths: the files.
        :param calling_ae: the calling AE title.
        """
        result = dcmtk.storescu(gateway.port, paths, calling_ae=calling_ae, extra=["-xe"])
        self.assertEqual(result.returncode, 0, result.describe())

    def one_file(self, gateway: GatewayProcess, scp: dcmtk.Storescp, what: str, count: int = 1) -> list[Path]:
        """Wait until ``scp`` has ``count`` files and return them.

        :param gateway: the gateway, for the failure message.
        :param scp: the storescp.
        :param what: what is awaited.
        :param count: how many files.
        :returns: the files.
        """
        # storescp writes a file before its C-STORE-RSP, and the gateway journals the delivery after
        # that answer: once nothing is queued or in flight, the files are complete.
        return self.wait_for(gateway, lambda: len(scp.files()) >= count and self.idle(gateway) and scp.files(), 60, what)


class MorphInteropTests(RulesTestCase):
    """set, delete, replace, uid_remap and deidentify: exactly the expected changes, pixel data verbatim."""

    def setUp(self) -> None:
        """One original file with elements each route touches."""
        self.source = Path(self.mktemp()).resolve()
        self.source.mkdir()
        self.original = write_instance(self.source / "ct.dcm", ExplicitVRLittleEndian, 64 * 1024, seed=7)
        ds = pydicom.dcmread(self.original)
        ds.AccessionNumber = "000123"
        ds.PatientBirthDate = "19700101"
        ds.InstitutionName = "Old Hospital"
        ds.StudyDescription = "CT HEAD"
        ds.save_as(self.original, enforce_file_format=True)
        self.before = header_values(self.original)

    def changed(self, received: Path) -> dict[str, tuple[Any, Any]]:
        """Elements whose value differs between the original and ``received``.

        :param received: the file a destination wrote.
        :returns: ``{name: (old, new)}``; ``None`` for absent.
        """
        after = header_values(received)
        return {name: (self.before.get(name), after.get(name))
                for name in sorted(set(self.before) | set(after))
                if self.before.get(name) != after.get(name)}

    def test_set_delete_replace_change_exactly_those_elements(self) -> None:
        """set (literal and template), delete and replace change four elements; pixel data is byte-identical."""
        scp = self.storescp("edit")
        gateway = self.start_gateway(
            destinations={"edit": dicom_destination(scp.port)},
            routes=[{"name": "edit", "match": {"Modality": "CT", "calling_ae_title": "CT*"}, "morph": [
                {"set": {"InstitutionName": "Example Hospital", "PatientName": "{PatientID}^R"}},
                {"delete": ["PatientBirthDate"]},
                {"replace": {"tag": "AccessionNumber", "pattern": "^0+", "with": ""}},
            ], "forward": ["edit"]}],
        )
        self.send(gateway, self.original, calling_ae="CT1")
        [received] = self.one_file(gateway, scp, "the edited copy")
        self.assertEqual(self.changed(received), {
            "AccessionNumber": ("000123", "123"),
            "InstitutionName": ("Old Hospital", "Example Hospital"),
            "PatientBirthDate": ("19700101", None),
            "PatientName": ("TEST^INTEROP", "INTEROP-1^R"),
        })
        self.assertEqual(pixel_tail(received), pixel_tail(self.original))

    def test_uid_remap_is_deterministic_valid_and_touches_only_uids(self) -> None:
        """Two instances of one study get one new study UID; only instance UIDs change; pixels verbatim."""
        second = write_instance(self.source / "ct2.dcm", ExplicitVRLittleEndian, 64 * 1024, seed=8,
                                study_instance_uid=str(self.before["StudyInstanceUID"]),
                                series_instance_uid=str(self.before["SeriesInstanceUID"]))
        scp = self.storescp("remap")
        gateway = self.start_gateway(
            destinations={"remap": dicom_destination(scp.port)},
            routes=[{"name": "remap", "morph": [{"uid_remap": {"salt": "interop-salt", "root": "2.25"}}],
                     "forward": ["remap"]}],
        )
        self.send(gateway, self.original, second)
        files = self.one_file(gateway, scp, "two remapped copies", 2)
        by_pixels = {pixel_tail(f): f for f in files}
        received = by_pixels[pixel_tail(self.original)]
        self.assertEqual(len(by_pixels), 2)
        changes = self.changed(received)
        self.assertEqual(sorted(changes), ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
        for name, (old, new) in changes.items():
            self.assertTrue(is_valid_uid(new), f"{name} {new!r}")
            self.assertTrue(new.startswith("2.25."), new)
        other = header_values(by_pixels[pixel_tail(second)])
        after = header_values(received)
        self.assertEqual((other["StudyInstanceUID"], other["SeriesInstanceUID"]),
                         (after["StudyInstanceUID"], after["SeriesInstanceUID"]))
        self.assertNotEqual(other["SOPInstanceUID"], after["SOPInstanceUID"])

    def test_deidentify_basic_applies_the_profile_and_keeps_pixels(self) -> None:
        """deidentify: basic empties or removes identifying elements, remaps UIDs, flags the data set."""
        scp = self.storescp("deid")
        gateway = self.start_gateway(
            destinations={"deid": dicom_destination(scp.port)},
            routes=[{"name": "deid", "morph": [{"deidentify": "basic"}], "forward": ["deid"]}],
        )
        self.send(gateway, self.original)
        [received] = self.one_file(gateway, scp, "the de-identified copy")
        after = header_values(received)
        # PS3.15 Table E.1-1: Patient's Name Z, Patient ID Z, Birth Date Z,
        # Accession Number Z, Institution Name X/Z/D, Study Description X,
        # the instance UIDs U; PatientIdentityRemoved YES (E.1.1 item 6).
        self.assertEqual((after.get("PatientName"), after.get("PatientID"), after.get("PatientBirthDate"),
                          after.get("AccessionNumber")), ("", "", "", ""))
        self.assertNotIn("StudyDescription", after)
        self.assertNotEqual(after.get("InstitutionName"), "Old Hospital")
        for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            self.assertNotEqual(after[name], self.before[name])
            self.assertTrue(is_valid_uid(after[name]), name)
        self.assertEqual(after["PatientIdentityRemoved"], "YES")
        self.assertIn("DeidentificationMethod", after)
        for name in ("Rows", "Columns", "BitsAllocated", "Modality", "SOPClassUID", "PhotometricInterpretation"):
            self.assertEqual(after[name], self.before[name], name)
        self.assertEqual(pixel_tail(received), pixel_tail(self.original))


class OutcomeInteropTests(RulesTestCase):
    """reject, drop, unrouted, a failing morph, and SIGHUP with a changed route."""

    def dataset(self, patient_id: str, **elements: str) -> Dataset:
        """A small CT data set.

        :param patient_id: its PatientID.
        :param elements: more keyword -> value.
        :returns: the data set.
        """
        ds = ct_dataset(8, 8)
        ds.PatientID = patient_id
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        return ds

    def test_reject_drop_and_unrouted_outcomes(self) -> None:
        """0xA900 for a reject route; drop acknowledges and forwards nothing; an unmatched one lands in unrouted/."""
        scp = self.storescp("fwd")
        gateway = self.start_gateway(
            destinations={"fwd": dicom_destination(scp.port)},
            routes=[
                {"name": "refuse", "match": {"PatientID": "REJECT*"}, "reject": 0xA900},
                {"name": "discard", "match": {"PatientID": "DROP*"}, "drop": True},
                {"name": "keep", "match": {"PatientID": "FWD*"}, "forward": ["fwd"]},
            ],
        )
        rejected, dropped, unrouted, forwarded = (
            self.dataset("REJECT-1"), self.dataset("DROP-1"), self.dataset("OTHER-1"), self.dataset("FWD-1"))
        statuses = pynetdicom_store(gateway.port, [rejected, dropped, unrouted, forwarded])
        self.assertEqual(statuses, [0xA900, 0x0000, 0x0000, 0x0000])
        [received] = self.one_file(gateway, scp, "the forwarded instance")
        self.assertEqual(pydicom.dcmread(received).SOPInstanceUID, forwarded.SOPInstanceUID)
        self.wait_for(gateway, lambda: self.idle(gateway), 30, "an idle queue")
        self.assertEqual(len(scp.files()), 1)
        kept = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in (gateway.spool / "unrouted").glob("*.dcm")}
        self.assertEqual(kept, {str(unrouted.SOPInstanceUID)})
        self.assertEqual(gateway.queue_rows()["fwd"]["delivered"], 1)

    def test_failing_morph_dead_letters_only_that_routes_copy(self) -> None:
        """A set producing a PatientID longer than LO dead-letters route 'bad' (morph: ...); route 'good' delivers."""
        bad_scp, good_scp = self.storescp("bad"), self.storescp("good")
        gateway = self.start_gateway(
            destinations={"bad": dicom_destination(bad_scp.port), "good": dicom_destination(good_scp.port)},
            routes=[
                {"name": "bad", "morph": [{"set": {"PatientID": "{StudyDescription}{StudyDescription}{StudyDescription}"}}],
                 "forward": ["bad"]},
                {"name": "good", "forward": ["good"]},
            ],
        )
        ds = self.dataset("P1", StudyDescription="A" * 30)
        self.assertEqual(pynetdicom_store(gateway.port, [ds]), [0x0000])
        [received] = self.one_file(gateway, good_scp, "the unmorphed copy at 'good'")
        self.assertEqual(pydicom.dcmread(received).PatientID, "P1")
        dead = self.wait_for(gateway, lambda: gateway.dead_letters(), 30, "a dead letter for 'bad'")
        self.assertEqual([(d["destination"], d["route"]) for d in dead], [("bad", "bad")])
        self.assertTrue(dead[0]["dead_reason"].startswith("morph: "), dead[0]["dead_reason"])
        self.assertIn("PatientID", dead[0]["dead_reason"])
        self.assertEqual(bad_scp.files(), [])

    def test_sighup_applies_a_changed_route_to_the_next_instance(self) -> None:
        """After SIGHUP with a new InstitutionName in the route, the next instance carries the new value."""
        scp = self.storescp("reload")
        route = {"name": "mark", "morph": [{"set": {"InstitutionName": "ONE"}}], "forward": ["reload"]}
        gateway = self.start_gateway(destinations={"reload": dicom_destination(scp.port)}, routes=[route])
        first = self.dataset("P1")
        self.assertEqual(pynetdicom_store(gateway.port, [first]), [0x0000])
        self.one_file(gateway, scp, "the first instance")
        gateway.rewrite_config(routes=[{**route, "morph": [{"set": {"InstitutionName": "TWO"}}]}])
        gateway.reload()
        self.wait_for(gateway, lambda: "configuration reloaded" in gateway.log_text(), 20, "the reload")
        second = self.dataset("P2")
        self.assertEqual(pynetdicom_store(gateway.port, [second]), [0x0000])
        files = self.one_file(gateway, scp, "the second instance", 2)
        by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): str(pydicom.dcmread(f).InstitutionName) for f in files}
        self.assertEqual(by_uid, {str(first.SOPInstanceUID): "ONE", str(second.SOPInstanceUID): "TWO"})
