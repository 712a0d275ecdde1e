"""Grafana dashboards: built from code (build) and pushed to a Grafana server (grafana)."""
