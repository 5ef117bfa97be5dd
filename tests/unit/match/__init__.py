"""Tests for the match language of routing rules (gateway.match)."""
