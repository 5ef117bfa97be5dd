"""Tests for :mod:`gateway.qr` (issue 16)."""
