"""Tests for :mod:`gateway.notify` (issue 18)."""
