Prometheus metrics, health and admin HTTP API, a Grafana dashboard, alert rules and a systemd unit.
