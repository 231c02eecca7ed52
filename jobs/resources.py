"""The one place where a profile's resources become submitit executor parameters.

The parameters are those of ``submitit.AutoExecutor``: the generic ones (``mem_gb``,
``timeout_min``, ...) are read by both the SLURM and the local executor; ``slurm_*`` ones only
by SLURM. So a dry-run and a submission of the same profile ask for the same things.
"""
from __future__ import annotations

from typing import Any, Sequence

from pipeline.config import Profile, Resources

from jobs.errors import LaunchError

# sbatch options that the profile sets through a field of its own, or that the launch layer
# owns; ``resources.<stage>.extra`` must not set them behind those fields' backs.
_RESERVED_EXTRA: dict[str, str] = {
    "time": "set resources.<stage>.time_min",
    "mem": "set resources.<stage>.mem_gb",
    "cpus-per-task": "set resources.<stage>.cpus",
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


def executor_parameters(profile: Profile, stage: str, depends_on: Sequence[str] = ()) -> dict[str, Any]:
    """AutoExecutor parameters for ``stage`` of ``profile``, waiting for the jobs ``depends_on``.

    ``afterok`` plus ``kill-on-invalid-dep=yes`` means: run only if every upstream job succeeded,
    and be cancelled (not left pending forever) when one of them fails.
    """
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
    for field, key in (("partition", "slurm_partition"), ("account", "slurm_account"), ("qos", "slurm_qos")):
        value = getattr(res, field)
        if value is not None:
            params[key] = value
    additional = _extra_options(stage, res)
    if depends_on:
        additional["dependency"] = "afterok:" + ":".join(str(job_id) for job_id in depends_on)
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


def describe(res: Resources) -> str:
    """One short line for tables: what a stage asked for."""
    parts = [
        f"{res.mem_gb:g}G" if res.mem_gb is not None else None,
        f"{res.gpus} gpu" if res.gpus else None,
        f"{res.cpus} cpu" if res.cpus else None,
        f"{res.time_min} min" if res.time_min else None,
        res.partition,
    ]
    return ", ".join(p for p in parts if p)
