"""``echoscu`` (DCMTK) against the gateway running as a real process.

Association establishment as an independent implementation sees it:
accepted for our AE title, and rejected with the PS3.8 9.3.4 result, source
and reason (echoscu prints them as text) when the called AE title is not
ours or the calling AE title is not allowed.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.interop import GatewayTestMixin


class EchoscuTests(GatewayTestMixin, TestCase):
    """C-ECHO from DCMTK echoscu, accepted and rejected."""

    skip = dcmtk.skip_reason("echoscu")
    timeout = 120

    def test_echo_to_our_ae_title_succeeds(self) -> None:
        """echoscu calling DICOMGW gets an accepted association and a successful C-ECHO."""
        gateway = self.start_gateway()
        result = dcmtk.echoscu(gateway.port, called_ae="DICOMGW", extra=["-v"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("Association Accepted", result.output, result.describe())
        self.assertIn("Received Echo Response (Success)", result.output, result.describe())

    def test_wrong_called_ae_title_is_rejected_permanently(self) -> None:
        """An unknown called AE title gets RJ permanent, service-user, called AE title not recognized (PS3.8 9.3.4)."""
        gateway = self.start_gateway()
        result = dcmtk.echoscu(gateway.port, called_ae="NOTUS")
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertIn("Association Rejected", result.output, result.describe())
        self.assertIn("Result: Rejected Permanent, Source: Service User", result.output,
                      result.describe())
        self.assertIn("Reason: Called AE Title Not Recognized", result.output,
                      result.describe())

    def test_disallowed_calling_ae_title_is_rejected(self) -> None:
        """A calling AE title outside calling_ae_titles gets reason calling AE title not recognized."""
        gateway = self.start_gateway(accept={"calling_ae_titles": ["CT*"]})
        result = dcmtk.echoscu(gateway.port, calling_ae="MR_SCANNER")
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertIn("Result: Rejected Permanent, Source: Service User", result.output,
                      result.describe())
        self.assertIn("Reason: Calling AE Title Not Recognized", result.output,
                      result.describe())

    def test_allowed_calling_ae_title_pattern_is_accepted(self) -> None:
        """A calling AE title matching a configured glob (CT*) is accepted."""
        gateway = self.start_gateway(accept={"calling_ae_titles": ["CT*"]})
        result = dcmtk.echoscu(gateway.port, calling_ae="CT_SCANNER_1")
        self.assertEqual(result.returncode, 0, result.describe())

    def test_repeated_echoes_in_one_association(self) -> None:
        """Ten C-ECHOs on one association all succeed (the association stays usable)."""
        gateway = self.start_gateway()
        result = dcmtk.echoscu(gateway.port, extra=["-v", "--repeat", "10"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(result.output.count("Received Echo Response (Success)"), 10,
                         result.describe())
