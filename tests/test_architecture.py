"""The layout's rules, read off the import graph (grimp parses every import statement, those inside
functions too):

* the core (``pipeline`` outside ``pipeline.can`` and ``pipeline.kg``) imports no workload; it reaches
  them only through the registry's ``module:function`` strings (``pipeline.stages``);
* the two workloads never import each other;
* a stage never imports another stage;
* ``pipeline`` never imports the launch layer ``jobs``.
"""
from __future__ import annotations

import grimp
import pytest

WORKLOADS = ("pipeline.can", "pipeline.kg")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("pipeline", "jobs", include_external_packages=False)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _imports(graph: grimp.ImportGraph, module: str) -> set[str]:
    return graph.find_modules_directly_imported_by(module)


def _violations(graph: grimp.ImportGraph, sources: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{source} imports {target}" for source in sources for target in _imports(graph, source)
                  if any(_in(target, f) for f in forbidden))


def _pipeline_modules(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if _in(m, "pipeline"))


def test_the_core_imports_no_workload(graph):
    core = [m for m in _pipeline_modules(graph) if not any(_in(m, w) for w in WORKLOADS)]
    assert "pipeline.runner" in core and "pipeline.train" in core
    assert _violations(graph, core, WORKLOADS) == []


@pytest.mark.parametrize("workload,other", [WORKLOADS, WORKLOADS[::-1]])
def test_a_workload_never_imports_the_other(graph, workload, other):
    modules = [m for m in _pipeline_modules(graph) if _in(m, workload)]
    assert len(modules) > 10
    assert _violations(graph, modules, (other,)) == []


def test_a_stage_never_imports_another_stage(graph):
    stages = [m for m in _pipeline_modules(graph) if any(_in(m, f"{w}.stages") and m != f"{w}.stages"
                                                         for w in WORKLOADS)]
    assert len(stages) == 12   # 8 CAN stages, 4 KG stages
    found = [f"{s} imports {t}" for s in stages for t in _imports(graph, s) if t in stages and t != s]
    assert found == []


def test_pipeline_never_imports_the_launch_layer(graph):
    assert _violations(graph, _pipeline_modules(graph), ("jobs",)) == []


def test_every_registered_entry_point_resolves_to_a_module_of_its_workload(graph):
    from pipeline.stages import WORKLOADS as REGISTRY

    for task, work in REGISTRY.items():
        package = f"pipeline.{task}"
        for spec in (*(s.entry for s in work.stages), work.profile, work.planner):
            module = spec.partition(":")[0]
            assert _in(module, package) and module in graph.modules, spec
