"""Tests for :mod:`gateway.queue`: the store mixin and the SQLite-only cases."""
