"""Heterogeneous graph encoders: the shared base (inputs, layer-wise inference), HGT and GraphSAGE."""
