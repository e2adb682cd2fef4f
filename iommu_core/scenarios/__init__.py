"""Scenarios: boards from device trees, domain mixes from scenario files, traces."""
