"""Benchmarks: datasets, grading, the bench runner, reports and calibration."""
