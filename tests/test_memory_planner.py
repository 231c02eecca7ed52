"""The planner skeleton both workloads' planners use: plan cache, RNG, budget lines, variants, plan file."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from pipeline.memory import (
    Attempt,
    Measured,
    MemoryBudget,
    PlanRequest,
    ProbePoint,
    Probes,
    Workload,
    fit_line,
    plan_memory,
    tensor_bytes,
)

PROBE_ROWS = (64, 128, 256)


@dataclass
class RowsPlan:
    rows: int
    variant: str


@dataclass
class RowsFit:
    probes: int


class RowsWorkload(Workload[RowsPlan]):
    """Batches of rows through a small MLP with dropout (which draws on the global torch RNG)."""

    def __init__(self, teacher: torch.nn.Module | None = None, teacher_in_host_baseline: bool = False) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 1))
        self.teacher, self.teacher_in_host_baseline = teacher, teacher_in_host_baseline
        self.probed: list[Any] = []

    def step(self, x: torch.Tensor) -> None:
        self.model.train()
        self.model(x).sum().backward()

    def probes(self, variant: Any) -> Probes:
        self.probed.append(variant)
        batches = (torch.randn(n, 32, generator=torch.Generator().manual_seed(n)) for n in PROBE_ROWS)
        return Probes(batches, self.step, lambda x: (x.shape[0], 0))

    def fit(self, points: list[ProbePoint]) -> Measured:
        return Measured(fit_line(points), RowsFit(probes=len(points)))

    def host_lines(self) -> dict[str, int]:
        return {"rows on the host": 1234}

    def size(self, budget: MemoryBudget, measured: Measured) -> RowsPlan:
        per_row = max(measured.activation.per_node, 1.0)
        return RowsPlan(int((budget.usable_for_activations - measured.activation.base) // per_row),
                        str(self.probed[-1]))

    def load(self, raw: dict[str, Any]) -> RowsPlan:
        return RowsPlan(**raw)

    def reused(self, plan: RowsPlan) -> str:
        return f"{plan.rows} rows"

    def describe(self, plan: RowsPlan) -> str:
        return f"plan: {plan.rows} rows"


def _request(tmp_path, key: str = "k", **kw: Any) -> PlanRequest:
    kw.setdefault("target_gb", 1.0)
    return PlanRequest(torch.device("cpu"), 0.9, tmp_path / f"{key}.json", key, log=lambda m: None, **kw)


def test_probing_leaves_the_torch_rng_where_it_was(tmp_path):
    workload = RowsWorkload()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    workload.step(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(torch.get_rng_state(), before)   # a probe step alone does move it (dropout)
    torch.set_rng_state(before)
    plan_memory(workload, _request(tmp_path))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.grad is None for p in workload.model.parameters())   # probes leave no gradients behind


def test_the_plan_file_holds_key_budget_plan_and_the_workloads_own_fit(tmp_path):
    budget, plan = plan_memory(RowsWorkload(), _request(tmp_path))
    saved = json.loads((tmp_path / "k.json").read_text())
    assert set(saved) == {"key", "budget", "plan", "probes"}
    assert saved["key"] == "k" and saved["probes"] == len(PROBE_ROWS) and saved["plan"] == asdict(plan)
    assert saved["budget"]["static"] == budget.static and len(saved["budget"]["activation"]["points"]) == 3


def test_a_cached_plan_is_reused_without_probing_and_another_key_probes_again(tmp_path):
    first_budget, first = plan_memory(RowsWorkload(), _request(tmp_path))
    again, messages = RowsWorkload(), []
    budget, plan = plan_memory(again, PlanRequest(torch.device("cpu"), 0.9, tmp_path / "k.json", "k",
                                                  target_gb=1.0, log=messages.append))
    assert again.probed == [] and plan == first and budget.static == first_budget.static
    assert messages == [f"memory plan reused from {tmp_path / 'k.json'}: {first.rows} rows"]
    other = RowsWorkload()
    plan_memory(other, PlanRequest(torch.device("cpu"), 0.9, tmp_path / "k.json", "other", target_gb=1.0,
                                   log=lambda m: None))
    assert other.probed == [None]


def test_only_a_counted_host_process_adds_its_own_lines_and_the_workloads_host_data(tmp_path):
    host, _ = plan_memory(RowsWorkload(), _request(tmp_path, "host"))
    assert host.static["rows on the host"] == 1234 and host.static["interpreter and libraries (RSS)"] > 0
    assert "host allocator slack" in host.fixed and "CUDA context" not in host.fixed
    tensors, _ = plan_memory(RowsWorkload(), _request(tmp_path, "tensors", count_process=False))
    gpu, _ = plan_memory(RowsWorkload(), _request(tmp_path, "gpu", target_device="cuda"))
    for budget in (tensors, gpu):
        assert "rows on the host" not in budget.static and "interpreter and libraries (RSS)" not in budget.static
        assert "host allocator slack" not in budget.fixed
    assert "CUDA context" in gpu.fixed and gpu.device == "cuda"


def test_a_teacher_already_in_the_host_baseline_is_counted_on_an_accelerator_only(tmp_path):
    teacher = torch.nn.Linear(100, 100)
    teacher_bytes = tensor_bytes(teacher.parameters())
    cases = {("cpu", True): 0, ("cuda", True): teacher_bytes, ("cpu", False): teacher_bytes}
    for (target, in_baseline), expected in cases.items():
        workload = RowsWorkload(teacher, teacher_in_host_baseline=in_baseline)
        budget, _ = plan_memory(workload, _request(tmp_path, f"{target}-{in_baseline}", target_device=target))
        assert budget.static["teacher (on device)"] == expected, (target, in_baseline)


class RetryingWorkload(RowsWorkload):
    """Measures a second variant and keeps it, as the CAN planner does with gradient checkpointing."""

    def refine(self, first: Attempt[RowsPlan], measure: Callable[[Any], Attempt[RowsPlan]]) -> Attempt[RowsPlan]:
        second = measure("second")
        assert second.plan.variant == "second" and first.plan.variant == "None"
        return second


def test_the_attempt_refine_keeps_is_the_plan_returned_and_saved(tmp_path):
    workload = RetryingWorkload()
    _, plan = plan_memory(workload, _request(tmp_path))
    assert workload.probed == [None, "second"] and plan.variant == "second"
    assert json.loads((tmp_path / "k.json").read_text())["plan"]["variant"] == "second"
