"""Tests of metrics, logs and the snapshot behind the state gauges."""
