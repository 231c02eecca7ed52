"""make plan: budget and batch plan for the profile's target device, from a CPU machine."""
from pipeline.can.preflight import preflight, render
from pipeline.config import load_profile


def test_plan_targets_the_profile_gpu_without_one():
    profile = load_profile("local", ["resources.teacher.gpus=1", "resources.teacher.gpu_mem_gb=1",
                                     "train.batch_size=100000"])
    [(stage, budget, plan)] = preflight(profile)
    assert stage == "teacher"
    assert budget.device == "cuda" and budget.total == 2**30
    assert "CUDA context" in budget.fixed
    assert "interpreter and libraries (RSS)" not in budget.static   # the host process is not on the GPU
    assert plan.reason == "memory budget"            # the 1 GB card, not batch_size, limits it
    assert plan.predicted_bytes <= budget.usable_for_activations
    # a GPU four times larger holds more than four times the graphs (fixed costs don't grow)
    bigger = load_profile("local", ["resources.teacher.gpus=1", "resources.teacher.gpu_mem_gb=4",
                                    "train.batch_size=100000"])
    assert preflight(bigger)[0][2].graphs > 4 * plan.graphs
    text = render(profile, [(stage, budget, plan)])
    assert "## teacher: 1 GPU x 1.0 GB" in text and "for activations" in text


def test_cpu_stage_plans_against_host_memory():
    profile = load_profile("local", ["resources.teacher.gpus=0", "resources.teacher.mem_gb=2"])
    [(_, budget, plan)] = preflight(profile)
    assert budget.device == "cpu" and budget.total == 2 * 2**30 and "CUDA context" not in budget.fixed
    # the job's --mem holds the process too: a static line in the table, and glibc's slack
    assert budget.static["interpreter and libraries (RSS)"] > 50 * 2**20
    assert budget.fixed["host allocator slack"] == int(0.1 * budget.total)
    assert "interpreter and libraries (RSS)" in budget.table()
    assert plan.graphs == profile.train.batch_size
