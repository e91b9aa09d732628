"""``python -m bmc.bench``: training throughput of this framework against TRL's ``DPOTrainer`` and a bare
PyTorch loop, on the same model, pairs, batch size and thread setting (see ``docs/performance.md``).

Each measurement runs in its own process (so that its peak resident memory is its own), implementations are
interleaved and repeated, and the median is reported.
"""
