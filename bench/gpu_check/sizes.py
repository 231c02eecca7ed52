"""How big each check runs: the GPU preset (under 5 minutes on one H100) and the CPU smoke preset.

The smoke preset runs every code path of the GPU preset with tiny models and data, so the harness
is exercised by ``make test`` on machines without a GPU; its figures prove nothing about a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Sizes:
    name: str
    can_profile: str
    """Profile whose model dims the CAN subjects take (GAT teacher, VGAE, GAT student)."""
    can_overrides: tuple[str, ...]
    """Overrides of those dims (the smoke preset shrinks them)."""
    tile: int
    """The sample's train split repeated this many times: room for batches of the largest plans."""
    eval_cap_bytes: int
    """Check 1 sizes its batches for min(device total, this): the largest of its six batches."""
    fractions: tuple[float, ...]
    """Check 1's batch sizes, as fractions of that plan's batch."""
    small_devices: tuple[int, ...]
    """Check 2's emulated device totals."""
    steps: int
    """Check 2's training steps per emulated device."""
    kg_scale: float
    """Synthetic PrimeKG-shaped graph at this share of PrimeKG's size."""
    kg_overrides: tuple[str, ...]
    kg_max_seed_edges: int
    """Check 1's largest KG batch at most (the primekg profile's kg.max_seed_edges on the GPU)."""
    oom_claim_gb: float
    """Check 3: the device total PIPELINE_MEMORY_GB claims (more than the emulated device has)."""
    throughput_graphs: int
    """Check 5: graphs in the timed teacher epoch."""
    throughput_kg_steps: int
    offload_bytes: int
    """Check 4 sizes the student's batch for a device of this total."""
    threads: int | None = None
    """torch threads (None: the job's cpus). The smoke run takes one: its many tiny ops only wait
    for a second thread, and on a shared 2-core machine spinning workers slow it down a lot."""


GPU = Sizes(
    name="gpu",
    can_profile="set_01",
    can_overrides=(),
    tile=64,
    eval_cap_bytes=16 * GiB,
    fractions=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0),
    small_devices=(2 * GiB, 4 * GiB, 8 * GiB),
    steps=50,
    kg_scale=0.05,
    kg_overrides=(),
    kg_max_seed_edges=1024,
    oom_claim_gb=8.0,
    throughput_graphs=16384,
    throughput_kg_steps=30,
    offload_bytes=8 * GiB,
)

SMOKE = Sizes(
    name="smoke",
    can_profile="set_01",
    can_overrides=("model.hidden=8", "model.heads=2", "model.layers=2", "model.id_embed_dim=8",
                   "model.mlp_hidden=16", "vgae.hidden=8", "vgae.heads=2", "vgae.latent_dim=8",
                   "vgae.id_embed_dim=8", "student_model.hidden=4", "student_model.heads=2",
                   "student_model.mlp_hidden=8"),
    tile=1,
    eval_cap_bytes=24 * MiB,
    fractions=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0),
    small_devices=(16 * MiB, 24 * MiB),
    steps=3,
    kg_scale=0.004,
    kg_overrides=("kg_model.teacher.hidden=16", "kg_model.teacher.out=16", "kg_model.teacher.heads=2"),
    kg_max_seed_edges=128,
    oom_claim_gb=64.0,
    throughput_graphs=128,
    throughput_kg_steps=3,
    offload_bytes=16 * MiB,
    threads=1,
)
