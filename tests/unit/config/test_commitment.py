"""Tests for the Storage Commitment keys of the configuration (issue 15).

``modalities``, ``commitment`` (top level and ``listen[i].commitment``),
``destinations.<n>.storage_commitment`` and ``commitment_timeout``, and the
warnings ``dicom-gateway check`` prints (:func:`commitment_warnings`). As in
``test_load``, each error test checks the file, the 1-based line and the key
path an operator will see.
"""

from __future__ import annotations

import os

from gateway.config.commitment import commitment_warnings
from gateway.config.schema import CommitmentConfig, DestinationTLSConfig, DicomDestination, ModalityConfig
from tests.unit.config.test_load import BASE_DIR, MINIMAL, LoadTestCase

#: MINIMAL (lines 1-5) with a modalities table of one entry (lines 6-7); what follows starts on line 8.
WITH_MODALITY = MINIMAL + "modalities:\n  ct1: {ae_title: CT1, host: 10.0.0.1, port: 104}\n"


class ModalitiesTests(LoadTestCase):
    """``modalities``: the AEs the gateway may call back."""

    def test_absent_is_empty(self) -> None:
        """Without the section the table is empty and Storage Commitment is off."""
        config = self.load(MINIMAL)
        self.assertEqual((config.modalities, config.commitment), ((), None))

    def test_every_key_is_read(self) -> None:
        """Each key reaches :class:`ModalityConfig`, converted; paths are resolved; file order is kept."""
        config = self.load(
            MINIMAL
            + "modalities:\n"
            + "  ct1:\n"
            + "    ae_title: CT1\n"
            + "    host: ct1.example\n"
            + "    port: 104\n"
            + "    tls: {ca: ca.pem, server_name: ct1.example, profile: bcp195-extended}\n"
            + "    connect_timeout: 3s\n"
            + "    acse_timeout: 20s\n"
            + "    dimse_timeout: 1m\n"
            + "    max_pdu_length: 65536\n"
            + "  mr2: {ae_title: MR2, host: 10.0.0.2, port: 11112}\n"
        )
        self.assertEqual(
            config.modalities,
            (
                ModalityConfig(
                    name="ct1",
                    ae_title="CT1",
                    host="ct1.example",
                    port=104,
                    tls=DestinationTLSConfig(
                        ca=os.path.join(BASE_DIR, "ca.pem"), server_name="ct1.example", profile="bcp195-extended"
                    ),
                    connect_timeout=3.0,
                    acse_timeout=20.0,
                    dimse_timeout=60.0,
                    max_pdu_length=65536,
                ),
                ModalityConfig(name="mr2", ae_title="MR2", host="10.0.0.2", port=11112),
            ),
        )
        self.assertEqual(config.modality("mr2").ae_title, "MR2")

    def test_unknown_key_refused(self) -> None:
        """A key of no meaning (a typo) is refused with a suggestion."""
        error = self.assertOneError(
            MINIMAL + "modalities:\n  ct1: {ae_title: CT1, host: h, port: 104, dimse_timout: 5s}\n",
            7,
            "modalities.ct1.dimse_timout",
            "unknown key 'dimse_timout'",
        )
        self.assertIn("dimse_timeout", error.message)

    def test_missing_port_refused(self) -> None:
        """``port`` is required (the report needs an address)."""
        self.assertOneError(
            MINIMAL + "modalities:\n  ct1: {ae_title: CT1, host: h}\n", 7, "modalities.ct1.port", "required key is missing"
        )

    def test_invalid_name_refused(self) -> None:
        """Names follow the destination names' rules."""
        self.assertOneError(
            MINIMAL + "modalities:\n  -ct: {ae_title: CT1, host: h, port: 104}\n", 7, "modalities.-ct", "invalid modality name"
        )

    def test_duplicate_ae_title_refused(self) -> None:
        """Two entries with one AE title are refused at the second's ``ae_title``, naming the first."""
        self.assertOneError(
            WITH_MODALITY + "  ct2:\n    ae_title: CT1\n    host: h\n    port: 105\n",
            9,
            "modalities.ct2.ae_title",
            "already that of modalities.ct1",
        )

    def test_tls_needs_a_ca(self) -> None:
        """``tls`` is checked exactly as a DICOM destination's: ``ca`` is required."""
        self.assertOneError(
            MINIMAL + "modalities:\n  ct1:\n    ae_title: CT1\n    host: h\n    port: 104\n    tls: {server_name: h}\n",
            11,
            "modalities.ct1.tls.ca",
            "required key is missing",
        )

    def test_bad_ae_title_refused(self) -> None:
        """An AE title longer than 16 characters is refused (PS3.5 VR AE)."""
        self.assertOneError(
            MINIMAL + "modalities:\n  ct1: {ae_title: ABCDEFGHIJKLMNOPQ, host: h, port: 104}\n",
            7,
            "modalities.ct1.ae_title",
            "at most 16 characters",
        )


class CommitmentSectionTests(LoadTestCase):
    """``commitment``: the policy, deadlines, access and report delivery."""

    def test_defaults(self) -> None:
        """An empty section enables the SCP with ``delivered``, a 1 h deadline and a 24 h report deadline."""
        config = self.load(WITH_MODALITY + "commitment:\n")
        self.assertEqual(config.commitment, CommitmentConfig())
        self.assertEqual(
            (config.commitment.policy, config.commitment.deadline, config.commitment.report_deadline),
            ("delivered", 3600.0, 86400.0),
        )

    def test_received_deadline_default(self) -> None:
        """``received`` defaults to a 1 h deadline."""
        self.assertEqual(self.load(WITH_MODALITY + "commitment: {policy: received}\n").commitment.deadline, 3600.0)

    def test_committed_deadline_default(self) -> None:
        """``committed`` defaults to a 24 h deadline (archives take their time), and its report deadline to an hour later."""
        commitment = self.load(WITH_MODALITY + "commitment: {policy: committed}\n").commitment
        self.assertEqual((commitment.deadline, commitment.report_deadline), (86400.0, 90000.0))

    def test_every_key_is_read(self) -> None:
        """Each key reaches :class:`CommitmentConfig`, durations converted."""
        config = self.load(
            WITH_MODALITY
            + "commitment:\n"
            + "  policy: committed\n"
            + "  deadline: 2h\n"
            + "  report_deadline: 3d\n"
            + "  lookback: 14d\n"
            + "  allowed_ae_titles: ['CT*']\n"
            + "  unrouted: success\n"
            + "  report_association: open\n"
            + "  retry: {initial: 5s, max: 10m}\n"
        )
        self.assertEqual(
            config.commitment,
            CommitmentConfig(
                policy="committed",
                deadline=7200.0,
                report_deadline=3 * 86400.0,
                lookback=14 * 86400.0,
                allowed_ae_titles=("CT*",),
                unrouted="success",
                report_association="open",
                retry_initial=5.0,
                retry_max=600.0,
            ),
        )

    def test_unknown_policy_refused(self) -> None:
        """Only received, delivered and committed exist."""
        self.assertOneError(
            WITH_MODALITY + "commitment: {policy: stored}\n", 8, "commitment.policy", "must be one of received, delivered, committed"
        )

    def test_unknown_key_refused(self) -> None:
        """A typo is refused with a suggestion."""
        error = self.assertOneError(
            WITH_MODALITY + "commitment:\n  dedline: 1h\n", 9, "commitment.dedline", "unknown key 'dedline'"
        )
        self.assertIn("'deadline'", error.message)

    def test_bad_duration_refused(self) -> None:
        """A deadline that is not a duration is refused at its line."""
        self.assertOneError(WITH_MODALITY + "commitment:\n  deadline: soon\n", 9, "commitment.deadline", "duration")

    def test_report_deadline_before_deadline_refused(self) -> None:
        """A report deadline before the deadline is refused at ``report_deadline``."""
        self.assertOneError(
            WITH_MODALITY + "commitment:\n  deadline: 2h\n  report_deadline: 1h\n",
            10,
            "commitment.report_deadline",
            "report_deadline (3600s) must be at least deadline (7200s)",
        )

    def test_default_report_deadline_follows_a_long_deadline(self) -> None:
        """Without ``report_deadline``, a deadline past 23 h gets a report deadline an hour after it."""
        commitment = self.load(WITH_MODALITY + "commitment:\n  policy: committed\n  deadline: 2d\n").commitment
        self.assertEqual((commitment.deadline, commitment.report_deadline), (172800.0, 176400.0))

    def test_report_deadline_before_default_deadline_refused(self) -> None:
        """A report deadline before the policy's default deadline is refused, saying the deadline is the default."""
        self.assertOneError(
            WITH_MODALITY + "commitment:\n  policy: committed\n  report_deadline: 12h\n",
            10,
            "commitment.report_deadline",
            "report_deadline (43200s) must be at least deadline (86400s, the default for committed)",
        )

    def test_retry_initial_above_max_refused(self) -> None:
        """The first retry delay may not exceed the largest."""
        self.assertOneError(
            WITH_MODALITY + "commitment:\n  retry:\n    initial: 20m\n",
            10,
            "commitment.retry.initial",
            "must not exceed retry.max (600s)",
        )

    def test_bad_ae_pattern_refused(self) -> None:
        """``allowed_ae_titles`` items are AE title patterns (PS3.5 VR AE characters)."""
        self.assertOneError(
            WITH_MODALITY + "commitment:\n  allowed_ae_titles: ['CT\\\\1']\n",
            9,
            "commitment.allowed_ae_titles[0]",
            "backslash",
        )

    def test_commitment_without_modalities_refused(self) -> None:
        """A ``commitment`` section with no ``modalities`` table is refused: no requester could be answered."""
        self.assertOneError(MINIMAL + "commitment: {policy: received}\n", 6, "commitment", "needs a 'modalities' table")

    def test_commitment_with_empty_modalities_refused(self) -> None:
        """An empty table is no better than none."""
        errors = self.errors(MINIMAL + "modalities: {}\ncommitment:\n  policy: received\n")
        self.assertEqual(len(errors), 1, errors)
        self.assertError(errors[0], 8, "commitment", "needs a 'modalities' table")


class ListenerCommitmentTests(LoadTestCase):
    """``listen[i].commitment``: a listener's own section, replacing the top-level one."""

    LISTENER_WITH_COMMITMENT = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
    name: ward
    commitment: {policy: received, allowed_ae_titles: [CT1]}
  - {host: 127.0.0.1, port: 0, name: other}
spool: spool
"""

    def test_listener_section_replaces_the_top_level_one(self) -> None:
        """A listener's section applies whole on it (no key-by-key merge); the others take the top level's."""
        config = self.load(
            self.LISTENER_WITH_COMMITMENT
            + "modalities: {ct1: {ae_title: CT1, host: h, port: 104}}\n"
            + "commitment: {policy: committed, lookback: 1d}\n"
        )
        ward, other = config.listen
        self.assertEqual(
            config.commitment_for(ward),
            CommitmentConfig(policy="received", allowed_ae_titles=("CT1",)),
        )
        self.assertEqual(config.commitment_for(ward).lookback, 7 * 86400.0)
        self.assertEqual(
            config.commitment_for(other),
            CommitmentConfig(policy="committed", deadline=86400.0, report_deadline=90000.0, lookback=86400.0),
        )

    def test_listener_section_without_modalities_refused(self) -> None:
        """A listener's section also needs the table, and the error names the listener."""
        self.assertOneError(self.LISTENER_WITH_COMMITMENT, 6, "listen[0].commitment", "needs a 'modalities' table")

    def test_listener_section_checked_like_the_top_level(self) -> None:
        """The listener's section is validated by the same rules, with its own key path."""
        text = self.LISTENER_WITH_COMMITMENT.replace("policy: received", "policy: maybe") + (
            "modalities: {ct1: {ae_title: CT1, host: h, port: 104}}\n"
        )
        self.assertOneError(text, 6, "listen[0].commitment.policy", "must be one of")


class DestinationCommitmentTests(LoadTestCase):
    """``destinations.<n>.storage_commitment`` and ``commitment_timeout``."""

    def test_dicom_destination_keys_read(self) -> None:
        """A DICOM destination takes both; the defaults are off and 10 minutes."""
        config = self.load(
            MINIMAL
            + "destinations:\n"
            + "  pacs: {ae_title: PACS, host: h, port: 104, storage_commitment: true, commitment_timeout: 15m}\n"
            + "  other: {ae_title: OTHER, host: h, port: 104}\n"
        )
        pacs, other = config.destinations
        assert isinstance(pacs, DicomDestination) and isinstance(other, DicomDestination)
        self.assertEqual((pacs.storage_commitment, pacs.commitment_timeout), (True, 900.0))
        self.assertEqual((other.storage_commitment, other.commitment_timeout), (False, 600.0))

    def test_storage_commitment_on_a_folder_refused(self) -> None:
        """A folder cannot commit: the error names the key and says why."""
        self.assertOneError(
            MINIMAL + "destinations:\n  out:\n    folder: /data/out\n    storage_commitment: true\n",
            9,
            "destinations.out.storage_commitment",
            "applies only to DICOM destinations",
        )

    def test_commitment_timeout_on_a_folder_refused(self) -> None:
        """``commitment_timeout`` on a folder is refused the same way."""
        self.assertOneError(
            MINIMAL + "destinations:\n  out: {folder: /data/out, commitment_timeout: 5m}\n",
            7,
            "destinations.out.commitment_timeout",
            "applies only to DICOM destinations",
        )

    def test_storage_commitment_must_be_a_boolean(self) -> None:
        """``storage_commitment: yes please`` is not a boolean."""
        self.assertOneError(
            MINIMAL + "destinations:\n  pacs: {ae_title: PACS, host: h, port: 104, storage_commitment: always}\n",
            7,
            "destinations.pacs.storage_commitment",
            "expected a boolean",
        )


class WarningTests(LoadTestCase):
    """:func:`commitment_warnings`: allowed, but worth a line from ``check``."""

    def test_committed_without_committing_destination_warns(self) -> None:
        """Policy ``committed`` with no ``storage_commitment`` destination loads, with a warning that it means ``delivered``."""
        config = self.load(
            WITH_MODALITY + "destinations: {pacs: {ae_title: PACS, host: h, port: 104}}\ncommitment: {policy: committed}\n"
        )
        self.assertEqual(
            commitment_warnings(config),
            [
                "commitment.policy: 'committed' but no destination has storage_commitment: true; "
                "it means 'delivered' (every destination acknowledged)"
            ],
        )

    def test_committed_with_committing_destination_is_quiet(self) -> None:
        """With a destination that commits there is nothing to say."""
        config = self.load(
            WITH_MODALITY
            + "destinations: {pacs: {ae_title: PACS, host: h, port: 104, storage_commitment: true}}\n"
            + "commitment: {policy: committed}\n"
        )
        self.assertEqual(commitment_warnings(config), [])

    def test_report_deadline_equal_to_deadline_warns(self) -> None:
        """A report deadline equal to the deadline is allowed (>=) but said: such a report would be given up at once."""
        config = self.load(WITH_MODALITY + "commitment: {deadline: 2h, report_deadline: 2h}\n")
        (warning,) = commitment_warnings(config)
        self.assertTrue(warning.startswith("commitment.report_deadline: equal to the deadline (7200s)"), warning)

    def test_pattern_matching_no_modality_warns(self) -> None:
        """An ``allowed_ae_titles`` pattern matching no AE of the table allows nobody: said, with the listener's path."""
        config = self.load(
            WITH_MODALITY.replace("    port: 0\n", "    port: 0\n    commitment: {allowed_ae_titles: ['CT*', 'MR*']}\n", 1)
        )
        self.assertEqual(len(commitment_warnings(config)), 1)
        self.assertTrue(commitment_warnings(config)[0].startswith("listen[0].commitment.allowed_ae_titles: 'MR*'"))
