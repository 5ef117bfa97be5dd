"""The ``retention`` section's keys for the Query/Retrieve journal (issue 16): ``retrieves`` and ``remapped_uids``.

Each error test checks the file, the 1-based line and the key path an
operator sees, as the other configuration tests do.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config_text
from tests.unit.config.test_load import BASE_DIR, MINIMAL

DAY = 86400.0


def load(extra: str) -> object:
    """Load MINIMAL (5 lines) followed by ``extra`` (from line 6)."""
    return load_config_text(MINIMAL + extra, "gw.yaml", BASE_DIR)


class RetentionTests(SynchronousTestCase):
    """Defaults, values and errors of ``retention.retrieves`` and ``retention.remapped_uids``."""

    def test_defaults_are_seven_days_and_a_year(self) -> None:
        """Without a retention section (or with an empty one) finished retrieves are kept 7 days, unused remapped UIDs 365."""
        for extra in ("", "retention:\n", "retention: {keep_delivered: 1h}\n"):
            config = load(extra)
            self.assertEqual((config.retrieve_retention, config.remap_retention), (7 * DAY, 365 * DAY), extra)
        self.assertEqual(load("retention: {keep_delivered: 1h}\n").keep_delivered, 3600.0)

    def test_values_are_read_beside_keep_delivered(self) -> None:
        """The three keys together: each goes to its own field."""
        config = load("retention: {keep_delivered: 2d, retrieves: 12h, remapped_uids: 30d}\n")
        self.assertEqual(
            (config.keep_delivered, config.retrieve_retention, config.remap_retention), (2 * DAY, 12 * 3600.0, 30 * DAY)
        )

    def test_zero_keeps_forever(self) -> None:
        """0 is accepted for both (kept forever)."""
        config = load("retention:\n  retrieves: 0\n  remapped_uids: 0\n")
        self.assertEqual((config.retrieve_retention, config.remap_retention), (0.0, 0.0))

    def test_a_bad_duration_is_located(self) -> None:
        """A negative or unparsable duration names the file, line and key; both errors are reported at once."""
        errors = self.assertRaises(
            ConfigErrors, load, "retention:\n  keep_delivered: 1d\n  retrieves: soon\n  remapped_uids: -3d\n"
        ).errors
        self.assertEqual(
            [(e.file, e.line, e.key_path) for e in errors],
            [("gw.yaml", 8, "retention.retrieves"), ("gw.yaml", 9, "retention.remapped_uids")],
        )

    def test_an_unknown_key_is_located(self) -> None:
        """A misspelt key (``retrieve``) is refused with its line and path."""
        (error,) = self.assertRaises(ConfigErrors, load, "retention:\n  retrieve: 7d\n").errors
        self.assertEqual((error.line, error.key_path), (7, "retention.retrieve"))

    def test_more_than_ten_years_is_refused(self) -> None:
        """The upper bound of every retention applies (a typo such as 3650d0)."""
        (error,) = self.assertRaises(ConfigErrors, load, "retention: {retrieves: 5000d}\n").errors
        self.assertEqual((error.line, error.key_path), (6, "retention.retrieves"))
