"""The launch layer: a profile becomes a chain of submitit jobs, plus status and resume.

Every job runs ``pipeline.runner.run_stage`` and nothing else, so what SLURM runs, what the
local executor runs and what ``python -m pipeline.cli`` runs are the same code. ``pipeline``
never imports this package.
"""
