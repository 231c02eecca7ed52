"""Memory budget arithmetic, the live-tensor tracker, the activation fit and OOM detection."""
import pytest
import torch

from pipeline import memory
from pipeline.can import plan as can_plan
from pipeline.can.plan import plan_batches
from pipeline.memory import (
    ActivationFit,
    LiveTensorTracker,
    MemoryBudget,
    ProbePoint,
    fit_line,
    measure_activation_cost,
)


def test_tracker_counts_live_bytes_and_peak():
    tracker = LiveTensorTracker()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)          # 4000 B
        b = torch.empty(500, dtype=torch.float64)            # 4000 B
        del a
        c = torch.empty(250, dtype=torch.float32)            # 1000 B
    assert tracker.peak == 8000
    assert tracker.live == 5000
    del b, c


def test_tracker_sees_views_once():
    tracker = LiveTensorTracker()
    with tracker:
        a = torch.zeros(100, 10)
        views = [a[i] for i in range(10)]
    assert tracker.peak == 4000
    del a, views


def test_fit_recovers_known_line():
    points = [ProbePoint(n, e, 1000 + 40 * n + 8 * e) for n, e in [(10, 50), (20, 70), (40, 200), (80, 300)]]
    fit = fit_line(points)
    assert fit.per_node == pytest.approx(40)
    assert fit.per_edge == pytest.approx(8)
    assert fit.base == pytest.approx(1000)
    assert fit.max_error() < 1e-9


def test_fit_needs_two_points():
    with pytest.raises(ValueError, match="two probe sizes"):
        fit_line([ProbePoint(1, 1, 1)])


def test_measured_cost_predicts_larger_batches():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def step(x):
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    fit = measure_activation_cost(step, lambda n: torch.randn(n, 32), [64, 128, 256], torch.device("cpu"),
                                  count=lambda x: (x.shape[0], 0))
    x = torch.randn(4096, 32)
    measured = memory.measure_step_peak(lambda: step(x), torch.device("cpu"))
    assert fit.predict(4096, 0) == pytest.approx(measured, rel=0.05)


def budget(total=10_000_000, sf=0.5, static=1_000_000, per_node=100.0, per_edge=10.0, base=0.0):
    return MemoryBudget(device="cpu", total=total, total_source="test", safety_factor=sf,
                        fixed={"allocator fragmentation buffer": 0}, static={"parameters": static},
                        activation=ActivationFit(base=base, per_node=per_node, per_edge=per_edge))


def test_plan_fills_usable_memory():
    b = budget()
    assert b.usable_for_activations == 4_000_000
    plan = plan_batches(b, nodes_per_graph=20, edges_per_graph=100)   # 3000 B per graph
    assert plan.graphs == 1333
    assert plan.predicted_bytes <= b.usable_for_activations
    assert plan.max_nodes == 4_000_000 // 150 and plan.reason == "memory budget"   # 100 + 10 * 5 edges/node
    dense = plan_batches(b, 20, 100, edges_per_node=10)        # denser graphs exist: fewer nodes fit
    assert dense.max_nodes == 4_000_000 // 200 and dense.predicted_bytes <= b.usable_for_activations
    capped = plan_batches(b, 20, 100, max_graphs=64)
    assert capped.graphs == 64 and "batch_size" in capped.reason


def test_plan_scales_with_safety_factor():
    small = plan_batches(budget(sf=0.2), 20, 100)
    large = plan_batches(budget(sf=0.9), 20, 100)
    assert large.graphs > 3 * small.graphs


def test_static_over_budget_names_levers():
    with pytest.raises(MemoryError, match="offload the teacher"):
        plan_batches(budget(static=9_000_000), 20, 100)


def test_budget_table_lists_every_line():
    table = budget().table()
    for word in ("device total", "safety_factor", "parameters", "for activations", "activation / node"):
        assert word in table


def test_static_costs_of_adam_model():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    costs = memory.static_costs(model)
    n_bytes = (10 * 4 + 4 * 2 + 2) * 4
    assert costs["parameters"] == n_bytes
    assert costs["optimizer state"] == 2 * n_bytes
    assert costs["of which embedding tables"] == 40 * 4


def test_out_of_memory_detection():
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert memory.is_out_of_memory(MemoryError())
    assert memory.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried... out of memory"))
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))


def test_cpu_limit_respects_slurm(monkeypatch):
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")
    limit = memory.cpu_memory_limit()
    assert limit.total <= 1024 * memory.MiB
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "100")
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "2")
    assert memory.cpu_memory_limit().total == 200 * memory.MiB


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_cgroup_limit_is_read_from_the_process_group_and_its_ancestors(tmp_path, version):
    # SLURM's layout: the job's group has the limit, the step's group below it has none
    root = tmp_path / "cgroup"
    if version == "v2":
        proc, base, name, unlimited = "0::/system.slice/job_7/step_0\n", root, "memory.max", "max"
    else:
        proc, base, name, unlimited = ("5:cpu:/\n4:memory:/system.slice/job_7/step_0\n", root / "memory",
                                       "memory.limit_in_bytes", "9223372036854771712")
    step = base / "system.slice" / "job_7" / "step_0"
    step.mkdir(parents=True)
    (step / name).write_text(unlimited + "\n")
    (step.parent / name).write_text(f"{3 * 1024 ** 3}\n")
    (base / name).write_text(unlimited)
    (tmp_path / "cgroup.txt").write_text(proc)
    limits = memory.cgroup_memory_limits(tmp_path / "cgroup.txt", root)
    assert [(lim.total, lim.source) for lim in limits] == [(3 * 1024 ** 3, f"cgroup {step.parent / name}")]
    assert memory.cgroup_memory_limits(tmp_path / "missing.txt", root) == []


def test_ranks_on_one_node_split_its_host_memory(monkeypatch):
    monkeypatch.delenv(memory.MEMORY_GB_ENV, raising=False)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")
    whole = memory.device_memory(torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    share = memory.device_memory(torch.device("cpu"))
    assert share.total == whole.total // 4 and "4 ranks" in share.source


def test_plan_round_trips_through_run_dir(tmp_path):
    b = budget()
    b.activation.points = [ProbePoint(1, 2, 3)]
    plan = plan_batches(b, 20, 100)
    can_plan.save_plan(tmp_path / "plan.json", b, plan, key="k1")
    loaded = can_plan.load_plan(tmp_path / "plan.json", key="k1")
    assert loaded is not None and loaded[1] == plan and loaded[0].activation.points[0].peak_bytes == 3
    assert can_plan.load_plan(tmp_path / "plan.json", key="other") is None


# -- planning a real model -----------------------------------------------------------

def _gat_and_split(layers=3):
    from pipeline.can.data.cache import GraphSplit
    from pipeline.can.models.gat import GATWithJK
    from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split

    torch.manual_seed(0)
    split = GraphSplit(synthetic_split(200, seed=3))
    model = GATWithJK(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                      hidden=16, heads=4, layers=layers, dropout=0.0)
    return model, split


def _ce(model, batch):
    logits = model(batch)
    return torch.nn.functional.cross_entropy(logits, batch.y), logits


def test_gradient_checkpointing_keeps_gradients_and_saves_memory():
    model, split = _gat_and_split(layers=4)
    batch = split.collate(torch.arange(64))

    def grads():
        model.zero_grad(set_to_none=True)
        _ce(model, batch)[0].backward()
        return [p.grad.clone() for p in model.parameters()]

    plain_peak = memory.measure_step_peak(grads, torch.device("cpu"))
    plain = grads()
    model.gradient_checkpointing = True
    ckpt_peak = memory.measure_step_peak(grads, torch.device("cpu"))
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)
    assert ckpt_peak < 0.8 * plain_peak


def test_planner_turns_on_checkpointing_when_the_plan_is_too_small(tmp_path):
    model, split = _gat_and_split(layers=4)
    # tensors only: the arithmetic below sizes the budget for a number of graphs
    plan_args = dict(model=model, split=split, loss_fn=_ce, device=torch.device("cpu"), safety_factor=0.9,
                     max_graphs=10_000, count_process=False, log=lambda m: None)
    _, roomy = can_plan.plan_graph_batches(**plan_args, plan_path=tmp_path / "a.json", key="a", target_gb=1.0)
    assert not roomy.checkpointing and not model.gradient_checkpointing
    # a budget with room for about 8 graphs without recomputation (below USEFUL_GRAPHS)
    per_graph = roomy.predicted_bytes / roomy.graphs
    static = sum(v for k, v in memory.static_costs(model).items() if not k.startswith("of which"))
    tight_gb = (8 * per_graph + static) / (0.9 - memory.FRAGMENTATION) / 2**30
    budget, tight = can_plan.plan_graph_batches(**plan_args, plan_path=tmp_path / "b.json", key="b", target_gb=tight_gb)
    assert tight.checkpointing and model.gradient_checkpointing
    assert tight.graphs > 9      # recomputing the layers buys room for more graphs in the same budget
    assert "gradient checkpointing" in budget.activation.mode
    # the cached plan restores the switch on the model
    model.gradient_checkpointing = False
    can_plan.plan_graph_batches(**plan_args, plan_path=tmp_path / "b.json", key="b", target_gb=tight_gb)
    assert model.gradient_checkpointing


# -- the process itself on a CPU budget --------------------------------------------------

def test_process_baseline_is_resident_memory_less_the_parameters():
    import psutil

    small = torch.nn.Linear(2, 2)
    big = torch.nn.Linear(2048, 4096)                       # 32 MiB of parameters, resident
    params = sum(p.numel() * p.element_size() for p in big.parameters())
    rss = psutil.Process().memory_info().rss
    assert memory.process_baseline(small) == pytest.approx(rss, abs=8 * memory.MiB)
    assert memory.process_baseline(big) == pytest.approx(rss - params, abs=8 * memory.MiB)
    assert memory.process_baseline(big) > 50 * memory.MiB  # torch alone is more than this


def test_cpu_plan_counts_the_process_as_a_static_line(tmp_path):
    model, split = _gat_and_split()
    args = dict(model=model, split=split, loss_fn=_ce, device=torch.device("cpu"), safety_factor=0.9,
                max_graphs=10_000, target_gb=2.0, log=lambda m: None)
    budget, plan = can_plan.plan_graph_batches(**args, plan_path=tmp_path / "a.json", key="a")
    baseline = budget.static["interpreter and libraries (RSS)"]
    assert baseline > 50 * memory.MiB
    assert budget.static["graph cache pages (host)"] == memory.tensor_bytes(split.t.values()) > 0
    assert budget.fixed["host allocator slack"] == int(budget.total * memory.HOST_ALLOCATOR_SLACK)
    assert "interpreter and libraries (RSS)" in budget.table() and "host allocator slack" in budget.table()
    assert plan.predicted_bytes <= budget.usable_for_activations
    # the same plan for tensors only leaves the process's share to activations
    tensors, _ = can_plan.plan_graph_batches(**args, plan_path=tmp_path / "b.json", key="b", count_process=False)
    assert "interpreter and libraries (RSS)" not in tensors.static and "host allocator slack" not in tensors.fixed
    host_share = baseline + budget.static["graph cache pages (host)"] + budget.fixed["host allocator slack"]
    assert tensors.usable_for_activations - budget.usable_for_activations == host_share


def test_cpu_budget_smaller_than_the_process_is_refused(tmp_path):
    model, split = _gat_and_split()
    tiny_gb = 0.5 * memory.process_baseline(model) / 2**30
    with pytest.raises(MemoryError, match="exceeds the budget"):
        can_plan.plan_graph_batches(model, split, _ce, torch.device("cpu"), 0.9, 10_000, tmp_path / "p.json", "k",
                                  target_gb=tiny_gb, log=lambda m: None)
    # the same size as a tensor-only budget (an accelerator's) does plan: the process made the difference
    _, plan = can_plan.plan_graph_batches(model, split, _ce, torch.device("cpu"), 0.9, 10_000, tmp_path / "q.json",
                                        "k", target_gb=tiny_gb, count_process=False, log=lambda m: None)
    assert plan.graphs >= 1


# -- the device total in the plan key ------------------------------------------------------

def test_override_replaces_the_detected_total(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(memory.MEMORY_GB_ENV, "1.5")
    assert memory.device_memory(cpu) == memory.DeviceMemory(int(1.5 * memory.GiB), memory.MEMORY_GB_ENV)
    assert memory.device_memory(cpu, target_gb=3).total == 3 * memory.GiB   # a preflight target wins
    monkeypatch.delenv(memory.MEMORY_GB_ENV)
    assert memory.device_memory(cpu).source != memory.MEMORY_GB_ENV


def test_plan_key_changes_with_the_device_total(monkeypatch):
    model, split = _gat_and_split()
    cpu = torch.device("cpu")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "512")
    small = can_plan.plan_key(model, split, cpu, 0.9, 64)
    assert can_plan.plan_key(model, split, cpu, 0.9, 64) == small            # stable for the same limit
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")
    assert can_plan.plan_key(model, split, cpu, 0.9, 64) != small
    assert can_plan.plan_key(model, split, cpu, 0.9, 64, target_gb=1.0) != can_plan.plan_key(
        model, split, cpu, 0.9, 64, target_gb=2.0)


def test_resume_with_more_memory_plans_again(tmp_path, monkeypatch):
    model, split = _gat_and_split()
    cpu = torch.device("cpu")
    plan_path = tmp_path / "memory_plan.json"

    def stage_plan(mem_mb: int) -> tuple[memory.MemoryBudget, can_plan.BatchPlan, list[str]]:
        # the key and the budget from the job's --mem, as in a stage under SLURM (tensor-only budget,
        # so that a few hundred MB plan without the test process's own footprint)
        monkeypatch.setenv("SLURM_MEM_PER_NODE", str(mem_mb))
        messages: list[str] = []
        key = can_plan.plan_key(model, split, cpu, 0.9, 10_000)
        budget, plan = can_plan.plan_graph_batches(model, split, _ce, cpu, 0.9, 10_000, plan_path, key,
                                                 count_process=False, log=messages.append)
        return budget, plan, messages

    first, small, _ = stage_plan(256)
    again, same, messages = stage_plan(256)
    assert "reused" in messages[0] and same == small and again.total == first.total == 256 * memory.MiB
    bigger, large, messages = stage_plan(1024)
    assert not any("reused" in m for m in messages)
    assert bigger.total == 1024 * memory.MiB and large.max_nodes > 3 * small.max_nodes
    assert can_plan.load_plan(plan_path, can_plan.plan_key(model, split, cpu, 0.9, 10_000))[1] == large


def test_kg_plan_key_changes_with_the_device_total(monkeypatch):
    from types import SimpleNamespace

    from pipeline.kg.plan import kg_plan_key

    model = torch.nn.Linear(2, 2)
    graph = SimpleNamespace(manifest={"key": "g"})
    loader = SimpleNamespace(fanouts=[4, 2], neg_ratio=1)
    cpu = torch.device("cpu")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "512")
    small = kg_plan_key(model, graph, loader, cpu, 0.9, 256)
    assert kg_plan_key(model, graph, loader, cpu, 0.9, 256) == small
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1024")
    assert kg_plan_key(model, graph, loader, cpu, 0.9, 256) != small
