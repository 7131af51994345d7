"""Observability: the dashboard page and ``/metrics`` series, installed by one scheduler plugin (inspection)."""
