pytest_plugins = ["tests.slurm_cluster", "tests.launch_helpers"]
