"""Training with labels: the label term (``kg.label_weight``) adds node labels of the fixed split's
training fold to the link loss, and label inputs (``kg.label_input``) feed them to the encoder,
never a node's own label. The test fold the report judges is never read in training."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from pipeline.config import ProfileError, load_profile
from pipeline.kg.cache import KGGraph
from pipeline.kg.inference import embed_nodes, layerwise_embeddings
from pipeline.kg.loss import link_loss, with_label_term
from pipeline.kg.report import label_split, read_labels
from pipeline.kg.sampler import KGBatch, LinkBatchLoader
from pipeline.kg.training import build_encoder, encoder_for_profile, training_labels
from pipeline.runner import run_stage
from pipeline.runs import RunDir
from pipeline.train import load_model
from tests.kg_helpers import FIXTURE, single_thread  # noqa: F401  (autouse fixture)
from tests.test_kg_stages import TINY


def drug_labels(path):
    """Three classes over the fixture's drugs (by id), and one row for a node the graph lacks."""
    table = pd.read_csv(FIXTURE, dtype=str)
    ids = sorted(set(table.loc[table.x_type == "drug", "x_id"]) | set(table.loc[table.y_type == "drug", "y_id"]))
    rows = pd.DataFrame({"node_type": "drug", "node_id": ids, "label": [f"c{i % 3}" for i in range(len(ids))]})
    rows = pd.concat([rows, pd.DataFrame([{"node_type": "drug", "node_id": "not-in-graph", "label": "c0"}])])
    rows.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def labelled_chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("kglabels")
    labels = drug_labels(root / "labels.csv")
    profile = load_profile("primekg", [*TINY, f"data.cache_dir={root / 'cache'}", f"kg.labels_file={labels}",
                                       "kg.label_weight=1.0", "kg.label_input=true"])
    run = RunDir.create(profile, root=root, run_id="r")
    results = {stage: run_stage(run.path, stage) for stage in profile.stages}
    return profile, run, results


def test_targets_are_the_training_fold_of_the_reports_fixed_split(labelled_chain):
    profile, _, results = labelled_chain
    graph = KGGraph.open(results["preprocess"]["cache_dir"])
    targets, classes = training_labels(profile, graph)
    nodes, y = read_labels(graph, profile.labels_path)
    drug = next(iter(nodes))
    train, test = label_split(y, profile.kg.label_test_fraction)
    assert classes == 3 and list(targets) == [drug]
    expected = torch.full((graph.num_nodes[drug],), -1)
    expected[nodes[drug][train]] = torch.from_numpy(np.searchsorted(["c0", "c1", "c2"], y[train]))
    assert torch.equal(targets[drug], expected)
    assert (targets[drug][nodes[drug][test]] == -1).all()  # the judged fold is unseen
    assert len(nodes[drug]) == graph.num_nodes[drug]  # the unknown node id is skipped


def test_label_term_adds_the_classifiers_cross_entropy_on_labelled_seeds(labelled_chain):
    profile, _, results = labelled_chain
    graph = KGGraph.open(results["preprocess"]["cache_dir"])
    targets, classes = training_labels(profile, graph)
    torch.manual_seed(0)
    model = build_encoder(profile.kg_model.teacher, graph, num_classes=classes).eval()
    loader = LinkBatchLoader(graph, 64, [4, 2], sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    base = link_loss()
    with torch.no_grad():
        link, emb = base(model, batch)
        both, _ = with_label_term(base, targets, weight=0.5)(model, batch)
        drug = next(iter(targets))
        y = targets[drug][batch.n_id[drug][:emb[drug].shape[0]]]
        known = y >= 0
        assert known.sum() > 0 and (~known).sum() > 0  # the batch mixes labelled and unlabelled seeds
        expected = 0.5 * F.cross_entropy(model.classifier(emb[drug][known]), y[known])
    assert torch.allclose(both - link, expected, atol=1e-6)


def test_trained_models_carry_a_classifier_and_the_report_judges_the_fixed_split_only(labelled_chain):
    _, run, _ = labelled_chain
    for role in ("teacher", "student"):
        model = load_model(run.path / role / "best.pt")
        assert model.classifier is not None and model.classifier.out_features == 3
        report = json.loads((run.path / "export" / role / "report.json").read_text())
        labels = report["labels"]
        assert labels["trained_on_labels"] is True and labels["macro_f1_over_splits"] is None
        assert 0 <= labels["macro_f1"] <= 1 and labels["test"] == round(0.2 * labels["labelled_nodes"] + 0.49)
        text = (run.path / "export" / role / "report.md").read_text()
        assert "trained with the labels of this split's training fold" in text and "Over 5" not in text


def test_label_weight_and_label_input_need_a_labels_file():
    with pytest.raises(ProfileError, match="label_weight.*labels_file"):
        load_profile("primekg", ["kg.label_weight=1.0"])
    with pytest.raises(ProfileError, match="label_input.*labels_file"):
        load_profile("primekg", ["kg.label_input=true"])
    kg = load_profile("primekg").kg
    assert kg.label_weight == 0 and not kg.label_input and not kg.reads_labels


def label_input_model(profile, graph):
    torch.manual_seed(0)
    model, _ = encoder_for_profile(profile, profile.kg_model.teacher, graph)
    return model.eval()


def test_checkpoints_read_the_training_folds_labels_only(labelled_chain):
    profile, run, results = labelled_chain
    graph = KGGraph.open(results["preprocess"]["cache_dir"])
    targets, classes = training_labels(profile, graph)
    (drug, target), = targets.items()
    for role in ("teacher", "student"):
        model = load_model(run.path / role / "best.pt")
        assert model.label_input_types == [drug]
        assert torch.equal(model.label_in(drug), torch.where(target >= 0, target, classes))


def test_a_training_batch_hides_its_seeds_labels_and_reads_the_others(labelled_chain):
    profile, _, results = labelled_chain
    graph = KGGraph.open(results["preprocess"]["cache_dir"])
    model = label_input_model(profile, graph)
    (drug,) = model.label_input_types
    loader = LinkBatchLoader(graph, 64, [4, 2], sampler="torch")
    loader.set_epoch(1)
    batch = next(iter(loader))
    seeds = batch.n_id[drug][:batch.num_seeds[drug]]
    others = batch.n_id[drug][batch.num_seeds[drug]:]
    others = others[model.label_in(drug)[others] < model.num_classes]
    assert seeds.numel() and others.numel()  # the batch reaches labelled non-seed drugs
    with torch.no_grad():
        before = model(batch)
        model.label_in(drug)[seeds] = (model.label_in(drug)[seeds] + 1) % model.num_classes
        after_own = model(batch)
        model.label_in(drug)[others] = (model.label_in(drug)[others] + 1) % model.num_classes
        after_others = model(batch)
    for t in before:
        assert torch.equal(before[t], after_own[t])
    assert any(not torch.allclose(before[t], after_others[t]) for t in before)
    with pytest.raises(ValueError, match="hidden"):  # no seed counts: nothing says whose label to hide
        model(KGBatch(batch.n_id, batch.edge_index, batch.targets))


def test_export_never_reads_a_nodes_own_label(labelled_chain):
    profile, _, results = labelled_chain
    graph = KGGraph.open(results["preprocess"]["cache_dir"])
    model = label_input_model(profile, graph)
    (drug,) = model.label_input_types
    labelled = torch.nonzero(model.label_in(drug) < model.num_classes).squeeze(1)
    node = int(labelled[0])
    before = embed_nodes(model, graph, chunk_nodes=16, chunk_edges=64)
    model.label_in(drug)[node] = (model.label_in(drug)[node] + 1) % model.num_classes
    after = embed_nodes(model, graph, chunk_nodes=16, chunk_edges=64)
    assert np.array_equal(before[drug][node], after[drug][node])
    assert any((before[t] != after[t]).any() for t in before)  # its neighbours read it
    # without a hidden-row mask a label-input model refuses to run (no silent self-reading)
    with pytest.raises(ValueError, match="hidden"):
        layerwise_embeddings(model, graph)


BAD_LABELS = {
    "missing file": (None, "no such file"),
    "empty file": ("", "empty file"),
    "missing column": ("node_type,node_id\ndrug,x\n", "missing column.*label"),
    "blank label": ("node_type,node_id,label\ndrug,{a},c0\ndrug,{b},\n", "line 3: empty"),
    "no match": ("node_type,node_id,label\ndrug,nope,c0\n", "no labelled node matches"),
    "one class": ("node_type,node_id,label\ndrug,{a},c0\ndrug,{b},c0\n", "two classes"),
    "unsplittable": ("node_type,node_id,label\ndrug,{a},c0\ndrug,{b},c1\n", "no stratified split"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_preprocess_rejects_an_unusable_labels_file_naming_it(tmp_path, case):
    text, message = BAD_LABELS[case]
    drugs = pd.read_csv(drug_labels(tmp_path / "ok.csv"), dtype=str)["node_id"]
    path = tmp_path / "labels.csv"
    if text is not None:
        path.write_text(text.format(a=drugs.iloc[0], b=drugs.iloc[1]))
    profile = load_profile("primekg", [*TINY, f"data.cache_dir={tmp_path / 'cache'}", f"kg.labels_file={path}",
                                       "kg.label_input=true"])
    run = RunDir.create(profile, root=tmp_path, run_id="r")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        run_stage(run.path, "preprocess")
    assert str(path) in str(err.value)
