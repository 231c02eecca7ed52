"""The one place where a profile's resources become submitit executor parameters.

The parameters are those of ``submitit.AutoExecutor``: the generic ones (``mem_gb``,
``timeout_min``, ...) are read by both the SLURM and the local executor; ``slurm_*`` ones only
by SLURM. So a dry-run and a submission of the same profile ask for the same things.

A training stage that asks for more than one GPU, node or task runs data-parallel: submitit
starts ``tasks_per_node`` processes on each of ``nodes`` nodes (one per GPU), and every other
resource is per process (``cpus``) or per node (``mem_gb``, ``gpus``), as in sbatch.
"""
from __future__ import annotations

from typing import Any, Sequence

from jobs.errors import LaunchError
from pipeline.config import Profile, Resources
from pipeline.stages import stage_spec

# sbatch options that the profile sets through a field of its own, or that the launch layer
# owns; ``resources.<stage>.extra`` must not set them behind those fields' backs.
_RESERVED_EXTRA: dict[str, str] = {
    "time": "set resources.<stage>.time_min",
    "mem": "set resources.<stage>.mem_gb",
    "cpus-per-task": "set resources.<stage>.cpus",
    "nodes": "set resources.<stage>.nodes",
    "ntasks-per-node": "set resources.<stage>.tasks_per_node",
    "ntasks": "set resources.<stage>.nodes and tasks_per_node",
    "gpus-per-node": "set resources.<stage>.gpus",
    "partition": "set resources.<stage>.partition",
    "account": "set resources.<stage>.account",
    "qos": "set resources.<stage>.qos",
    "job-name": "the job name is always <profile>-<stage>",
    "dependency": "dependencies come from the stage chain",
    "kill-on-invalid-dep": "always on for dependent stages",
    "output": "logs go to <run>/logs/<job id>/",
    "error": "logs go to <run>/logs/<job id>/",
    "open-mode": "set by submitit",
    "signal": "set by submitit (it checkpoints and requeues on that signal)",
    "array": "the launch layer decides what is an array",
}


def job_name(profile: Profile, stage: str) -> str:
    return f"{profile.name}-{stage}"


def rank_layout(profile: Profile, stage: str) -> tuple[int, int]:
    """(nodes, tasks per node) of ``stage``: one rank per GPU, ``tasks_per_node`` ranks on the CPU.

    Only training stages run data-parallel; asking for several ranks elsewhere is an error rather
    than a silent waste of nodes.
    """
    res = profile.resources_for(stage)
    gpus = res.gpus or 0
    nodes = res.nodes or 1
    tasks = res.tasks_per_node or max(gpus, 1)
    if not stage_spec(profile.task, stage).trains:
        if nodes > 1 or (res.tasks_per_node or 1) > 1:
            raise LaunchError(f"profile {profile.name!r}: stage {stage} does not train, so it runs as one process; "
                              f"remove resources.{stage}.nodes/tasks_per_node (or set them to 1)")
        return 1, 1
    if gpus and tasks != gpus:
        raise LaunchError(f"profile {profile.name!r}: stage {stage} runs one rank per GPU, but "
                          f"resources.{stage}.tasks_per_node={tasks} and gpus={gpus}; set them equal "
                          "(or leave tasks_per_node out)")
    return nodes, tasks


def executor_parameters(profile: Profile, stage: str, depends_on: Sequence[str] = (),
                        dependency: str = "afterok") -> dict[str, Any]:
    """AutoExecutor parameters for ``stage`` of ``profile``, waiting for the jobs ``depends_on``.

    ``afterok`` plus ``kill-on-invalid-dep=yes`` means: run only if every upstream job succeeded,
    and be cancelled (not left pending forever) when one of them fails. A job array waits with
    ``aftercorr`` on upstream arrays instead: task i runs once task i of each of them succeeded,
    and only task i is cancelled when one of those failed.
    """
    if dependency not in ("afterok", "aftercorr"):
        raise ValueError(f"dependency must be afterok or aftercorr, got {dependency!r}")
    res = profile.resources_for(stage)
    if res.time_min is None:
        raise LaunchError(
            f"profile {profile.name!r}: stage {stage} has no time limit; set resources.{stage}.time_min "
            "or resources.default.time_min (submitit would otherwise give it 5 minutes)"
        )
    params: dict[str, Any] = {"name": job_name(profile, stage), "timeout_min": res.time_min}
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    if res.cpus is not None:
        params["cpus_per_task"] = res.cpus
    if res.gpus:
        # 0 GPUs is left out rather than rendered as --gpus-per-node=0, which some sites reject.
        params["gpus_per_node"] = res.gpus
    nodes, tasks = rank_layout(profile, stage)
    if nodes > 1:
        params["nodes"] = nodes
    if tasks > 1:
        params["tasks_per_node"] = tasks
    if nodes * tasks > 1:
        # A rank that exits ends the others at once (whatever the site's KillOnBadExit), rather than
        # leaving them to wait out the collective timeout for a peer that is not coming back.
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    for field, key in (("partition", "slurm_partition"), ("account", "slurm_account"), ("qos", "slurm_qos")):
        value = getattr(res, field)
        if value is not None:
            params[key] = value
    additional = _extra_options(stage, res)
    if depends_on:
        additional["dependency"] = f"{dependency}:" + ":".join(str(job_id) for job_id in depends_on)
        additional["kill-on-invalid-dep"] = "yes"
    if additional:
        params["slurm_additional_parameters"] = additional
    return params


def _extra_options(stage: str, res: Resources) -> dict[str, Any]:
    """``resources.<stage>.extra`` as sbatch options, refusing those that have a proper field."""
    options: dict[str, Any] = {}
    for key, value in res.extra.items():
        flag = key.replace("_", "-")
        if flag in _RESERVED_EXTRA:
            fix = _RESERVED_EXTRA[flag].replace("<stage>", stage)
            raise LaunchError(f"resources.{stage}.extra.{key}: not allowed here ({fix})")
        options[flag] = value
    return options


def describe(res: Resources, ranks: int = 1) -> str:
    """One short line for tables: what a stage asked for (``ranks``: its data-parallel processes)."""
    parts = [
        f"{res.mem_gb:g}G" if res.mem_gb is not None else None,
        f"{res.nodes} nodes" if (res.nodes or 1) > 1 else None,
        f"{res.gpus} gpu" if res.gpus else None,
        f"{ranks} ranks" if ranks > 1 else None,
        f"{res.cpus} cpu" if res.cpus else None,
        f"{res.time_min} min" if res.time_min else None,
        res.partition,
    ]
    return ", ".join(p for p in parts if p)
