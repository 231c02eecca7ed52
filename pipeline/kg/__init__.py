"""Knowledge-graph embeddings: typed edge lists become a heterogeneous mmap cache, HGT / GraphSAGE
encoders train on sampled subgraphs, and embeddings are exported by layer-wise inference.

Modules, in data-flow order: ``reader`` (kg.csv and typed edge lists), ``generator`` (synthetic
PrimeKG-shaped graphs), ``cache`` and ``build`` (the on-disk heterogeneous graph), ``sampler``
(sampled link batches) and ``neighbors`` (their k-hop neighbourhoods), ``models`` (HGT, GraphSAGE
and their base), ``loss``, ``plan`` (memory plan per node and edge type), ``training`` (what the
teacher and student stages train), ``inference`` (layer-wise, chunked), ``report``, ``embeddings``,
``preflight`` (``make plan``) and ``stages``.
"""
