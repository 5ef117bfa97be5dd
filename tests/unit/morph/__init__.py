"""Tests for morphing, the splice writer and de-identification."""
