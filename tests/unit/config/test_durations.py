"""Tests for :mod:`gateway.config.durations`."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.durations import parse_duration, parse_size


class ParseDurationTests(SynchronousTestCase):
    """parse_duration turns human durations into float seconds."""

    def test_each_unit_converts_to_seconds(self) -> None:
        """Every unit (ms, s, m, h, d) has the right number of seconds."""
        cases = {"250ms": 0.25, "30s": 30.0, "5m": 300.0, "2h": 7200.0, "1d": 86400.0}
        for text, seconds in cases.items():
            self.assertEqual(parse_duration(text), seconds, text)

    def test_plain_numbers_are_seconds(self) -> None:
        """Ints, floats and numeric strings are taken as seconds."""
        self.assertEqual(parse_duration(45), 45.0)
        self.assertEqual(parse_duration(0.5), 0.5)
        self.assertEqual(parse_duration("30"), 30.0)
        self.assertEqual(parse_duration("1.5"), 1.5)

    def test_result_is_a_float(self) -> None:
        """An integer input still comes back as a float."""
        self.assertIsInstance(parse_duration(30), float)

    def test_fractions_and_combinations(self) -> None:
        """Fractional amounts and multi-part durations add up exactly."""
        self.assertEqual(parse_duration("1.5s"), 1.5)
        self.assertEqual(parse_duration("1h30m"), 5400.0)
        self.assertEqual(parse_duration("1m 500ms"), 60.5)
        self.assertEqual(parse_duration("100ms"), 0.1)

    def test_surrounding_whitespace_is_ignored(self) -> None:
        """Leading and trailing whitespace and a space before the unit are allowed."""
        self.assertEqual(parse_duration("  30 s "), 30.0)

    def test_zero_is_allowed(self) -> None:
        """Zero is a duration; callers decide whether it is a sensible one."""
        self.assertEqual(parse_duration("0s"), 0.0)

    def test_negative_values_are_refused(self) -> None:
        """Negative numbers and strings raise a message saying so."""
        for value in (-1, -0.5, "-1s", "-5"):
            error = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn("negative", str(error), value)

    def test_empty_string_is_refused(self) -> None:
        """An empty or blank string raises a message naming the problem."""
        for value in ("", "   "):
            error = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn("empty duration", str(error))

    def test_junk_is_refused_with_examples(self) -> None:
        """Unknown units and junk raise a message with the value and examples."""
        for value in ("5x", "abc", "s", "1.5.3s", "30 seconds", "1e3s", "5m-1s"):
            error = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn(repr(value), str(error))
            self.assertIn("'30s'", str(error))

    def test_non_finite_numbers_are_refused(self) -> None:
        """NaN and infinity are not durations."""
        for value in (float("nan"), float("inf")):
            error = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn("finite", str(error))

    def test_booleans_and_other_types_are_refused(self) -> None:
        """True is not one second, and None or lists are not durations."""
        for value in (True, None, [1]):
            error = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn("expected a duration", str(error))


class ParseSizeTests(SynchronousTestCase):
    """parse_size turns human sizes into whole bytes."""

    def test_decimal_and_binary_units(self) -> None:
        """KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024."""
        cases = {
            "1B": 1,
            "2KB": 2000,
            "500MB": 500_000_000,
            "1GB": 10**9,
            "1TB": 10**12,
            "2KiB": 2048,
            "3MiB": 3 * 1024**2,
            "4GiB": 4 * 1024**3,
            "1TiB": 1024**4,
        }
        for text, size in cases.items():
            self.assertEqual(parse_size(text), size, text)

    def test_units_ignore_case(self) -> None:
        """Unit names match regardless of case."""
        self.assertEqual(parse_size("10 kib"), 10240)
        self.assertEqual(parse_size("1gb"), 10**9)

    def test_plain_integers_are_bytes(self) -> None:
        """Ints, whole floats and digit strings are taken as bytes."""
        self.assertEqual(parse_size(1024), 1024)
        self.assertEqual(parse_size("1024"), 1024)
        self.assertEqual(parse_size(2048.0), 2048)

    def test_fractional_amounts_that_are_whole_bytes(self) -> None:
        """A fraction is fine when the result is a whole number of bytes."""
        self.assertEqual(parse_size("1.5KB"), 1500)
        self.assertEqual(parse_size("0.5KiB"), 512)

    def test_fractions_of_a_byte_are_refused(self) -> None:
        """A size that is not a whole number of bytes raises."""
        for value in ("0.3B", "1.0001KB", 1.5):
            error = self.assertRaises(ValueError, parse_size, value)
            self.assertIn("whole number of bytes", str(error), value)

    def test_unknown_unit_lists_the_known_ones(self) -> None:
        """An unknown unit is named, with the accepted units listed."""
        error = self.assertRaises(ValueError, parse_size, "10XB")
        self.assertIn("'XB'", str(error))
        self.assertIn("GiB", str(error))

    def test_negative_empty_and_junk_are_refused(self) -> None:
        """Negatives, empty strings, bare units and junk raise."""
        messages = {
            "-1": "negative",
            "-5MB": "negative",
            -1: "negative",
            "": "empty size",
            "GiB": "invalid size",
            "1 2 MB": "invalid size",
        }
        for value, fragment in messages.items():
            error = self.assertRaises(ValueError, parse_size, value)
            self.assertIn(fragment, str(error), value)

    def test_booleans_and_other_types_are_refused(self) -> None:
        """True is not one byte, and None is not a size."""
        for value in (True, None, float("inf")):
            self.assertRaises(ValueError, parse_size, value)
