"""The ``retrieval`` stage: train the towers, build the FAISS index, evaluate candidates, save artifacts.

Artifacts (through :class:`pipeline.artifacts.RunArtifacts`): the towers, the catalog's item
embeddings, the FAISS index, and the feature store built from train+valid: what the batch command
and serving load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from evaluation.evaluate import fill_short_lists, metrics_from_topk
from evaluation.metrics import item_popularity, ranking_metrics
from inference.topk import topk_excluding
from evaluation.report import add_section, save_lists, update_metrics
from features.prepare import Prepared, first_times, history_frame
from features.store import FeatureStore
from pipeline.artifacts import RunArtifacts, data_seen
from retrieval.index import build_index, save_index
from retrieval.retriever import Retriever
from retrieval.towers import TwoTower, item_embeddings
from retrieval.trainer import fit_two_tower

log = logging.getLogger(__name__)
MODEL_NAME = "two_tower"





def candidate_lists(retriever: Retriever, data: Prepared, part: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Retrieve k candidates for every user with truth in ``part``. -> (users, items (U, k))."""
    truth = data.valid if part == "valid" else data.test
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    part_frame = data.split.valid if part == "valid" else data.split.test
    ts = first_times(part_frame, data)[users]
    _, items, _ = retriever.retrieve(users, ts, k)
    return users, fill_short_lists(items, retriever.store.seen[users])



def cold_item_slice(data: Prepared, users: np.ndarray, lists: dict[str, np.ndarray], ks: list[int]) -> tuple[str, dict]:
    """How often held-out (never trained on) items are retrieved for the users who took them."""
    cold = data.cold_item_index()
    mask = sp.csr_matrix((np.ones(len(cold), dtype=np.float32), (cold, cold)), shape=(data.n_items, data.n_items))
    cold_truth = (data.test[users] @ mask).tocsr()
    keep = np.diff(cold_truth.indptr) > 0
    rows = ["| model | " + " | ".join(f"cold recall@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    out = {}
    for name, topk in lists.items():
        m = ranking_metrics(topk[keep], cold_truth[keep], ks)
        out[name] = m
        rows.append(f"| {name} | " + " | ".join(f"{m[f'recall@{k}']:.4f}" for k in ks) + " |")
    return (f"{len(cold)} items held out of training entirely; "
            f"{int(keep.sum())} test users interacted with them. Recall of those items among each user's "
            f"candidates:\n\n" + "\n".join(rows)), out


def save_towers(art: RunArtifacts, model: TwoTower, emb: np.ndarray, index, index_cfg, rc: DictConfig, saw: dict,
                **info) -> None:
    """Write the towers, their item embeddings and the index over them (``saw``: what the towers
    trained on; ``rc``: the retrieval config)."""
    with art.writing("two_tower", saw=saw, **info) as path:
        torch.save({"state_dict": model.state_dict(), "model_cfg": OmegaConf.to_container(rc.model, resolve=True),
                    "history_len": rc.history_len}, path)
    with art.writing("item_embeddings", saw=saw, **info) as path:
        np.save(path, emb)
    with art.writing("index", saw=saw, factory=index_cfg.factory, **info) as path:
        save_index(index, index_cfg, path)


def refit_two_tower(data: Prepared, cfg: DictConfig, stats: dict, logger, out_dir: Path,
                    progress: bool) -> tuple[TwoTower, dict]:
    """Retrain from scratch on train+valid for the best epoch count found on valid."""
    if cfg.retrieval.refit.mode != "scratch":
        raise ValueError(f"retrieval.refit.mode={cfg.retrieval.refit.mode!r}; use none or scratch")
    return fit_two_tower(data, cfg.retrieval, cfg.trainer, logger, out_dir, cfg.seed, progress,
                         refit_epochs=stats["best_epochs"])


@dataclass
class RetrievalResult:
    """What later stages need: the served model and, per split part, a retriever over the history
    known when answering it (train for ``valid``, train+valid for ``test`` and serving). The model
    never saw the validation split, so the ranker can train on its validation candidates."""

    model: TwoTower
    retrievers: dict[str, Retriever]
    stats: dict
    refit: TwoTower | None = None  # retrained on train+valid for the chosen epochs (retrieval.refit.mode=scratch)


def _evaluate(retriever: Retriever, data: Prepared, part: str, ks: list[int], out_dir: Path, name: str) -> dict:
    """Candidate metrics of one retriever on valid or test (test lists kept for the plots)."""
    users, items = candidate_lists(retriever, data, part, max(ks))
    truth = (data.valid if part == "valid" else data.test)[users]
    m = metrics_from_topk(items, truth, ks, item_popularity(data.train), data.item_vectors())
    update_metrics(out_dir, name, part, m)
    if part == "test":
        save_lists(out_dir, name, users, items)
    log.info("%s %s: %s", name, part, {k: round(v, 4) for k, v in m.items() if k.startswith(("ndcg@10", "recall"))})
    return m


def run_retrieval(data: Prepared, cfg: DictConfig, out_dir: Path, logger, progress: bool) -> RetrievalResult:
    """Train, index, evaluate and save; returns the models and retrievers of each split part."""
    rc = cfg.retrieval
    if rc.refit.mode not in ("none", "scratch"):  # fail before training, not after
        raise ValueError(f"retrieval.refit.mode={rc.refit.mode!r}; use none or scratch")
    model, stats = fit_two_tower(data, rc, cfg.trainer, logger, out_dir, cfg.seed, progress)
    index_cfg = instantiate(cfg.index)
    ks = list(rc.eval_ks)
    pop = item_popularity(data.train)
    result = RetrievalResult(model, {}, stats)
    emb = item_embeddings(model, data.item_table)
    index = build_index(emb, index_cfg, cfg.seed)
    for part in ("valid", "test"):
        # One model, trained on train only, answers both parts (the ranker trains on its validation
        # candidates, so the served pipeline keeps it); only the known history grows.
        store = FeatureStore.build(data, history_frame(data, part), rc.history_len)
        retriever = Retriever(model.user_tower, index, store, emb)
        _evaluate(retriever, data, part, ks, out_dir, MODEL_NAME)
        result.retrievers[part] = retriever
    if rc.refit.mode != "none":
        # The baselines' protocol: hyperparameters (epochs) chosen on valid, refit on train+valid.
        refit, refit_stats = refit_two_tower(data, cfg, stats, logger, out_dir, progress)
        stats["refit_seconds"] = refit_stats["fit_seconds"]
        result.refit = refit  # deploy.retrain_towers serves these (the same training: not done twice)
        r_emb = item_embeddings(refit, data.item_table)
        r = Retriever(refit.user_tower, build_index(r_emb, index_cfg, cfg.seed), result.retrievers["test"].store, r_emb)
        _evaluate(r, data, "test", ks, out_dir, MODEL_NAME + "_refit")
    update_metrics(out_dir, MODEL_NAME, "train", {"samples_per_second": stats["samples_per_second"],
                                                  "fit_seconds": stats["fit_seconds"] + stats.get("refit_seconds", 0.0),
                                                  "epochs": stats["epochs"]})
    notes = (f"Two-tower: {stats['epochs']} epochs in {stats['fit_seconds']:.1f}s "
             f"({stats['samples_per_second']:.0f} training samples/s), best {rc.early_stopping.monitor} "
             f"{stats.get('best_' + rc.early_stopping.monitor, float('nan')):.4f}; index `{index_cfg.factory}`. "
             f"`{MODEL_NAME}` is the served model (trained on train; the ranker learns from its validation "
             f"candidates); `{MODEL_NAME}_refit` follows the baselines' protocol (retrained on train+valid for "
             f"the same number of epochs) and is reported for comparison only.")
    if len(data.split.cold_items):
        users, items = candidate_lists(retriever, data, "test", max(ks))
        rng = np.random.default_rng(cfg.seed)
        exclude = retriever.store.seen[users]
        random_lists = topk_excluding(rng.random((len(users), data.n_items)), exclude, max(ks))
        pop_lists = topk_excluding(np.tile(pop, (len(users), 1)), exclude, max(ks))
        text, cold = cold_item_slice(data, users, {MODEL_NAME: items, "random": random_lists, "mostpop": pop_lists}, ks)
        for name, m in cold.items():
            update_metrics(out_dir, name, "test_cold_items", {k: v for k, v in m.items() if k.startswith("recall")})
        add_section(out_dir, "Cold items (retrieval)", text)
    add_section(out_dir, "Retrieval", notes)
    art = RunArtifacts(out_dir)
    save_towers(art, model, emb, index, index_cfg, rc, data_seen(data.split.train))  # never saw valid or test
    with art.writing("store", saw=data_seen(history_frame(data, "test"))) as path:
        retriever.store.save(path)
    return result
