"""What the knowledge-graph encoders (HGT, GraphSAGE) share: learnable node embeddings, a per-type
output head, a link decoder (DistMult, ComplEx or RotatE: ``pipeline.kg.decoders``), and a
layer-by-layer interface.

The graphs have no node features, so every node starts from a learnable embedding of its id
within its type, plus a projection of its structural features: log(1 + degree) per incoming
message type, counted on the graph the model reads (the training graph; every edge when the
export embeds the full graph). Attention and mean aggregation are blind to how
many neighbours a node has; the degree restores it (alone it separates held-out ACM
paper-author edges from random pairs with AUC 0.82). A training batch subtracts its own
positive edges from the degrees (``degree_drop``), as it removes them from its message graph:
otherwise a node's degree would count the edge it is asked to predict, which a held-out edge
never does (a paper whose only subject edge is held out has subject-degree 0 at test time, and
1 in every training positive).

Rare nodes can share one embedding row per type (``id_min_degree``): a node with fewer training
edges than that reads its type's shared row instead of its own. An embedding fitted to one or
two edges memorizes them and carries no signal to a held-out edge, and at random init it is
noise as large as the signal. On ACM, where most authors have one paper, sharing the rows of
nodes below 10 edges raised held-out link AUC from 0.80 to 0.88 in 10-epoch runs. Frequent
nodes (popular subjects, prolific authors) keep their own rows, fitted on enough edges to
generalize.

With ``label_input_types`` the training fold's node labels are an input too (``kg.label_input``):
a learned vector per class added to a labelled node's features, the label trick of Wang et al.
("Bag of tricks for node classification with GNNs", 2021). A paper's co-authored papers'
labels predict its own far better than any structure does (ACM: logistic regression on
co-authored training papers' label counts plus subjects reaches macro-F1 0.84, the subjects
alone 0.71). A node must never read its own label, or a classifier on its embedding learns to
copy it and fails on the test fold, where no label is given: the caller names the rows whose
label is hidden (``forward`` hides a batch's seed nodes; export hides each node in its own pass).

``forward`` runs all layers on a sampled batch; ``layer`` runs one layer on any subgraph, which
is what layer-wise inference uses to embed every node chunk by chunk without a full-graph
forward pass.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.kg import decoders

EMBED_STD = 1.0
"""Init scale of the node embeddings (nn.Embedding's default). Much smaller and the per-type
biases of the layers dominate: nodes of one type start out nearly identical (cosine ~0.99)."""


class KGEncoder(nn.Module):
    """Base class: subclasses build ``self.convs`` and implement :meth:`layer`.

    Constructor arguments are plain data (node counts per type alias, message types as lists)
    kept in ``model_kwargs``, so a checkpoint rebuilds the model without the cache or profile.
    """

    def __init__(self, num_nodes: dict[str, int], message_types: list[list[str]], num_edge_types: int,
                 hidden: int = 256, out: int = 512, layers: int = 2, dropout: float = 0.1,
                 align_dim: int | None = None, degree_features: bool = True, jk: str = "last",
                 id_min_degree: int = 0, num_classes: int = 0, label_head: bool = True,
                 label_input_types: list[str] | tuple[str, ...] = (), decoder: str = "distmult", **extra: Any):
        super().__init__()
        self.model_kwargs: dict[str, Any] = dict(
            num_nodes=dict(num_nodes), message_types=[list(m) for m in message_types],
            num_edge_types=num_edge_types, hidden=hidden, out=out, layers=layers, dropout=dropout,
            align_dim=align_dim, degree_features=degree_features, jk=jk, id_min_degree=id_min_degree,
            num_classes=num_classes, label_head=label_head, label_input_types=list(label_input_types),
            decoder=decoder, **extra)
        self.node_types = list(num_nodes)
        self.num_nodes_of = dict(num_nodes)
        self.message_types = [tuple(m) for m in message_types]
        self.num_layers = layers
        self.hidden = hidden
        self.out_dim = out
        self.dropout = dropout
        # one row per node, plus the type's shared row (the last) for nodes below id_min_degree
        self.embed = nn.ModuleDict({t: nn.Embedding(n + 1, hidden) for t, n in num_nodes.items()})
        for table in self.embed.values():
            nn.init.normal_(table.weight, std=EMBED_STD)
        self.id_min_degree = id_min_degree
        for t, n in num_nodes.items():
            self.register_buffer(f"id_row_{t}", torch.arange(n))
        incoming = {t: sum(1 for m in message_types if m[2] == t) for t in num_nodes}
        self.degree_features = degree_features
        if degree_features:
            for t, n in num_nodes.items():
                self.register_buffer(f"degree_{t}", torch.zeros(n, max(incoming[t], 1)))
            self.degree_proj = nn.ModuleDict({t: nn.Linear(max(incoming[t], 1), hidden) for t in num_nodes})
        if jk not in ("last", "cat"):
            raise ValueError(f"jk must be 'last' or 'cat', got {jk!r}")
        self.jk = jk
        head_in = hidden * (layers + 1) if jk == "cat" else hidden
        self.head = nn.ModuleDict({t: nn.Linear(head_in, out, bias=False) for t in num_nodes})
        self.decoder = decoder
        self.rel = nn.Parameter(decoders.relation_init(decoder, num_edge_types, out))
        """Relation parameters of each (undirected) edge type, as the decoder reads them."""
        self.rel_bias = nn.Parameter(torch.zeros(num_edge_types))
        """Logit offset per edge type. Without it the model manufactures one from a large shared
        offset of every embedding of a type, and the embeddings collapse onto that direction."""
        self.align = nn.Linear(out, align_dim) if align_dim else None
        """Projection onto the teacher's embedding width, used only by the distillation loss."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(out, num_classes) if num_classes and label_head else None
        """Linear node classifier on the embedding, used only by the label term (``kg.label_weight``):
        linear, so what it learns is what a logistic regression on the exported embedding can read."""
        self.label_input_types = list(label_input_types)
        if self.label_input_types and not num_classes:
            raise ValueError("label_input_types needs num_classes > 0")
        # row num_classes is 'no label' (unlabelled, test fold, or hidden): zero and never trained
        self.label_embed = (nn.Embedding(num_classes + 1, hidden, padding_idx=num_classes)
                            if self.label_input_types else None)
        for t in self.label_input_types:
            self.register_buffer(f"label_in_{t}", torch.full((num_nodes[t],), num_classes, dtype=torch.long))

    def set_degrees(self, csc: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The degree features: in-degree per incoming message type, counted on the graph whose
        messages the model reads (the training graph in training, every edge at export)."""
        if not self.degree_features:
            return
        for t in self.node_types:
            getattr(self, f"degree_{t}").copy_(self._in_degrees(csc, t))

    def set_input_labels(self, targets: dict[str, torch.Tensor]) -> None:
        """The labels the model reads as input: class index per node of each label-input type,
        -1 for none (``pipeline.kg.training.training_labels``: the training fold only)."""
        for t in self.label_input_types:
            y = targets[t].to(self.label_in(t).device)
            self.label_in(t).copy_(torch.where(y >= 0, y, self.num_classes))

    def label_in(self, t: str) -> torch.Tensor:
        """Input class of each node of type ``t`` (``num_classes``: none)."""
        return getattr(self, f"label_in_{t}")

    def assign_id_rows(self, csc: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Which nodes read their type's shared embedding row: fewer than ``id_min_degree`` edges in
        the training graph. Fixed once, before training; export never reassigns, whatever graph it reads."""
        for t, n in self.num_nodes_of.items():
            rare = self._in_degrees(csc, t).sum(1) < self.id_min_degree
            self.id_row_of(t).copy_(torch.where(rare, n, torch.arange(n)))

    def _in_degrees(self, csc: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]], t: str) -> torch.Tensor:
        cols = [csc[mt][0].diff().float() for mt in self.message_types if mt[2] == t and mt in csc]
        return torch.stack(cols, dim=1) if cols else torch.zeros(self.num_nodes_of[t], 1)

    def id_row_of(self, t: str) -> torch.Tensor:
        """Embedding row of each node of type ``t``: its own, or the shared last row."""
        return getattr(self, f"id_row_{t}")

    def shared_rows(self) -> dict[str, int]:
        """Nodes per type that read the shared embedding row."""
        return {t: int((self.id_row_of(t) == n).sum()) for t, n in self.num_nodes_of.items()}

    # -- layer-by-layer interface ------------------------------------------------
    def inputs(self, n_id: dict[str, torch.Tensor], degree_drop: dict[str, torch.Tensor] | None = None,
               hide_labels: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Layer-0 features of the given nodes: learnable embedding (+ projected log-degrees, less
        the edges a training batch predicts; + the input label's vector, except on the rows that
        ``hide_labels[t]`` (bool, one per id) marks).

        A label-input type must be given its hidden rows: whose label stays visible is a decision
        about leakage, which the caller makes, never a default."""
        out = {}
        for t, ids in n_id.items():
            if not ids.numel():
                continue
            h = self.embed[t](self.id_row_of(t)[ids])
            if self.degree_features:
                degree = getattr(self, f"degree_{t}")[ids]
                if degree_drop is not None and t in degree_drop:
                    degree = (degree - degree_drop[t]).clamp_min(0)
                h = h + self.degree_proj[t](torch.log1p(degree))
            if t in self.label_input_types:
                if hide_labels is None or t not in hide_labels:
                    raise ValueError(f"node type {t} reads input labels: name the rows whose label is hidden")
                h = h + self.label_embed(self.label_in(t)[ids].masked_fill(hide_labels[t], self.num_classes))
            out[t] = h
        return out

    def layer(self, i: int, x: dict[str, torch.Tensor],
              edge_index: dict[tuple[str, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Layer ``i`` on a (sub)graph: every node type of ``x`` gets an output row per input row."""
        raise NotImplementedError

    def output(self, xs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The head on the last layer, or (jk='cat') on every layer's output, input included:
        a node's own features, its neighbours' and its 2-hop neighbourhood's stay separately
        readable instead of being mixed into the last layer only. Rows are those of the last
        layer (every level lists the same nodes first)."""
        if self.jk == "cat":
            return {t: self.head[t](torch.cat([x[t][:h.shape[0]] for x in xs], dim=-1)) for t, h in xs[-1].items()}
        return {t: self.head[t](h) for t, h in xs[-1].items()}

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Embeddings of the batch's nodes: its seed nodes only when the batch has hop counts.

        With hop counts, layer ``i`` keeps only the nodes whose output can still reach a seed
        (within ``layers - 1 - i`` hops) and the edges into them, PyG's ``trim_to_layer``: the
        last layer and the head run on the seeds alone instead of the whole sampled subgraph.
        """
        # the seeds are what the batch predicts (link endpoints, label-term nodes): no own label;
        # a batch without seed counts leaves label-input types unmasked, and inputs() refuses it
        seeds = getattr(batch, "num_seeds", {})
        hide = {t: torch.arange(batch.n_id[t].numel(), device=batch.n_id[t].device) < seeds[t]
                for t in self.label_input_types if t in batch.n_id and t in seeds}
        x = self.inputs(batch.n_id, getattr(batch, "degree_drop", None), hide)
        hops = getattr(batch, "hops", None)
        edges = {k: v for k, v in batch.edge_index.items() if k[0] in x and k[2] in x}
        xs = [x]
        for i in range(self.num_layers):
            if hops is None:
                xs.append(self.layer(i, xs[-1], edges))
                continue
            reach = self.num_layers - 1 - i
            keep = {t: hops[t][min(reach, len(hops[t]) - 1)] for t in xs[-1]}
            into = {mt: ei[:, ei[1] < keep[mt[2]]] for mt, ei in edges.items() if mt[0] in keep and mt[2] in keep}
            out = self.layer(i, xs[-1], into)
            xs.append({t: h[:keep[t]] for t, h in out.items() if keep[t] > 0})
        return self.output(xs)

    # -- scoring -------------------------------------------------------------------
    def score(self, edge_type: int, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        """Logit of (src, edge type, dst) pairs (broadcast), by the model's decoder."""
        return decoders.score(self.decoder, self.rel[edge_type], self.rel_bias[edge_type], h_src, h_dst)

    def tail_query(self, edge_type: int, h_src: torch.Tensor) -> torch.Tensor:
        """What candidate tails are ranked against (``rank_scores``), from the heads' embeddings."""
        return decoders.tail_query(self.decoder, self.rel[edge_type], h_src)

    def head_query(self, edge_type: int, h_dst: torch.Tensor) -> torch.Tensor:
        """What candidate heads are ranked against, from the tails' embeddings."""
        return decoders.head_query(self.decoder, self.rel[edge_type], h_dst)

    def rank_scores(self, edge_type: int, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits [P, N] of queries [P, D] against candidate embeddings [N, D]."""
        return decoders.rank_scores(self.decoder, self.rel_bias[edge_type], query, candidates)

    def _ordered(self, edge_index: dict) -> dict:
        """Message types in metadata order, non-empty only (HGTConv relies on the order)."""
        return {mt: edge_index[mt] for mt in self.message_types if mt in edge_index and edge_index[mt].numel()}


def keep_missing(out: dict[str, torch.Tensor | None], x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Node types that received no message keep their input (convs drop or None them)."""
    return {t: out[t] if out.get(t) is not None else h for t, h in x.items()}
