"""Benchmarks: scripts that print a table, write JSON and compare against a same-run baseline."""
