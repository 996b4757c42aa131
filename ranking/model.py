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
from ranking.features import CONTEXT_NUMERIC, GROUPS, POPULARITY
from retrieval.towers import FeatureEmbedder, mlp


class NumericEncoder(nn.Module):
    """Named (R,) or (R, D) float inputs, concatenated: dict -> (R, sum D)."""

    def __init__(self, names: list[str], dims: dict[str, int]):
        super().__init__()
        self.names = names
        self.out_dim = sum(dims[n] for n in names)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([x[n].reshape(x[n].shape[0], -1).to(torch.float32) for n in self.names], dim=-1)


class CollaborativeEncoder(nn.Module):
    """Tower embeddings, their product, the retrieval score and the co-occurrence score."""

    def __init__(self, emb_dim: int):
        super().__init__()
        self.out_dim = 3 * emb_dim + 2

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        u, i = x["user_emb"], x["item_emb"]  # (R, D) each
        return torch.cat([u, i, u * i, x["retrieval_score"][:, None], x["cooc_score"][:, None]], dim=-1)


class LateFusionRanker(nn.Module):
    """(request, candidate) features -> (score (R,), contributions (R, G)) with G = len(GROUPS)."""

    def __init__(self, item_specs: list[FeatureSpec], user_specs: list[FeatureSpec], context_specs: list[FeatureSpec],
                 cardinalities: dict[str, int], tower_dim: int, emb_dim: int, group_dim: int, hidden: list[int],
                 dropout: float):
        super().__init__()
        content = [s for s in item_specs if s.name != "item_id"]
        user = [s for s in user_specs if s.name != "user_id"]
        raw = {
            "collaborative": CollaborativeEncoder(tower_dim),
            "content": FeatureEmbedder(content, cardinalities, emb_dim),
            "user": FeatureEmbedder(user, cardinalities, emb_dim),
            "context": _ContextEncoder(context_specs, cardinalities, emb_dim),
            "popularity": NumericEncoder(list(POPULARITY), {n: 1 for n in POPULARITY}),
        }
        self.raw = nn.ModuleDict(raw)
        self.project = nn.ModuleDict({g: mlp(max(raw[g].out_dim, 1), [], group_dim, 0.0) for g in GROUPS})
        self.act = nn.GELU()
        self.fusion = mlp(group_dim * len(GROUPS), hidden, 1, dropout)
        # Average group vectors on training data: the "absent" reference for contributions.
        self.register_buffer("baseline", torch.zeros(len(GROUPS), group_dim))

    def group_vectors(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (R, G, H) one vector per signal group."""
        vecs = []
        for g in GROUPS:
            h = self.raw[g](x)
            if h.shape[-1] == 0:  # a group with no features (e.g. no user attributes)
                h = torch.zeros(h.shape[0], 1, device=h.device)
            vecs.append(self.act(self.project[g](h)))
        return torch.stack(vecs, dim=1)

    def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.group_vectors(x)  # (R, G, H)
        r, g, d = h.shape
        if self.training:
            return self.fusion(h.reshape(r, g * d)).squeeze(-1), torch.zeros(r, g, device=h.device)
        # Variant 0 is the full input; variant j+1 has group j replaced by its baseline.
        eye = torch.eye(g, device=h.device, dtype=h.dtype)  # (G, G)
        keep = torch.cat([torch.zeros(1, g, device=h.device, dtype=h.dtype), eye])[:, None, :, None]  # (G+1, 1, G, 1)
        variants = h[None] * (1 - keep) + self.baseline[None, None] * keep  # (G+1, R, G, H)
        scores = self.fusion(variants.reshape((g + 1) * r, g * d)).reshape(g + 1, r)
        return scores[0], (scores[0][None] - scores[1:]).T  # (R,), (R, G)


class _ContextEncoder(nn.Module):
    """Hour / day-of-week embeddings plus time since last interaction and item age."""

    def __init__(self, specs: list[FeatureSpec], cardinalities: dict[str, int], emb_dim: int):
        super().__init__()
        self.embed = FeatureEmbedder(specs, cardinalities, emb_dim)
        self.numeric = NumericEncoder(list(CONTEXT_NUMERIC), {n: 1 for n in CONTEXT_NUMERIC})
        self.out_dim = self.embed.out_dim + self.numeric.out_dim

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.embed(x), self.numeric(x)], dim=-1)


def build_ranker(features, tower_dim: int, emb_dim: int, group_dim: int, hidden: list[int], dropout: float) -> LateFusionRanker:
    """Construct from a fitted :class:`features.encoders.FeatureSet`."""
    card = {**features.cardinalities("item"), **features.cardinalities("user"), **features.cardinalities("context")}
    return LateFusionRanker(features.specs["item"], features.specs["user"], features.specs["context"], card, tower_dim,
                            emb_dim, group_dim, hidden, dropout)


def load_ranker(path: str | Path, features) -> LateFusionRanker:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_ranker(features, ckpt["tower_dim"], **ckpt["model_cfg"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
