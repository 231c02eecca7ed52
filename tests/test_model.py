"""GATWithJK: shapes, jumping knowledge width, gradients, rebuilding from model_kwargs."""
import pytest
import torch

from pipeline.can.data.cache import GraphSplit
from pipeline.can.models.gat import GATWithJK
from pipeline.train import count_parameters
from tests.helpers import EDGE_FEATURES, NODE_FEATURES, VOCAB, synthetic_split


def _batch(num_graphs: int = 5):
    return GraphSplit(synthetic_split(num_graphs, seed=3)).collate(torch.arange(num_graphs))


def _model(**kw) -> GATWithJK:
    args = dict(num_ids=len(VOCAB) + 1, node_features=len(NODE_FEATURES), edge_features=len(EDGE_FEATURES),
                hidden=4, heads=2, layers=3, id_embed_dim=3, mlp_hidden=8, dropout=0.1)
    return GATWithJK(**{**args, **kw})


@pytest.mark.parametrize("edge_features", [len(EDGE_FEATURES), 0])
def test_forward_backward_shapes(edge_features):
    batch = _batch()
    if edge_features == 0:
        batch.edge_attr = batch.edge_attr[:, :0]
    model = _model(edge_features=edge_features)
    logits = model(batch)
    assert logits.shape == (5, 2)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_jumping_knowledge_concatenates_every_layer():
    model = _model(layers=3).eval()
    batch = _batch()
    assert model.node_states(batch).shape == (batch.num_nodes, 4 * 2 * 3)
    emb = model.embed(batch)
    assert emb.shape == (5, model.embedding_dim) and model.embedding_dim == 2 * 4 * 2 * 3


def test_graph_results_do_not_depend_on_batch_mates():
    model = _model().eval()
    split = GraphSplit(synthetic_split(6, seed=4))
    together = model(split.collate(torch.arange(6)))
    alone = torch.cat([model(split.collate(torch.tensor([i]))) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_rebuilds_from_model_kwargs():
    model = _model().eval()
    clone = GATWithJK(**model.model_kwargs).eval()
    clone.load_state_dict(model.state_dict())
    batch = _batch()
    assert torch.equal(model(batch), clone(batch))
    assert all(isinstance(v, (int, float)) for v in model.model_kwargs.values())
    assert count_parameters(_model(hidden=2)) < count_parameters(model)
