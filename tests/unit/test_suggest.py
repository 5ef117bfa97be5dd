"""Tests for :mod:`gateway.suggest`, the one "did you mean"."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.suggest import close_matches, did_you_mean


class SuggestTests(SynchronousTestCase):
    """Suggestions and their wording."""

    def test_closest_name(self) -> None:
        """A misspelt name gets the nearest known one, written as asked."""
        self.assertEqual(did_you_mean("destinaton", ["destination", "routes"]), "did you mean destination?")
        self.assertEqual(did_you_mean("destinaton", ["destination"], show=repr), "did you mean 'destination'?")

    def test_two_suggestions_joined_with_or(self) -> None:
        """With ``n=2`` both close names are offered."""
        hint = did_you_mean("StudyUID", ["StudyDate", "StudyInstanceUID", "Modality"], n=2, show=lambda f: f"{{{f}}}")
        self.assertEqual(hint, "did you mean {StudyDate} or {StudyInstanceUID}?")

    def test_nothing_close(self) -> None:
        """No close name: an empty hint, no suggestions."""
        self.assertEqual(did_you_mean("zzz", ["destination"]), "")
        self.assertEqual(close_matches("PatiantNme", ["PatientName"], cutoff=0.99), [])
