"""Rebuild the served pipeline from a run's ``artifacts/`` directory (no training code involved)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from features.store import FeatureStore
from ranking.features import CandidateFeatures
from ranking.pipeline import Pipeline
from ranking.rule_config import RuleSet
from ranking.model import load_ranker
from ranking.rules import ItemCatalog
from retrieval.index import load_index
from retrieval.retriever import Retriever, TorchModel
from retrieval.towers import load_two_tower

REQUIRED = ("two_tower.pt", "item_embeddings.npy", "items.faiss", "store", "ranker.pt", "ranker_features",
            "rules.yaml", "pipeline.json")


def make_catalog(store, item_embeddings: np.ndarray, category_feature: str | None) -> ItemCatalog:
    """Rules' view of the items; without a category feature every item is uncategorised."""
    if category_feature:
        return ItemCatalog.from_store(store, item_embeddings, category_feature)
    n = len(store.items)
    return ItemCatalog(np.zeros((n, 1), np.int64), ["<none>"], item_embeddings, store.popularity, store.items.ids)


def artifacts_dir(path: str | Path) -> Path:
    """Accept a run directory or its ``artifacts/`` folder; check every piece is there."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"run directory {p} does not exist; pass the output directory of `python train.py`")
    art = p / "artifacts" if (p / "artifacts").is_dir() else p
    missing = [f for f in REQUIRED if not (art / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{art} lacks {missing}; it is not a complete trained run. Run `python train.py` (stage=all or "
            f"stage=ranking) and pass its output directory.")
    return art


def load_pipeline(path: str | Path, user_encoder=None, ranker=None) -> Pipeline:
    """The pipeline of a trained run.

    Args:
        path: run directory or its artifacts folder.
        user_encoder, ranker: optional callables (numpy dict in, numpy out) replacing the PyTorch
            models, e.g. onnxruntime sessions in the Triton models.
    """
    art = artifacts_dir(path)
    meta = json.loads((art / "pipeline.json").read_text())
    missing = {"n_candidates", "max_k", "category_feature", "cold_popular_share", "cooc_share"} - set(meta)
    if missing:
        raise FileNotFoundError(f"{art / 'pipeline.json'} lacks {sorted(missing)}: the run was made by an older "
                                f"version; re-run `python train.py`.")
    store = FeatureStore.load(art / "store")
    emb = np.load(art / "item_embeddings.npy")
    index, _ = load_index(art / "items.faiss")
    if user_encoder is None:
        user_encoder = TorchModel(load_two_tower(art / "two_tower.pt", store.features).user_tower)
    if ranker is None:
        ranker = TorchModel(load_ranker(art / "ranker.pt", store.features))
    retriever = Retriever(user_encoder, index, store, emb)
    rules = RuleSet.from_config(OmegaConf.to_container(OmegaConf.load(art / "rules.yaml")), str(art / "rules.yaml"))
    catalog = make_catalog(store, emb, meta["category_feature"])
    features = CandidateFeatures.load(art / "ranker_features", store)
    return Pipeline(retriever, ranker, features, rules, catalog, meta["n_candidates"], meta["max_k"],
                    meta["cold_popular_share"], meta["cooc_share"], rules.make_tracker(len(catalog)))
