"""Locust load tests: scenarios on real held-out traffic, load shapes, and the SLO report."""
