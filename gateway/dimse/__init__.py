"""DIMSE messages (PS3.7), written sans-IO: command sets, PDV reassembly and statuses."""
