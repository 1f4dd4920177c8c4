"""The HTTP API: serving state, health, Prometheus metrics, admin, Open Inference Protocol."""
