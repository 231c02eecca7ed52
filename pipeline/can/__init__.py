"""CAN-bus intrusion detection: raw CAN logs become sliding-window graphs in an mmap cache; a GAT
classifier and a VGAE anomaly detector are trained on them, distilled into small students, trained
again on a curriculum, and scored on every official test scenario.

Packages and modules, in data-flow order: ``data`` (readers, windows, splits, the graph cache and
its loader), ``models`` (GAT with jumping knowledge, VGAE), ``plan`` (batch sizes from measured
memory), ``classifier`` and ``detector`` (what the teacher and autoencoder stages train),
``distill`` and ``students`` (knowledge distillation), ``pacing`` (the curriculum), ``inference``,
``metrics``, ``preflight`` (``make plan``) and ``stages`` (one file per stage).
"""
