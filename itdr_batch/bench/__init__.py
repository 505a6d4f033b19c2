"""Benchmarks behind `itdr-batch bench`: figures and ratios from one run on one machine."""
