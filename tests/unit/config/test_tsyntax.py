"""Tests for a DICOM destination's ``transfer_syntax`` and ``lossy`` keys (issue 17).

Each error test checks the 1-based line and key path an operator will see.
"""

from __future__ import annotations

from gateway.codecs import PRESERVE, TransferSyntaxPolicy
from gateway.config.schema import DicomDestination
from tests.unit.config.test_load import MINIMAL, LoadTestCase


class DicomDestinationPolicyTests(LoadTestCase):
    """``destinations.<n>.transfer_syntax`` / ``lossy`` on a DICOM destination."""

    def test_default_is_preserve(self) -> None:
        """Without the keys a destination gets what was received."""
        config = self.load(MINIMAL + "destinations:\n  pacs: {ae_title: PACS, host: h, port: 104}\n")
        (pacs,) = config.destinations
        assert isinstance(pacs, DicomDestination)
        self.assertEqual(pacs.policy, PRESERVE)

    def test_lossless_targets_read(self) -> None:
        """Each lossless target is read into the destination's policy."""
        for target in ("uncompressed", "jpeg2000-lossless", "jpeg-ls-lossless", "rle"):
            config = self.load(
                MINIMAL + f"destinations:\n  pacs: {{ae_title: PACS, host: h, port: 104, transfer_syntax: {target}}}\n"
            )
            (pacs,) = config.destinations
            assert isinstance(pacs, DicomDestination)
            self.assertEqual(pacs.policy, TransferSyntaxPolicy(target, False))

    def test_lossy_target_with_lossy_true(self) -> None:
        """A lossy target is taken with ``lossy: true``."""
        config = self.load(
            MINIMAL + "destinations:\n  web: {ae_title: WEB, host: h, port: 104, transfer_syntax: jpeg2000, lossy: true}\n"
        )
        (web,) = config.destinations
        assert isinstance(web, DicomDestination)
        self.assertEqual(web.policy, TransferSyntaxPolicy("jpeg2000", True))
        self.assertEqual(web.policy.transfer_syntax_uid, "1.2.840.10008.1.2.4.91")

    def test_lossy_target_without_lossy_refused(self) -> None:
        """A lossy target without ``lossy: true`` is an error naming PS3.3's rule."""
        self.assertOneError(
            MINIMAL + "destinations:\n  web:\n    ae_title: WEB\n    host: h\n    port: 104\n    transfer_syntax: jpeg2000\n",
            8,  # the destination's mapping (policy_of reports at it)
            "destinations.web.transfer_syntax",
            "lossy: true",
        )

    def test_lossy_target_with_storage_commitment_refused(self) -> None:
        """A lossy copy has a new SOP Instance UID: with ``storage_commitment: true`` it is refused at load."""
        self.assertOneError(
            MINIMAL + "destinations:\n  web:\n    ae_title: WEB\n    host: h\n    port: 104\n"
            "    transfer_syntax: jpeg2000\n    lossy: true\n    storage_commitment: true\n",
            8,
            "destinations.web.transfer_syntax",
            "storage_commitment",
        )

    def test_lossless_target_with_storage_commitment_loads(self) -> None:
        """A lossless conversion keeps the SOP Instance UID: storage commitment still applies."""
        config = self.load(MINIMAL + "destinations:\n  pacs: {ae_title: PACS, host: h, port: 104,"
                           " transfer_syntax: rle, storage_commitment: true}\n")
        (pacs,) = config.destinations
        assert isinstance(pacs, DicomDestination)
        self.assertTrue(pacs.storage_commitment)

    def test_unknown_target_refused(self) -> None:
        """A target that is not one of the list is refused at its line."""
        self.assertOneError(
            MINIMAL + "destinations:\n  pacs:\n    ae_title: PACS\n    host: h\n    port: 104\n    transfer_syntax: jpeg-xl\n",
            11,
            "destinations.pacs.transfer_syntax",
            "jpeg-xl",
        )

    def test_on_a_folder_refused(self) -> None:
        """A folder destination writes what was received: the key is refused there."""
        self.assertOneError(
            MINIMAL + "destinations:\n  out:\n    folder: /data/out\n    transfer_syntax: rle\n",
            9,
            "destinations.out.transfer_syntax",
            "applies only to DICOM destinations",
        )
