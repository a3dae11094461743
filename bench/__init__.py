"""pymgr's benchmarks against its peers: ``make bench`` runs ``python -m bench.run``.

See docs/performance.md for the figures, the baselines and how to read the table.
"""
