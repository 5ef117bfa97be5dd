"""Relational C-FIND, 0xFF01, the Offending Element, and ``ae_title`` on reload through the real gateway (issue 16).

Sources: Orthanc (Debian ``orthanc``, listed first) and the synthetic
pynetdicom Q/R SCP (:mod:`tests.support.qr_scp`), which grants
relational-queries when told to (PS3.4 C.5.1.1) and records every SOP Class
Extended Negotiation it is asked. Requesters: pynetdicom (test-only), which
can propose relational-queries (PS3.7 D.3.3.5) and shows each response's
status and (0000,0901); DCMTK ``findscu``, which cannot propose it (3.6.7
has no option for the extended negotiation), so its relational query is
refused by the hierarchical rule (PS3.4 C.4.1.2.1).

What Orthanc does (found by :meth:`test_orthanc_does_not_grant_relational`):
it sends no extended negotiation reply, i.e. relational queries are not
supported (PS3.7 D.3.3.5), so with ``query.relational: true`` a relational
query is answered by the synthetic source alone and Orthanc is left out,
with a warning in the log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from twisted.trial.unittest import TestCase

from tests.support import dcmtk, orthanc
from tests.support.ports import free_port
from tests.support.qr import SyntheticQRScp, findscu, movescu, preload, qr_source, read_responses, write_study

#: The source archive's AE title.
SOURCE_AET = "SOURCE1"
#: The gateway's AE title (tests.support.gateway_process default).
GATEWAY_AET = "DICOMGW"
#: Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2.1).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: The synthetic source's instances (IMAGE level), under its own study and series.
SYNTH_STUDY = "1.2.826.0.1.3680043.10.543.16.700"
SYNTH_SERIES = "1.2.826.0.1.3680043.10.543.16.700.1"
SYNTH_IMAGES = ("1.2.826.0.1.3680043.10.543.16.700.1.1", "1.2.826.0.1.3680043.10.543.16.700.1.2")


def image_query(**keys: Any) -> Dataset:
    """An IMAGE-level Study Root identifier: SOP Instance UID and the keys given."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def ask(port: int, identifier: Dataset, *, relational: bool) -> tuple[list[tuple[int, Dataset | None]], dict[str, bytes]]:
    """C-FIND with pynetdicom, proposing relational-queries or not.

    :returns: every response as ``(status, identifier)`` (the final last, its
        status data set in place of the identifier), and the extended
        negotiation replies the gateway sent (SOP class -> bytes).
    """
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

    ae = AE(ae_title="RELSCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    ext: list[Any] = []
    if relational:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = STUDY_ROOT_FIND
        item.service_class_application_information = b"\x01"
        ext.append(item)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET, ext_neg=ext)
    if not assoc.is_established:
        raise AssertionError("the gateway refused the association")
    replies = {str(uid): bytes(info) for uid, info in assoc.acceptor.sop_class_extended.items()}
    out: list[tuple[int, Dataset | None]] = []
    try:
        for status, found in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
            if status is None:
                raise AssertionError("no response from the gateway")
            code = int(status.Status)
            out.append((code, found if code in (0xFF00, 0xFF01) else status))
    finally:
        assoc.release()
    return out, replies


class RelationalQueryTests(TestCase):
    """``query.relational: true`` with Orthanc and a relational-capable synthetic source."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("findscu")

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        self.source = qr_source(self.root / "orthanc", SOURCE_AET)
        self.addCleanup(self.source.stop)
        self.source.start()
        self.study = write_study(self.root / "a", 2, study_description="IN-ORTHANC")
        preload(self.source, [self.study])

    def synthetic(self, **kwargs: Any) -> SyntheticQRScp:
        """The second source: two IMAGE-level records and one STUDY-level record."""
        identifiers = [
            {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": SYNTH_STUDY, "SeriesInstanceUID": SYNTH_SERIES,
             "SOPInstanceUID": uid} for uid in SYNTH_IMAGES
        ] + [{"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": SYNTH_STUDY, "StudyDescription": "IN-SYNTH"}]
        scp = SyntheticQRScp(self.root / "synth", identifiers=identifiers, **kwargs)
        self.addCleanup(scp.stop)
        scp.start()
        return scp

    def gateway(self, synth_port: int, **query: Any) -> Any:
        """The gateway with ``query.sources: [orthanc, synth]``."""
        from tests.support.gateway_process import GatewayProcess, dicom_destination

        gw = GatewayProcess(
            self.root / "gw",
            http={"enabled": False},
            destinations={"orthanc": dicom_destination(self.source.dicom_port, SOURCE_AET),
                          "synth": dicom_destination(synth_port, "SYNTH")},
            routes=[],
            query={"sources": ["orthanc", "synth"], "mode": "merge", "timeout": "20s", **query},
        )
        self.addCleanup(gw.stop)
        gw.start()
        return gw

    def test_relational_query_goes_to_the_sources_that_granted_it(self) -> None:
        """Granted to the requester; proposed to both sources; answered by the synthetic source, Orthanc left out (Success)."""
        scp = self.synthetic(relational=True)
        gw = self.gateway(scp.port, relational=True)
        responses, replies = ask(gw.port, image_query(), relational=True)
        self.assertEqual(replies, {STUDY_ROOT_FIND: b"\x01"})
        matches = sorted(str(ds.SOPInstanceUID) for status, ds in responses[:-1] if ds is not None)
        self.assertEqual(matches, sorted(SYNTH_IMAGES))
        self.assertEqual(responses[-1][0], 0x0000)
        asked = [e for e in scp.events() if e["event"] == "extended"]
        self.assertTrue(asked and asked[0]["asked"].get(STUDY_ROOT_FIND, "").startswith("01"), scp.events())
        self.assertIn("did not accept relational queries", gw.log_text())

    def test_orthanc_does_not_grant_relational(self) -> None:
        """What Orthanc does: a relational IMAGE query naming one of its instances is not sent to it (no grant), strict fails 0xC001."""
        scp = self.synthetic(relational=True)
        gw = self.gateway(scp.port, relational=True, strict=True)
        sop = self.study.files[0]
        from pydicom import dcmread

        uid = str(dcmread(sop, stop_before_pixels=True).SOPInstanceUID)
        responses, _ = ask(gw.port, image_query(SOPInstanceUID=uid), relational=True)
        status, final = responses[-1]
        self.assertEqual(status, 0xC001, responses)
        assert final is not None
        self.assertIn("orthanc", str(final.get("ErrorComment", "")))
        # The same instance asked hierarchically is found in Orthanc.
        hierarchical = image_query(SOPInstanceUID=uid, StudyInstanceUID=self.study.study_instance_uid,
                                   SeriesInstanceUID=self.study.series_instance_uid)
        responses, _ = ask(gw.port, hierarchical, relational=True)
        self.assertEqual([str(ds.SOPInstanceUID) for s, ds in responses[:-1] if ds is not None], [uid])
        self.assertEqual(responses[-1][0], 0x0000)

    def test_requester_without_relational_is_refused_with_the_offending_elements(self) -> None:
        """pynetdicom without the extended negotiation: 0xC000 naming (0020,000D) and (0020,000E); findscu likewise; no source asked."""
        scp = self.synthetic(relational=True)
        gw = self.gateway(scp.port, relational=True)
        responses, replies = ask(gw.port, image_query(), relational=False)
        self.assertEqual(replies, {})
        [(status, final)] = responses
        self.assertEqual(status, 0xC000)
        assert final is not None
        self.assertEqual([int(tag) for tag in final.OffendingElement], [0x0020000D, 0x0020000E])
        self.assertIn("relational", str(final.ErrorComment))
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID"], outdir=self.root / "find")
        self.assertEqual(read_responses(self.root / "find"), [])
        # findscu names the status: 0xC000 is "Failed: UnableToProcess".
        self.assertIn("Final Find Response (Failed: UnableToProcess)", result.output, result.describe())
        self.assertEqual([e for e in scp.events() if e["event"] == "find"], [])

    def test_pending_warning_is_relayed_as_ff01(self) -> None:
        """A source's 0xFF01 matches reach the requester as 0xFF01 (PS3.4 C.4.1.1.4); Orthanc's stay 0xFF00."""
        scp = self.synthetic(pending_status=0xFF01)
        gw = self.gateway(scp.port)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        identifier.StudyDescription = ""
        responses, _ = ask(gw.port, identifier, relational=False)
        statuses = {str(ds.StudyInstanceUID): status for status, ds in responses[:-1] if ds is not None}
        self.assertEqual(statuses, {self.study.study_instance_uid: 0xFF00, SYNTH_STUDY: 0xFF01})
        self.assertEqual(responses[-1][0], 0x0000)
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], outdir=self.root / "find")
        self.assertEqual(result.returncode, 0, result.describe())
        # findscu names 0xFF01 "Pending: WarningUnsupportedOptionalKeys".
        self.assertIn("(Pending: WarningUnsupportedOptionalKeys)", result.output, result.describe())


class AeTitleReloadTests(TestCase):
    """``dicom-gateway reload`` (SIGHUP) with a new ``ae_title`` and a relayed C-MOVE."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("movescu", "storescp")

    def test_relayed_move_after_reload_names_the_new_title(self) -> None:
        """After the reload the listener answers the new title and Orthanc (knowing only the new one) moves to it: the study arrives."""
        import yaml

        from tests.support.gateway_process import GatewayProcess, dicom_destination

        root = Path(self.mktemp()).resolve()
        source = qr_source(root / "orthanc", SOURCE_AET)
        self.addCleanup(source.stop)
        source.start()
        dest = dcmtk.Storescp(root / "dest", ae_title="DEST")
        self.addCleanup(dest.stop)
        dest.start()
        gw = GatewayProcess(
            root / "gw",
            http={"enabled": False},
            destinations={"archive": dicom_destination(source.dicom_port, SOURCE_AET)},
            routes=[],
            modalities={"dest": {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port}},
            retrieve={"sources": ["archive"], "timeout": "120s"},
        )
        self.addCleanup(gw.stop)
        gw.start()
        # Orthanc knows the gateway only by its new title: a move naming the old one is refused by Orthanc.
        source.declare_modality("GW", "GW_NEW", gw.port)
        study = write_study(root / "study", 3)
        preload(source, [study])
        gw.config["ae_title"] = "GW_NEW"
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        gw.reload()
        deadline = time.monotonic() + 30
        while "configuration reloaded" not in gw.log_text():
            self.assertLess(time.monotonic(), deadline, gw.log_text()[-3000:])
            time.sleep(0.1)
        keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"]
        old = movescu(gw.port, GATEWAY_AET, keys, outdir=root / "old", listen_port=free_port(), move_aet="DEST")
        self.assertIn("Association Rejected", old.output, old.describe()[-3000:])
        result = movescu(gw.port, "GW_NEW", keys, outdir=root / "moved", listen_port=free_port(), move_aet="DEST")
        self.assertIn("Final Move Response (Success)", result.output, result.describe()[-4000:])
        from tests.interop.test_qr import by_sop_instance

        deadline = time.monotonic() + 60
        while len(dest.files()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(by_sop_instance(dest.files()), by_sop_instance(list(study.files)))
