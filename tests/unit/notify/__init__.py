"""Unit tests of the study notifications (issue 18)."""
