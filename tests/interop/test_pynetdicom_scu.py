"""pynetdicom (a test-only dependency) as the SCU, the gateway as a real process.

pynetdicom is told to stream files from disk (``STORE_SEND_CHUNKED_DATASET``),
so the data-set bytes it puts on the wire are exactly the source file's bytes
after its file meta: the spooled data set must equal them byte for byte.
Also checks presentation-context negotiation from the SCU's side (PS3.8
9.3.3.2: the acceptor picks one transfer syntax among those proposed).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom import AE, _config
from twisted.trial.unittest import TestCase

from tests.support.datasets import BUNDLED, bundled, dataset_bytes, write_instance
from tests.support.gateway_process import GatewayProcess
from tests.support.interop import GatewayTestMixin, index_by_sop_instance

#: A syntactically valid transfer syntax UID that nobody supports.
UNKNOWN_SYNTAX = "1.2.826.0.1.3680043.10.543.999.1"


class PynetdicomSCUTests(GatewayTestMixin, TestCase):
    """C-STORE from pynetdicom at small and large PDU sizes, and negotiation."""

    timeout = 300

    def setUp(self) -> None:
        """Make pynetdicom stream data sets from file, unchanged."""
        self.patch(_config, "STORE_SEND_CHUNKED_DATASET", True)

    def _associate(self, gateway: GatewayProcess, contexts: list[tuple[str, list[str]]],
                   max_pdu: int = 16384) -> object:
        """Open a pynetdicom association to the gateway, released in a cleanup.

        :param gateway: the running gateway.
        :param contexts: (abstract syntax, transfer syntaxes) pairs to propose.
        :param max_pdu: pynetdicom's own maximum receive PDU length.
        :returns: the established association.
        """
        ae = AE(ae_title="PYNETDICOM")
        ae.maximum_pdu_size = max_pdu
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="DICOMGW", max_pdu=max_pdu)
        self.assertTrue(assoc.is_established, gateway.log_text())
        self.addCleanup(lambda: assoc.release() if assoc.is_established else None)
        return assoc

    def _store_files_at_pdu(self, pdu: int) -> None:
        """Send several instances with both sides limited to ``pdu`` and compare bytes.

        :param pdu: the gateway's and pynetdicom's maximum PDU length.
        """
        tmp = Path(self.mktemp())
        tmp.mkdir()
        files = [
            write_instance(tmp / "implicit.dcm", ImplicitVRLittleEndian, 300 * 1024, seed=1),
            write_instance(tmp / "explicit.dcm", ExplicitVRLittleEndian, 700 * 1024, seed=2),
            write_instance(tmp / "tiny.dcm", ExplicitVRLittleEndian, 1000, seed=3),
            # (pydicom's big-endian and RLE MR files share a SOP Instance UID.)
            write_instance(tmp / "big.dcm", ExplicitVRBigEndian, 100 * 1024, seed=4),
            bundled(BUNDLED[RLELossless]),
            bundled(BUNDLED[JPEGBaseline8Bit]),
        ]
        contexts: dict[str, list[str]] = {}
        for f in files:
            meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
            contexts.setdefault(meta.MediaStorageSOPClassUID, [])
            if meta.TransferSyntaxUID not in contexts[meta.MediaStorageSOPClassUID]:
                contexts[meta.MediaStorageSOPClassUID].append(meta.TransferSyntaxUID)
        # One context per (SOP class, syntax) pair so each file finds its own syntax.
        pairs = [(sop, [ts]) for sop, syntaxes in contexts.items() for ts in syntaxes]
        gateway = self.start_gateway(limits={"max_pdu_length": pdu})
        assoc = self._associate(gateway, pairs, max_pdu=pdu)
        self.assertEqual(assoc.acceptor.maximum_length, pdu)
        for f in files:
            status = assoc.send_c_store(f)
            self.assertEqual(status.Status, 0x0000, f"{f}\n{gateway.log_text()}")
        assoc.release()
        spooled = index_by_sop_instance(gateway.instances())
        self.assertEqual(len(spooled), len(files))
        for f in files:
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            self.assertEqual(dataset_bytes(spooled[uid]), dataset_bytes(f), f.name)
            stored = pydicom.dcmread(spooled[uid])
            self.assertEqual(stored.file_meta.TransferSyntaxUID,
                             pydicom.dcmread(f).file_meta.TransferSyntaxUID)

    def test_store_with_max_pdu_4096(self) -> None:
        """With 4096-byte PDUs (many small fragments) every data set is spooled byte-identical."""
        self._store_files_at_pdu(4096)

    def test_store_with_max_pdu_one_mebibyte(self) -> None:
        """With 1 MiB PDUs (whole instances in one fragment) every data set is spooled byte-identical."""
        self._store_files_at_pdu(1024 * 1024)

    def test_first_proposed_acceptable_syntax_is_chosen(self) -> None:
        """Of several syntaxes proposed in one context, the first one we support is accepted."""
        gateway = self.start_gateway()
        assoc = self._associate(gateway, [
            (CTImageStorage, [UNKNOWN_SYNTAX, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                              ImplicitVRLittleEndian]),
        ])
        (context,) = assoc.accepted_contexts
        self.assertEqual(context.abstract_syntax, CTImageStorage)
        self.assertEqual(context.transfer_syntax, [ExplicitVRBigEndian])

    def test_implicit_first_is_chosen_and_used(self) -> None:
        """Proposing Implicit VR LE before Explicit VR LE gets Implicit, and a store in it succeeds."""
        gateway = self.start_gateway()
        assoc = self._associate(gateway, [
            (CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
        ])
        (context,) = assoc.accepted_contexts
        self.assertEqual(context.transfer_syntax, [ImplicitVRLittleEndian])
        source = write_instance(Path(self.mktemp()), ImplicitVRLittleEndian, 20 * 1024)
        status = assoc.send_c_store(source)
        self.assertEqual(status.Status, 0x0000, gateway.log_text())
        assoc.release()
        (path,) = gateway.instances()
        self.assertEqual(dataset_bytes(path), dataset_bytes(source))

    def test_only_unsupported_syntaxes_are_refused(self) -> None:
        """A context proposing only an unknown transfer syntax is not accepted (result 4)."""
        gateway = self.start_gateway()
        ae = AE(ae_title="PYNETDICOM")
        ae.acse_timeout = 30
        ae.add_requested_context(CTImageStorage, [UNKNOWN_SYNTAX])
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="DICOMGW")
        self.addCleanup(lambda: assoc.release() if assoc.is_established else None)
        self.assertTrue(assoc.is_established, gateway.log_text())
        self.assertEqual([c.transfer_syntax for c in assoc.accepted_contexts],
                         [[ExplicitVRLittleEndian]])
        rejected = assoc.rejected_contexts
        self.assertEqual(len(rejected), 1)
        self.assertEqual(rejected[0].result, 0x04)  # transfer syntaxes not supported
