"""Benchmarks of the search and the trainer, each a command: ``python -m benchmarks.<name>`` from the repository
root (``--help`` for its options). ``harness`` holds what they share. Each runs at its smallest size in the slow
test tier (tests/benchmarks/)."""
