"""Tests for :mod:`gateway.dimse.status` (PS3.7 Annex C, PS3.4 B.2.3)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.status import Status, StatusCategory, category


class CategoryTests(SynchronousTestCase):
    """The status ranges of PS3.7 Annex C."""

    def test_zero_is_success(self) -> None:
        """0x0000 is the only success code."""
        self.assertEqual(category(Status.SUCCESS), StatusCategory.SUCCESS)

    def test_pending_codes(self) -> None:
        """0xFF00 and 0xFF01 are pending."""
        self.assertEqual(category(0xFF00), StatusCategory.PENDING)
        self.assertEqual(category(0xFF01), StatusCategory.PENDING)

    def test_cancel_code(self) -> None:
        """0xFE00 is cancel."""
        self.assertEqual(category(0xFE00), StatusCategory.CANCEL)

    def test_storage_warnings(self) -> None:
        """The storage warnings 0xB000, 0xB006, 0xB007 and any 0xBxxx are warnings."""
        for code in (0xB000, 0xB006, 0xB007, 0xB123, 0xBFFF):
            self.assertEqual(category(code), StatusCategory.WARNING, hex(code))

    def test_general_warnings(self) -> None:
        """0x0001, 0x0107 and 0x0116 are warnings."""
        for code in (0x0001, 0x0107, 0x0116):
            self.assertEqual(category(code), StatusCategory.WARNING, hex(code))

    def test_failures(self) -> None:
        """0xAxxx, 0xCxxx and the general failure codes are failures."""
        for code in (0xA700, 0xA7FF, 0xA900, 0xC000, 0xC210, 0x0122, 0x0124, 0x0211, 0x0110, 0x0117):
            self.assertEqual(category(code), StatusCategory.FAILURE, hex(code))

    def test_unknown_code_is_failure(self) -> None:
        """A code the standard does not define is treated as a failure, never a success."""
        self.assertEqual(category(0xD123), StatusCategory.FAILURE)
        self.assertEqual(category(0x0002), StatusCategory.FAILURE)

    def test_out_of_range_raises(self) -> None:
        """Values that do not fit a US are a caller bug."""
        self.assertRaises(ValueError, category, -1)
        self.assertRaises(ValueError, category, 0x10000)

    def test_named_constants(self) -> None:
        """The named constants have the values of PS3.7 and PS3.4."""
        self.assertEqual(Status.OUT_OF_RESOURCES, 0xA700)
        self.assertEqual(Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, 0xA900)
        self.assertEqual(Status.CANNOT_UNDERSTAND, 0xC000)
        self.assertEqual(Status.SOP_CLASS_NOT_SUPPORTED, 0x0122)
        self.assertEqual(Status.NOT_AUTHORIZED, 0x0124)
        self.assertEqual(Status.UNRECOGNIZED_OPERATION, 0x0211)
        self.assertEqual(Status.PROCESSING_FAILURE, 0x0110)
        self.assertEqual(Status.INVALID_OBJECT_INSTANCE, 0x0117)

    def test_dimse_n_failure_constants(self) -> None:
        """The DIMSE-N failure codes have the values of PS3.7 C.5 and are all failures."""
        expected = {
            "NO_SUCH_OBJECT_INSTANCE": 0x0112,
            "NO_SUCH_EVENT_TYPE": 0x0113,
            "NO_SUCH_ARGUMENT": 0x0114,
            "INVALID_ARGUMENT_VALUE": 0x0115,
            "NO_SUCH_SOP_CLASS": 0x0118,
            "CLASS_INSTANCE_CONFLICT": 0x0119,
            "MISSING_ATTRIBUTE": 0x0120,
            "MISSING_ATTRIBUTE_VALUE": 0x0121,
            "NO_SUCH_ACTION": 0x0123,
            "DUPLICATE_INVOCATION": 0x0210,
            "MISTYPED_ARGUMENT": 0x0212,
            "RESOURCE_LIMITATION": 0x0213,
        }
        for name, value in expected.items():
            self.assertEqual(Status[name], value, name)
            self.assertEqual(category(value), StatusCategory.FAILURE, name)
