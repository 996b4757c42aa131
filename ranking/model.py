"""Late-fusion ranker (plain ``nn.Module``, exported to ONNX as it is).

Each signal group has its own encoder to a small vector; a fusion MLP scores their
concatenation. A group's contribution is the score drop when that group's vector is replaced by
its average over the training data (occlusion), so every score says which group drove it. The
contributions are computed in the same forward pass (one batched fusion call), so the exported
model returns them too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from features.encoders import FeatureSpec
from ranking.features import COLLABORATIVE, CONTEXT_NUMERIC, GROUPS, POPULARITY
from retrieval.towers import FeatureEmbedder, mlp


class NumericEncoder(nn.Module):
    """Named (R,) or (R, D) float inputs, concatenated: dict -> (R, sum D)."""

    def __init__(self, names: list[str], dims: dict[str, int]):
        super().__init__()
        self.names = names
        self.out_dim = sum(dims[n] for n in names)

    @property
    def input_names(self) -> list[str]:
        return list(self.names)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([x[n].reshape(x[n].shape[0], -1).to(torch.float32) for n in self.names], dim=-1)


class CollaborativeEncoder(nn.Module):
    """Tower embeddings, their product, the retrieval score and the co-occurrence scores."""

    input_names = list(COLLABORATIVE)

    def __init__(self, emb_dim: int):
        super().__init__()
        self.out_dim = 3 * emb_dim + 3

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        u, i = x["user_emb"], x["item_emb"]  # (R, D) each
        scalars = [x[n][:, None] for n in ("retrieval_score", "cooc_score", "ease_score")]
        return torch.cat([u, i, u * i, *scalars], dim=-1)


class LateFusionRanker(nn.Module):
    """(request, candidate) features -> (score (R,), contributions (R, G)) with G = len(GROUPS)."""

    def __init__(self, item_specs: list[FeatureSpec], user_specs: list[FeatureSpec], context_specs: list[FeatureSpec],
                 cardinalities: dict[str, int], tower_dim: int, emb_dim: int, group_dim: int, hidden: list[int],
                 dropout: float, groups: list[str] | None = None):
        super().__init__()
        self.groups = list(groups or GROUPS)
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown ranker group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
        self.group_index = [GROUPS.index(g) for g in self.groups]  # column of each group in the output
        content = [s for s in item_specs if s.name != "item_id"]
        user = [s for s in user_specs if s.name != "user_id"]
        all_raw = {
            "collaborative": CollaborativeEncoder(tower_dim),
            "content": FeatureEmbedder(content, cardinalities, emb_dim),
            "user": FeatureEmbedder(user, cardinalities, emb_dim),
            "context": _ContextEncoder(context_specs, cardinalities, emb_dim),
            "popularity": NumericEncoder(list(POPULARITY), {n: 1 for n in POPULARITY}),
        }
        raw = {g: all_raw[g] for g in self.groups}
        self.raw = nn.ModuleDict(raw)
        self.project = nn.ModuleDict({g: mlp(max(raw[g].out_dim, 1), [], group_dim, 0.0) for g in self.groups})
        self.act = nn.GELU()
        self.fusion = mlp(group_dim * len(self.groups), hidden, 1, dropout)
        # Average group vectors on training data: the "absent" reference for contributions.
        self.register_buffer("baseline", torch.zeros(len(self.groups), group_dim))

    @property
    def input_names(self) -> list[str]:
        """Every input this model reads, group by group (the ONNX input table)."""
        return [n for g in self.groups for n in self.raw[g].input_names]

    def group_vectors(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (R, G', H) one vector per signal group of this model."""
        vecs = []
        for g in self.groups:
            h = self.raw[g](x)
            if h.shape[-1] == 0:  # a group with no features (e.g. no user attributes)
                h = torch.zeros(h.shape[0], 1, device=h.device)
            vecs.append(self.act(self.project[g](h)))
        return torch.stack(vecs, dim=1)

    def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.group_vectors(x)  # (R, G', H)
        r, g, d = h.shape
        if self.training:
            return self.fusion(h.reshape(r, g * d)).squeeze(-1), torch.zeros(r, len(GROUPS), device=h.device)
        # Variant 0 is the full input; variant j+1 has group j replaced by its baseline.
        eye = torch.eye(g, device=h.device, dtype=h.dtype)  # (G, G)
        keep = torch.cat([torch.zeros(1, g, device=h.device, dtype=h.dtype), eye])[:, None, :, None]  # (G+1, 1, G, 1)
        variants = h[None] * (1 - keep) + self.baseline[None, None] * keep  # (G+1, R, G, H)
        scores = self.fusion(variants.reshape((g + 1) * r, g * d)).reshape(g + 1, r)
        contrib = (scores[0][None] - scores[1:]).T  # (R, G')
        if g == len(GROUPS):
            return scores[0], contrib  # (R,), (R, G)
        full = torch.zeros(r, len(GROUPS), device=h.device, dtype=contrib.dtype)
        return scores[0], full.index_copy(1, torch.as_tensor(self.group_index, device=h.device), contrib)


class _ContextEncoder(nn.Module):
    """Hour / day-of-week embeddings plus time since last interaction and item age."""

    def __init__(self, specs: list[FeatureSpec], cardinalities: dict[str, int], emb_dim: int):
        super().__init__()
        self.embed = FeatureEmbedder(specs, cardinalities, emb_dim)
        self.numeric = NumericEncoder(list(CONTEXT_NUMERIC), {n: 1 for n in CONTEXT_NUMERIC})
        self.out_dim = self.embed.out_dim + self.numeric.out_dim

    @property
    def input_names(self) -> list[str]:
        return self.embed.input_names + self.numeric.input_names

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.embed(x), self.numeric(x)], dim=-1)


def build_ranker(features, tower_dim: int, emb_dim: int, group_dim: int, hidden: list[int], dropout: float,
                 groups: list[str] | None = None) -> LateFusionRanker:
    """Construct from a fitted :class:`features.encoders.FeatureSet` (``groups``: a subset, e.g. for a student)."""
    card = {**features.cardinalities("item"), **features.cardinalities("user"), **features.cardinalities("context")}
    return LateFusionRanker(features.specs["item"], features.specs["user"], features.specs["context"], card, tower_dim,
                            emb_dim, group_dim, hidden, dropout, groups)


def load_ranker(path: str | Path, features) -> LateFusionRanker:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_ranker(features, ckpt["tower_dim"], **ckpt["model_cfg"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
