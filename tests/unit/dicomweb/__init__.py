"""Tests of :mod:`gateway.dicomweb` (issue 17)."""
