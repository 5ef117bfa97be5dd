"""Tests for :mod:`gateway.sopclasses` against pydicom's and pynetdicom's lists."""

from __future__ import annotations

import io
import operator
from contextlib import redirect_stdout

import pydicom.uid
from pydicom._uid_dict import UID_dictionary
from pynetdicom import sop_class
from twisted.trial.unittest import SynchronousTestCase

from gateway import sopclasses
from gateway.sopclasses import (
    ACCEPTED_TRANSFER_SYNTAXES,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    NOT_INSTANCE_STORAGE,
    NOT_NETWORK_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
    is_deflated,
    is_encapsulated,
    is_implicit_vr,
    is_little_endian,
)


class StorageSOPClassTests(SynchronousTestCase):
    """The storage SOP class literal."""

    def test_covers_every_pynetdicom_storage_class(self) -> None:
        """Every storage class pynetdicom 3 knows is in our list."""
        missing = {name: uid for name, uid in sop_class._STORAGE_CLASSES.items() if uid not in STORAGE_SOP_CLASSES}
        self.assertEqual(missing, {})

    def test_covers_every_registry_storage_class(self) -> None:
        """Every instance storage class in pydicom's registry, retired included, is in our list."""
        expected = {
            uid
            for uid, entry in UID_dictionary.items()
            if entry[1] == "SOP Class" and "Storage" in entry[0] and uid not in NOT_INSTANCE_STORAGE
        }
        self.assertEqual(expected - set(STORAGE_SOP_CLASSES), set())

    def test_retired_classes_are_included(self) -> None:
        """Retired classes old modalities send (e.g. US Image Storage, retired) are accepted."""
        self.assertIn("1.2.840.10008.5.1.4.1.1.6", STORAGE_SOP_CLASSES)
        self.assertIn("1.2.840.10008.5.1.4.1.1.3", STORAGE_SOP_CLASSES)

    def test_no_storage_commitment_or_media_directory(self) -> None:
        """Storage Commitment Push/Pull and Media Storage Directory are not instance storage."""
        for uid in ("1.2.840.10008.1.20.1", "1.2.840.10008.1.20.2", "1.2.840.10008.1.3.10"):
            self.assertNotIn(uid, STORAGE_SOP_CLASSES)

    def test_no_verification_or_service_class(self) -> None:
        """Verification and the Storage Service Class UID are not storage SOP classes."""
        self.assertNotIn(VERIFICATION_SOP_CLASS, STORAGE_SOP_CLASSES)
        self.assertNotIn("1.2.840.10008.4.2", STORAGE_SOP_CLASSES)

    def test_every_entry_is_in_registry_or_documented_newer(self) -> None:
        """Each entry is in pydicom's registry as a SOP Class, or in the documented newer-than-registry list."""
        newer = set(sopclasses._NEWER_STORAGE_SOP_CLASSES)
        for uid in STORAGE_SOP_CLASSES:
            if uid in newer:
                continue
            self.assertIn(uid, UID_dictionary)
            self.assertEqual(UID_dictionary[uid][1], "SOP Class", uid)

    def test_newer_classes_are_in_pynetdicom(self) -> None:
        """The newer-than-registry classes are confirmed by pynetdicom's list."""
        self.assertLessEqual(set(sopclasses._NEWER_STORAGE_SOP_CLASSES), set(sop_class._STORAGE_CLASSES.values()))

    def test_literal_matches_generator(self) -> None:
        """The literal equals what the generator computes from the registry today."""
        self.assertEqual(dict(STORAGE_SOP_CLASSES), sopclasses.generate_storage_sop_classes())

    def test_literal_is_read_only(self) -> None:
        """The mapping cannot be changed at run time."""
        self.assertRaises(TypeError, operator.setitem, STORAGE_SOP_CLASSES, "1.2.3", "x")


class TransferSyntaxTests(SynchronousTestCase):
    """The accepted transfer syntax literal and helpers."""

    def test_native_four_first(self) -> None:
        """The four native syntaxes come first."""
        self.assertEqual(
            ACCEPTED_TRANSFER_SYNTAXES[:4],
            (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE),
        )

    def test_no_duplicates(self) -> None:
        """Each syntax appears once."""
        self.assertEqual(len(set(ACCEPTED_TRANSFER_SYNTAXES)), len(ACCEPTED_TRANSFER_SYNTAXES))

    def test_every_pydicom_transfer_syntax_accepted(self) -> None:
        """Every syntax in pydicom.uid.AllTransferSyntaxes is accepted."""
        self.assertEqual(set(pydicom.uid.AllTransferSyntaxes) - set(ACCEPTED_TRANSFER_SYNTAXES), set())

    def test_every_registry_network_transfer_syntax_accepted(self) -> None:
        """Every registry transfer syntax except the non-network ones is accepted."""
        expected = {
            uid for uid, entry in UID_dictionary.items()
            if entry[1] == "Transfer Syntax" and uid not in NOT_NETWORK_TRANSFER_SYNTAXES
        }
        self.assertEqual(expected - set(ACCEPTED_TRANSFER_SYNTAXES), set())

    def test_named_families_present(self) -> None:
        """JPEG, JPEG-LS, JPEG 2000 (Part 2 too), HTJ2K, RLE, MPEG, HEVC and frame deflate are accepted."""
        for uid in (
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.93",
            "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100",
            "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.8.1",
        ):
            self.assertIn(uid, ACCEPTED_TRANSFER_SYNTAXES)

    def test_non_network_syntaxes_excluded(self) -> None:
        """Papyrus 3 and the retired MIME/XML encodings are not accepted."""
        self.assertEqual(NOT_NETWORK_TRANSFER_SYNTAXES & set(ACCEPTED_TRANSFER_SYNTAXES), set())

    def test_literal_matches_generator(self) -> None:
        """The literal equals what the generator computes from the registry today."""
        self.assertEqual(ACCEPTED_TRANSFER_SYNTAXES, sopclasses.generate_transfer_syntaxes())

    def test_helpers_agree_with_pydicom_for_its_syntaxes(self) -> None:
        """For pydicom's own list, our helpers agree with pydicom's UID properties (JPIP HTJ2K aside)."""
        jpip = {"1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205"}
        for uid in pydicom.uid.AllTransferSyntaxes:
            ts = pydicom.uid.UID(uid)
            self.assertEqual(is_little_endian(uid), ts.is_little_endian, uid)
            self.assertEqual(is_implicit_vr(uid), ts.is_implicit_VR, uid)
            if uid not in jpip:
                self.assertEqual(is_encapsulated(uid), ts.is_encapsulated, uid)
                self.assertEqual(is_deflated(uid), ts.is_deflated, uid)

    def test_jpip_is_not_encapsulated(self) -> None:
        """JPIP referenced syntaxes carry no Pixel Data (PS3.5 8.4, A.11), so are not encapsulated."""
        for uid in ("1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.204"):
            self.assertFalse(is_encapsulated(uid))

    def test_deflated_syntaxes(self) -> None:
        """Deflated Explicit VR LE and the JPIP Deflate variants deflate the data set; frame deflate does not."""
        self.assertTrue(is_deflated(DEFLATED_EXPLICIT_VR_LE))
        self.assertTrue(is_deflated("1.2.840.10008.1.2.4.95"))
        self.assertTrue(is_deflated("1.2.840.10008.1.2.4.205"))
        self.assertFalse(is_deflated("1.2.840.10008.1.2.8.1"))
        self.assertTrue(is_encapsulated("1.2.840.10008.1.2.8.1"))

    def test_unknown_syntax_is_not_encapsulated(self) -> None:
        """A private syntax we do not know is not claimed to be encapsulated."""
        self.assertFalse(is_encapsulated("1.2.3.4"))


class GeneratorCommandTests(SynchronousTestCase):
    """The --generate command line."""

    def test_generate_prints_the_literal_blocks(self) -> None:
        """--generate prints source containing both literal names and a known UID."""
        out = io.StringIO()
        with redirect_stdout(out):
            status = sopclasses.main(["--generate"])
        self.assertEqual(status, 0)
        text = out.getvalue()
        self.assertIn("STORAGE_SOP_CLASSES", text)
        self.assertIn("ACCEPTED_TRANSFER_SYNTAXES", text)
        self.assertIn('"1.2.840.10008.5.1.4.1.1.2": "CT Image Storage"', text)

    def test_generated_source_matches_module_text(self) -> None:
        """The module's generated block is byte-identical to the generator output."""
        with open(sopclasses.__file__, encoding="utf-8") as f:
            text = f.read()
        start = text.index("\n", text.index("# --- BEGIN GENERATED")) + 1
        end = text.index("# --- END GENERATED ---")
        self.assertEqual(text[start:end], sopclasses.generate_source())
