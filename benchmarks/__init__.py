"""Benchmarks: long reproductions and measurements, each printing a table and a final JSON line."""
