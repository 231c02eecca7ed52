"""Knowledge-graph embeddings: typed edge lists become a heterogeneous mmap cache, HGT / GraphSAGE
encoders train on sampled subgraphs, and embeddings are exported by layer-wise inference.

Modules, in data-flow order: ``reader`` (kg.csv and typed edge lists), ``generator`` (synthetic
PrimeKG-shaped graphs), ``cache`` (the on-disk heterogeneous graph), ``sampler`` (sampled link
batches), ``loss``, ``plan`` (memory plan per node and edge type), ``training`` (teacher and
student stages), ``inference`` (layer-wise, chunked), ``report`` and ``export``.
"""
