"""``make gpu-check``: the memory planner's promises, checked on a GPU in one command (docs/memory.md).

Five checks, each with the project's own planners, models, loaders and training loop:

1. ``estimate``: the plan's estimate against ``torch.cuda.max_memory_allocated`` for the GAT teacher,
   the VGAE and the HGT teacher, six batch sizes each, AMP on; ``max_memory_reserved`` beside it;
2. ``small_devices``: 2, 4 and 8 GiB devices emulated with ``set_per_process_memory_fraction``,
   planned at safety_factor 0.9, 50 steps of full batches: no out-of-memory, share of the budget;
3. ``oom``: the teacher stage told of a device it does not have hits a real out-of-memory error,
   backs off and finishes its epoch with an ``oom_backoff`` line;
4. ``offload``: the KD student step with the teacher resident, offloaded and cached;
5. ``throughput``: teacher graphs/s and KG steps/s.

``python -m bench.gpu_check --out DIR`` writes DIR/gpu-check.md and DIR/gpu-check.json; ``--smoke``
runs the same code paths with tiny models and data, on the CPU when there is no GPU (the test
suite's run). ``scripts/gpu-check.sh`` runs it from a plain checkout on a GPU node.
"""
