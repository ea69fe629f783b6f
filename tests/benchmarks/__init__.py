"""Tests of benchmarks/: each script at its smallest size, and what the scripts compute from their records."""
