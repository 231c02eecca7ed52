"""A run's report, drawn from its files alone: its records (``records``), figures (``figures``),
the self-contained page (``html``, ``run_report``), sweeps and comparisons (``sweep_report``,
``compare``); each workload adds its part through the registry (``workload``)."""
