"""Benchmarks: ``python -m bench.run`` runs the registered ones and writes bench/results/."""
