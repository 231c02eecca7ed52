"""Memory budgets and batch plans: how many nodes and edges fit on the device, and why.

usable = device total x safety_factor - fixed overhead - static (params, grads, optimizer, teacher)
batch  = usable / activation cost per unit (node, edge), with the cost measured, not guessed:
forward + backward run on probe batches of several sizes while a tensor-allocation tracker
records the peak of live tensor bytes, and a line cost = a + b_node*nodes + b_edge*edges is fit.

- ``limits``: the device total the job may use (driver, cgroup, SLURM, ``PIPELINE_MEMORY_GB``);
- ``measure``: the live-tensor tracker, step peaks, probe points and the fits (pooled, per type);
- ``budget``: the budget's lines, the plan cache and the out-of-memory helpers;
- ``planner``: the one probe-and-budget skeleton the workloads' planners fill in
  (``pipeline.can.plan``, ``pipeline.kg.plan``).

The public names of all four are re-exported here, so ``from pipeline.memory import X`` works for
any of them.
"""
from pipeline.memory.budget import (
    CUDA_CONTEXT_BYTES,
    FRAGMENTATION,
    HOST_ALLOCATOR_SLACK,
    MemoryBudget,
    cached_plan,
    fixed_overhead,
    format_bytes,
    free_device_memory,
    host_process_lines,
    is_out_of_memory,
    process_baseline,
    static_costs,
    tensor_bytes,
    write_plan,
)
from pipeline.memory.limits import (
    CGROUP_UNLIMITED,
    MEMORY_GB_ENV,
    DeviceMemory,
    GiB,
    MiB,
    cgroup_memory_limits,
    cpu_memory_limit,
    device_memory,
)
from pipeline.memory.measure import (
    ActivationFit,
    HeteroActivationFit,
    HeteroProbePoint,
    LiveTensorTracker,
    ProbePoint,
    fit_hetero_line,
    fit_line,
    measure_activation_cost,
    measure_hetero_activation_cost,
    measure_points,
    measure_step_peak,
)
from pipeline.memory.planner import (
    Attempt,
    Measured,
    PlanRequest,
    Probes,
    Workload,
    assemble_budget,
    backward_step,
    plan_memory,
    probe,
)

__all__ = [
    "CGROUP_UNLIMITED", "CUDA_CONTEXT_BYTES", "FRAGMENTATION", "HOST_ALLOCATOR_SLACK", "MEMORY_GB_ENV",
    "ActivationFit", "Attempt", "DeviceMemory", "GiB", "HeteroActivationFit", "HeteroProbePoint",
    "LiveTensorTracker", "Measured", "MemoryBudget", "MiB", "PlanRequest", "ProbePoint", "Probes", "Workload",
    "assemble_budget", "backward_step", "cached_plan", "cgroup_memory_limits", "cpu_memory_limit",
    "device_memory", "fit_hetero_line", "fit_line", "fixed_overhead", "format_bytes", "free_device_memory",
    "host_process_lines", "is_out_of_memory", "measure_activation_cost", "measure_hetero_activation_cost",
    "measure_points", "measure_step_peak", "plan_memory", "probe", "process_baseline", "static_costs",
    "tensor_bytes", "write_plan",
]
