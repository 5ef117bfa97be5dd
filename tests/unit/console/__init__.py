"""Tests for :mod:`gateway.console` (issue 18)."""
