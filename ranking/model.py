"""Late-fusion ranker (plain ``nn.Module``, exported to ONNX as it is).

Each signal group has its own encoder to a small vector; a fusion MLP scores their
concatenation. A group's contribution is the score drop when that group's vector is replaced by
its average over the training data (occlusion), so every score says which group drove it. The
contributions are computed in the same forward pass (one batched fusion call), so the exported
model returns them too.

Prior and residual: the score is ``w . prior inputs + scale[route] * fusion(groups)``. The prior
is a fixed linear skip over the strongest single signals (EASE, or cosine co-occurrence on catalogs
too large for EASE, of the request's items; overall popularity as a tie-breaker), scaled from the
data by :func:`init_prior` before training. The fusion's last layer starts at zero, so the
untrained ranker orders a known user's candidates like EASE and an unknown user's like
popularity, and training learns a residual. ``scale`` has one entry per route (request with known
items / without) and is chosen on held-out lists after training (:func:`choose_route_scales`):
where the residual does not clearly help a route on unseen lists, that route keeps the prior. A prior
input's term counts towards its group's contribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from features.encoders import FeatureSpec
from inference.spec import CONTENT_VECTOR  # the content group's vector, given in place of its attributes
from ranking.features import COLLABORATIVE, CONTEXT_NUMERIC, GROUPS, POPULARITY
from retrieval.towers import FeatureEmbedder, mlp

# Prior (skip) inputs and the group each one belongs to.
PRIOR = {"ease_z": "collaborative", "cooc_z": "collaborative", "pop_all": "popularity"}
ROUTE_INPUT = "has_history"  # 1: the request has known items, 0: the no-information cold route


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
    """Tower embeddings and their product (unless ``embeddings`` is False), the retrieval score,
    the co-occurrence scores, their list-standardised versions and the route flag."""

    scalars = [n for n in COLLABORATIVE if n not in ("user_emb", "item_emb")]

    def __init__(self, emb_dim: int, embeddings: bool = True):
        super().__init__()
        self.embeddings = embeddings
        self.out_dim = (3 * emb_dim if embeddings else 0) + len(self.scalars)

    @property
    def input_names(self) -> list[str]:
        return list(COLLABORATIVE) if self.embeddings else list(self.scalars)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        scalars = [x[n][:, None].to(torch.float32) for n in self.scalars]
        if not self.embeddings:
            return torch.cat(scalars, dim=-1)
        u, i = x["user_emb"], x["item_emb"]  # (R, D) each
        return torch.cat([u, i, u * i, *scalars], dim=-1)


class LateFusionRanker(nn.Module):
    """(request, candidate) features -> (score (R,), contributions (R, G)) with G = len(GROUPS)."""

    def __init__(self, item_specs: list[FeatureSpec], user_specs: list[FeatureSpec], context_specs: list[FeatureSpec],
                 cardinalities: dict[str, int], tower_dim: int, emb_dim: int, group_dim: int, hidden: list[int],
                 dropout: float, groups: list[str] | None, prior: bool, tower_embeddings: bool):
        super().__init__()
        self.groups = list(groups or GROUPS)
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown ranker group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
        self.group_index = [GROUPS.index(g) for g in self.groups]  # column of each group in the output
        content = [s for s in item_specs if s.name != "item_id"]
        user = [s for s in user_specs if s.name != "user_id"]
        all_raw = {
            "collaborative": CollaborativeEncoder(tower_dim, tower_embeddings),
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
        # Prior inputs of this model's groups; weights and means are set from data (init_prior).
        self.prior_names = [n for n, g in PRIOR.items() if prior and g in self.groups]
        self.register_buffer("prior_weight", torch.zeros(len(self.prior_names)))
        self.register_buffer("prior_mean", torch.zeros(len(self.prior_names)))
        # Weight of the learned residual for requests with / without known items.
        self.register_buffer("route_scale", torch.ones(2))
        self.routed = ROUTE_INPUT in self.input_names  # without the input: one weight for all rows
        self.prior_index = [GROUPS.index(PRIOR[n]) for n in self.prior_names]
        if self.prior_names:
            nn.init.zeros_(self.fusion[-1].weight)
            nn.init.zeros_(self.fusion[-1].bias)
        # Average group vectors on training data: the "absent" reference for contributions.
        self.register_buffer("baseline", torch.zeros(len(self.groups), group_dim))
        # Eval mode: True returns (score, contributions); False the score alone (one fusion pass
        # instead of 1 + G); "parts" the score and each row's parts for `contributions` (the export's
        # score.onnx, what the pipeline runs on every candidate; contributions are then computed for
        # the returned items only, by explain.onnx). Not a buffer: the weights do not depend on it.
        self.explain: bool | str = True

    @property
    def input_names(self) -> list[str]:
        """Every input this model reads, group by group (the ONNX input table)."""
        return [n for g in self.groups for n in self.raw[g].input_names]

    def group_vectors(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (R, G', H) one vector per signal group of this model (the content group's is
        ``x[CONTENT_VECTOR]`` when given: :meth:`content_vector` of the rows' items)."""
        vecs = []
        for g in self.groups:
            if g == "content" and CONTENT_VECTOR in x:
                vecs.append(x[CONTENT_VECTOR].to(torch.float32))
                continue
            vecs.append(self._group_vector(g, x))
        return torch.stack(vecs, dim=1)

    def _group_vector(self, g: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.raw[g](x)
        if h.shape[-1] == 0:  # a group with no features (e.g. no user attributes)
            h = torch.zeros(h.shape[0], 1, device=h.device)
        return self.act(self.project[g](h))

    @property
    def content_inputs(self) -> list[str]:
        """The item attributes the content group reads ([] without the group, or with no attributes: then
        there is nothing to compute ahead)."""
        return self.raw["content"].input_names if "content" in self.groups else []

    def content_vector(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(R, H) the content group's vector from the rows' item attributes (``content_inputs``)."""
        return self._group_vector("content", x)

    def prior_terms(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (R, P) each prior input's centred term w_j * (x_j - mean_j)."""
        p = torch.stack([x[n].reshape(-1).to(torch.float32) for n in self.prior_names], dim=1)
        return (p - self.prior_mean) * self.prior_weight

    def residual_scale(self, x: dict[str, torch.Tensor], r: int) -> torch.Tensor:
        """-> (R,) the learned residual's weight for each row's route."""
        if not self.routed:
            return self.route_scale[0].expand(r)
        known = x[ROUTE_INPUT].reshape(-1).to(torch.float32)
        return known * self.route_scale[0] + (1 - known) * self.route_scale[1]

    def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.group_vectors(x)  # (R, G', H)
        r, g, d = h.shape
        if self.training:
            s = self.fusion(h.reshape(r, g * d)).squeeze(-1)
            if self.prior_names:
                s = s + self.prior_terms(x).sum(1)
            return s, torch.zeros(r, len(GROUPS), device=h.device)
        scale = self.residual_scale(x, r)
        score = self.fusion(h.reshape(r, g * d)).reshape(r) * scale  # the same ops with explain on or off
        terms = self.prior_terms(x) if self.prior_names else None  # (R, P)
        total = score + terms.sum(1) if terms is not None else score
        if self.explain == "parts":  # the score, and what contributions() needs for any of its rows
            tail = [terms] if terms is not None else []
            return total, torch.cat([h.reshape(r, g * d), scale[:, None], score[:, None], *tail], dim=1)
        if not self.explain:
            return total  # (R,)
        return total, self._contributions(h, scale, score, terms)  # (R,), (R, G)

    @property
    def parts_dim(self) -> int:
        """Width of the ``parts`` rows: group vectors, residual scale, residual score, prior terms."""
        return len(self.groups) * self.baseline.shape[1] + 2 + len(self.prior_names)

    def contributions(self, parts: torch.Tensor) -> torch.Tensor:
        """(R, parts_dim) rows of the ``parts`` output (explain="parts") -> contributions (R, G), the
        same as the full forward pass gives for those rows."""
        g, d = self.baseline.shape
        h = parts[:, : g * d].reshape(-1, g, d)
        scale, score = parts[:, g * d], parts[:, g * d + 1]
        return self._contributions(h, scale, score, parts[:, g * d + 2:] if self.prior_names else None)

    def _contributions(self, h: torch.Tensor, scale: torch.Tensor, score: torch.Tensor,
                       terms: torch.Tensor | None) -> torch.Tensor:
        """Variant j has group j replaced by its baseline; the residual score's drop is group j's part,
        and each prior term counts towards its group. -> (R, G)"""
        r, g, d = h.shape
        eye = torch.eye(g, device=h.device, dtype=h.dtype)[:, None, :, None]  # (G, 1, G, 1)
        variants = h[None] * (1 - eye) + self.baseline[None, None] * eye  # (G, R, G, H)
        occluded = self.fusion(variants.reshape(g * r, g * d)).reshape(g, r) * scale[None]
        contrib = (score[None] - occluded).T  # (R, G')
        full = torch.zeros(r, len(GROUPS), device=h.device, dtype=contrib.dtype)
        full = full.index_copy(1, torch.as_tensor(self.group_index, device=h.device), contrib)
        if terms is not None:
            full = full.index_add(1, torch.as_tensor(self.prior_index, device=h.device), terms)
        return full


class Contributions(nn.Module):
    """A ranker's contributions from its ``parts`` rows (export: ``explain.onnx``, next to ``score.onnx``
    which gives the parts of every candidate: the pipeline explains the returned items with a
    fusion-only graph instead of running the whole model on them)."""

    def __init__(self, ranker: LateFusionRanker):
        super().__init__()
        self.ranker = ranker

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.ranker.contributions(x["parts"])


class ContentVectors(nn.Module):
    """A ranker's content-group vectors from item attributes (export: ``content.onnx``; ``score.onnx``
    then takes them as ``CONTENT_VECTOR`` in place of the attributes)."""

    def __init__(self, ranker: LateFusionRanker):
        super().__init__()
        self.ranker = ranker

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.ranker.content_vector(x)


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


@torch.no_grad()
def init_prior(model: LateFusionRanker, inputs: dict, rows, pop_weight: float) -> None:
    """Scale the prior from training rows: unit weight per std of EASE (of cosine co-occurrence when
    EASE is absent or constant), ``pop_weight`` per std of popularity; centre each on its mean."""
    w = torch.zeros(len(model.prior_names))
    for j, n in enumerate(model.prior_names):
        v = torch.as_tensor(inputs[n][rows], dtype=torch.float64)
        model.prior_mean[j] = v.mean().float()
        std = float(v.std()) if len(v) > 1 else 0.0
        if std > 1e-12:
            w[j] = 1.0 / std
    has = {n: w[j] > 0 for j, n in enumerate(model.prior_names)}
    for j, n in enumerate(model.prior_names):
        if n == "cooc_z" and has.get("ease_z", False):
            w[j] = 0.0  # EASE leads where it exists; cosine stands in for it on large catalogs
        elif n == "pop_all":
            w[j] *= pop_weight
    model.prior_weight.copy_(w)


@torch.no_grad()
def choose_route_scales(model: LateFusionRanker, inputs: dict, labels, valid, ndcg, z: float,
                        grid: tuple[float, ...]) -> dict[str, float]:
    """Pick each route's residual weight on held-out lists (``inputs`` flat over ``labels``' (U, C)).

    ``ndcg(scores (n, C), list_idx) -> (m,)`` per-list NDCG of those lists. A weight from ``grid``
    (``ranking.residual_weights``) is eligible only if its per-list gain over the prior alone is clearly positive (mean - ``z``
    standard errors > 0: a few hundred held-out lists are noisy, and the prior is a strong
    model); the eligible one with the largest mean gain wins, else the route keeps the prior
    (weight 0). A route without held-out lists keeps the prior too.
    Returns {route: chosen weight} and sets ``model.route_scale``.
    """
    model.eval()
    x = {k: torch.as_tensor(v) for k, v in inputs.items()}
    shape = tuple(labels.shape)
    model.route_scale.fill_(0.0)
    prior = model(x)[0].numpy().reshape(shape)
    model.route_scale.fill_(1.0)
    residual = model(x)[0].numpy().reshape(shape) - prior
    known = (x[ROUTE_INPUT].numpy().reshape(shape)[:, 0] > 0) if ROUTE_INPUT in x else np.ones(shape[0], bool)
    chosen = {}
    for j, (route, lists) in enumerate((("known", known), ("cold", ~known))):
        idx = np.flatnonzero(lists)
        base = ndcg(prior[idx], idx) if len(idx) else np.zeros(0)
        chosen[route], best = 0.0, 0.0
        for s in grid if len(base) > 1 else ():
            gain = ndcg(prior[idx] + s * residual[idx], idx) - base
            mean, se = float(gain.mean()), float(gain.std(ddof=1) / np.sqrt(len(gain)))
            if mean - z * se > 0 and mean > best:
                chosen[route], best = s, mean
        model.route_scale[j] = chosen[route]
    return chosen


def build_ranker(features, tower_dim: int, emb_dim: int, group_dim: int, hidden: list[int], dropout: float,
                 prior: bool, tower_embeddings: bool, groups: list[str] | None = None) -> LateFusionRanker:
    """Construct from a fitted :class:`features.encoders.FeatureSet` (``groups``: a subset, e.g. for a student)."""
    card = {**features.cardinalities("item"), **features.cardinalities("user"), **features.cardinalities("context")}
    return LateFusionRanker(features.specs["item"], features.specs["user"], features.specs["context"], card, tower_dim,
                            emb_dim, group_dim, hidden, dropout, groups, prior, tower_embeddings)


def load_ranker(path: str | Path, features) -> LateFusionRanker:
    """A saved ranker (``ranker.pt`` / ``ranker_student.pt``) in eval mode.

    Raises:
        ValueError: the file was written by an older ranker (other inputs or settings); the
            message says how to rebuild it.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    redo = f"{path} was written by an older version of the ranker; re-run `python train.py` (stage ranking / distill)"
    try:
        model = build_ranker(features, ckpt["tower_dim"], **ckpt["model_cfg"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"{redo}: {err}") from err
    return model.eval()
