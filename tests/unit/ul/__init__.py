"""Tests for dicom-gateway."""
