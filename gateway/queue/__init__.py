"""The durable forwarding queue: one entry per (instance, route, destination)."""
