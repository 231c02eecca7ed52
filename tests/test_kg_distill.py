"""Distillation of the KG student: the KD term measures disagreement only (zero when the student's
scores equal the teacher's), the teacher's targets come from the student's own batch, and a short
distillation on a small graph with planted structure yields a student that ranks held-out links
well above chance."""
from __future__ import annotations

import pytest
import torch

from pipeline.kg.cache import CacheParams, KGGraph, build_cache
from pipeline.kg.config import KGNetConfig
from pipeline.kg.loss import distill_loss, link_loss, soft_link_kd, validate_links
from pipeline.kg.reader import read_edges
from pipeline.kg.sampler import LinkBatchLoader, LinkEvalLoader
from pipeline.kg.training import build_encoder
from tests.kg_helpers import (
    primekg_row,
    single_thread,  # noqa: F401  (autouse fixture)
    write_primekg,
)

TEACHER = KGNetConfig(kind="hgt", hidden=32, out=32, heads=4, layers=2, dropout=0.0)
STUDENT = KGNetConfig(kind="sage", hidden=16, out=16, layers=2, dropout=0.0)
COMMUNITIES, PAPERS, AUTHORS, SUBJECTS = 4, 160, 80, 8


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> KGGraph:
    """Papers, authors and subjects in 4 communities: a paper has 3 authors and 1 subject of its
    own community, so held-out links are predictable from the rest of the graph."""
    root = tmp_path_factory.mktemp("planted")
    gen = torch.Generator().manual_seed(0)
    per_a, per_s = AUTHORS // COMMUNITIES, SUBJECTS // COMMUNITIES
    rows = []
    for p in range(PAPERS):
        c = p % COMMUNITIES
        paper = (p, f"P{p}", "paper", f"paper {p}")
        for a in torch.randperm(per_a, generator=gen)[:3].tolist():
            a = c * per_a + a
            rows.append(primekg_row("paper_author", paper, (PAPERS + a, f"A{a}", "author", f"author {a}")))
        s = c * per_s + int(torch.randint(per_s, (1,), generator=gen))
        rows.append(primekg_row("paper_subject", paper, (PAPERS + AUTHORS + s, f"S{s}", "subject", f"subject {s}")))
    path = write_primekg(root / "kg.csv", rows)
    build_cache(read_edges(path), CacheParams(val_fraction=0.15, test_fraction=0.0), root / "cache", "k", {})
    return KGGraph.open(root / "cache")


def batches(graph: KGGraph, seed_edges: int = 256):
    loader = LinkBatchLoader(graph, seed_edges, [4, 2], sampler="torch")
    epoch = 0
    while True:
        epoch += 1
        loader.set_epoch(epoch)
        yield from loader


def fit(model, loss_fn, graph: KGGraph, steps: int, lr: float = 0.01) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _, batch in zip(range(steps), batches(graph)):
        loss, _ = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_soft_link_kd_is_zero_only_when_the_scores_match():
    torch.manual_seed(0)
    teacher = 3 * torch.randn(500)
    assert abs(float(soft_link_kd(teacher.clone(), teacher, 4.0))) < 1e-6
    for student in (teacher + torch.randn(500), -teacher, torch.zeros(500)):
        assert float(soft_link_kd(student, teacher, 4.0)) > 1e-3
    # the gradient pulls the student's logits towards the teacher's
    student = torch.zeros(500, requires_grad=True)
    soft_link_kd(student, teacher, 4.0).backward()
    assert float((student.grad * teacher).sum()) < 0


def test_distill_term_vanishes_for_a_student_identical_to_the_teacher(planted):
    """With alpha = 1 only the KD terms count: a copy of the teacher (the alignment an identity)
    has score KD 0 and alignment 0 on a training batch. Fails if the KD term keeps the soft
    targets' entropy, or if the teacher's targets come from another view of the graph than the
    batch's (e.g. full-graph embeddings, in which the batch's positive edges are still present)."""
    torch.manual_seed(0)
    teacher = build_encoder(TEACHER, planted).eval()
    student = build_encoder(TEACHER, planted, align_dim=TEACHER.out)
    student.load_state_dict(teacher.state_dict(), strict=False)
    with torch.no_grad():
        student.align.weight.copy_(torch.eye(TEACHER.out))
        student.align.bias.zero_()
    batch = next(batches(planted, 64))
    loss, _ = distill_loss(teacher, alpha=1.0, temperature=4.0)(student, batch)
    assert abs(loss.item()) < 1e-5
    other = build_encoder(STUDENT, planted, align_dim=TEACHER.out)
    loss, _ = distill_loss(teacher, alpha=1.0, temperature=4.0)(other, batch)
    assert loss.item() > 0.01
    assert not any(p.requires_grad for p in teacher.parameters())


STEPS = 100
"""At 60 steps the teacher's AUC straddles 0.7 with the model seed (0.69 to 0.82 over seeds 0-5); at 100
it clears it for every seed tried (teacher 0.73 to 0.78, student 0.84 to 0.88 over seeds 0-3)."""


def test_short_distillation_beats_chance_on_held_out_links(planted):
    torch.manual_seed(0)
    val = LinkEvalLoader(planted, "val", [4, 2], 256, None, 20, seed=0, sampler="torch")
    teacher = build_encoder(TEACHER, planted)
    fit(teacher, link_loss(), planted, STEPS)
    teacher_auc = validate_links(teacher.eval(), val)["auc"]
    student = build_encoder(STUDENT, planted, align_dim=TEACHER.out)
    fit(student, distill_loss(teacher, alpha=0.7, temperature=4.0), planted, STEPS)
    student_auc = validate_links(student.eval(), val)["auc"]
    print(f"held-out AUC: teacher {teacher_auc:.3f}, student {student_auc:.3f}")
    assert teacher_auc > 0.7
    assert student_auc > 0.7 and student_auc > teacher_auc - 0.1
