"""The ``ranking`` stage: train the late-fusion ranker, evaluate the whole pipeline, save artifacts.

Leakage guard: the ranker trains on validation-window lists answered by the retrieval model that
was trained on the train split only, with co-occurrence / popularity from train. The test split is
answered by the served pipeline: the refit retrieval model and statistics over train+valid.
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

from evaluation.baselines import EASE
from evaluation.evaluate import fill_short_lists, metrics_from_topk, select_by_validation
from evaluation.metrics import item_popularity
from evaluation.report import add_section, save_lists, update_metrics
from features.prepare import Prepared, first_times, history_frame
from inference.models import TorchModel
from inference.topk import topk_excluding
from pipeline.artifacts import RunArtifacts, data_seen, make_catalog
from pipeline.pipeline import Pipeline, retrieve_candidates
from pipeline.settings import PipelineSettings
from ranking.features import CandidateFeatures, item_content
from ranking.model import LateFusionRanker, build_ranker
from ranking.rule_config import RuleSet
from ranking.trainer import fit_ranker, labels_for, negative_weights
from stages.retrieval import RetrievalResult

log = logging.getLogger(__name__)


def candidate_features(data: Prepared, result: RetrievalResult, part: str, cfg: DictConfig,
                       ease_content: float) -> CandidateFeatures:
    """Ranker feature builder over the history that is known when answering ``part``."""
    r = result.retrievers[part]
    return CandidateFeatures.from_config(r.store, history_frame(data, part), r.item_embeddings, cfg, ease_content)


def choose_ease_content(data: Prepared, result: RetrievalResult, cfg: DictConfig) -> tuple[float, dict[float, float]]:
    """The weight of item attributes in the prior's EASE, from ``cfg.cooc.ease_content_weights``:
    fit on train, full-ranking NDCG@10 on the validation split (ties: the smaller weight).
    -> (weight, {weight: valid NDCG@10}); one candidate (or no EASE): no fitting, an empty table."""
    grid = sorted(float(w) for w in cfg.cooc.ease_content_weights)  # a tie goes to the first: the smaller
    store = result.retrievers["valid"].store
    if len(grid) == 1 or not cfg.cooc.ease_l2 or len(store.items) > cfg.cooc.ease_max_items:
        return grid[0], {}
    content = item_content(store)
    best, table = select_by_validation(
        lambda w: EASE(cfg.cooc.ease_l2, max_items=cfg.cooc.ease_max_items, side=w * content if w else None),
        grid, store.seen, data.valid, metric="ndcg@10", ks=[10])
    return best, {w: float(v) for w, v in table.items()}


def pipeline_settings(cfg: DictConfig) -> PipelineSettings:
    """The run's :class:`PipelineSettings` (``configs/pipeline/``)."""
    return instantiate(cfg.pipeline)


def build_pipeline(data: Prepared, result: RetrievalResult, part: str, ranker: LateFusionRanker, cfg: DictConfig,
                   rules: RuleSet, ease_content: float) -> Pipeline:
    r = result.retrievers[part]
    settings = pipeline_settings(cfg)
    catalog = make_catalog(r.store, r.item_embeddings, settings.category_feature)
    features = candidate_features(data, result, part, cfg.ranking, ease_content)
    return Pipeline(r, {"ranker": TorchModel(ranker)}, "ranker", features, rules, catalog, settings,
                    rules.make_tracker(len(catalog)))


def save_ranker(art: RunArtifacts, name: str, model: torch.nn.Module, model_cfg, tower_dim: int, saw: dict,
                **info) -> None:
    """Write a ranker (``ranker`` / ``ranker_student``) as :func:`ranking.model.load_ranker` reads it."""
    with art.writing(name, saw=saw, **info) as path:
        torch.save({"state_dict": model.state_dict(), "model_cfg": OmegaConf.to_container(model_cfg, resolve=True),
                    "tower_dim": tower_dim}, path)


def training_lists(data: Prepared, result: RetrievalResult, cfg: DictConfig, ease_content: float,
                   part: str = "valid"):
    """Lists of the ``part`` window (valid, or test at deploy time) answered by the train-only
    retriever over the history known then: inputs (U*C), labels (U, C), valid (U, C), groups (U,)
    the user whose positives each list holds, and weights (U, C) of the training loss (exposure
    negatives, :func:`exposure_weights`; None when ``ranking.impression_negatives`` is off).

    A ``cold_share`` of the lists is repeated as if the user were unknown (no id, no history), so
    the ranker also learns the cold-start route it will face online.
    """
    truth, frame = (data.valid, data.split.valid) if part == "valid" else (data.test, data.split.test)
    feats = candidate_features(data, result, part, cfg.ranking, ease_content)
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    ts = first_times(frame, data)[users]
    rng = np.random.default_rng(cfg.seed)
    cold = rng.choice(len(users), size=int(len(users) * cfg.ranking.cold_share), replace=False)
    query_users = np.concatenate([users, np.full(len(cold), -1)])
    truth_users, ts = np.concatenate([users, users[cold]]), np.concatenate([ts, ts[cold]])
    retriever = result.retrievers[part]
    queries = retriever.embed_requests(query_users, ts)
    scores, items = retrieve_candidates(retriever, feats, query_users, queries, pipeline_settings(cfg))
    inputs = feats.build_inputs(query_users, ts, queries, items, scores)
    labels = labels_for(items, truth[truth_users])
    return inputs, labels, items >= 0, truth_users, exposure_weights(data, items, labels, truth_users, part, cfg.ranking)


def exposure_weights(data: Prepared, items: np.ndarray, labels: np.ndarray, truth_users: np.ndarray, part: str,
                     rc: DictConfig) -> np.ndarray | None:
    """(U, C) loss weights: ``1 + impression_negatives.weight`` for a candidate that was shown to the
    list's user and not acted on (``data.exposure_negatives``, from ``train.py events=``), else 1.

    The validation window's lists use only impressions before the user's test window (the
    in-split test stays unseen); the test window's (deploy) use all. None when switched off.
    """
    neg = rc.get("impression_negatives")
    if not neg or not neg.enabled or data.exposure_negatives is None:
        return None
    frame = data.exposure_negatives
    u, i = data.users.lookup(frame["user_id"].to_numpy()), data.items.lookup(frame["item_id"].to_numpy())
    keep = (u >= 0) & (i >= 0)
    if part == "valid":
        test_from = first_times(data.split.test, data).astype(np.float64)
        test_from[test_from < 0] = np.inf
        keep &= frame["timestamp"].to_numpy() < test_from[np.clip(u, 0, None)]
    shown = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (u[keep], i[keep])),
                          shape=(len(data.users), len(data.items)))
    return negative_weights(items, labels, shown[truth_users], float(neg.weight))


def evaluate_pipeline(pipe: Pipeline, data: Prepared, users: np.ndarray, ts: np.ndarray, ks: list[int],
                      cold: bool = False, ranker: str | None = None) -> dict[str, np.ndarray]:
    """Test lists of ``ranker`` (candidates re-ordered) and ``pipeline`` (+ rules) for the users.

    ``cold``: answer as if the users were unknown (no id, no history): the cold-start route.
    ``ranker``: which of the pipeline's rankers scores the lists (None: its default).
    """
    k = max(ks)
    ranked, ruled = [], []
    for s in range(0, len(users), 256):
        u, t = users[s : s + 256], ts[s : s + 256]
        q = np.full_like(u, -1) if cold else u
        items, scores, contrib = pipe.rank(q, t, ranker=ranker)
        order = np.argsort(-scores, axis=1, kind="stable")
        top = np.take_along_axis(items, order, 1)[:, :k]
        ranked.append(fill_short_lists(top, pipe.store.seen[u]))
        for b in range(len(u)):
            it, _, _, _ = pipe.apply_rules(int(q[b]), items[b], scores[b], contrib[b], k, timestamp=int(t[b]))
            row = np.full(k, -1, dtype=np.int64)
            row[: len(it)] = it
            ruled.append(row)
    ruled_arr = fill_short_lists(np.stack(ruled), pipe.store.seen[users])
    return {"ranker": np.concatenate(ranked), "pipeline": ruled_arr}


@dataclass
class RankingResult:
    """The test-time pipeline, the trained teacher and its training lists (for distillation)."""

    pipeline: Pipeline
    ranker: LateFusionRanker
    lists: tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]  # inputs, labels, valid, groups, weights
    users: np.ndarray  # test users with truth
    timestamps: np.ndarray  # their request times
    ease_content: float  # weight of item attributes in the prior's EASE, chosen on valid


def run_ranking(data: Prepared, cfg: DictConfig, result: RetrievalResult, out_dir: Path, logger, progress: bool) -> RankingResult:
    """Train the ranker, evaluate ranker / pipeline / cold users on test, save artifacts."""
    rc = cfg.ranking
    ease_content, content_table = choose_ease_content(data, result, rc)
    if content_table:
        log.info("EASE item-attribute weight %s chosen on valid NDCG@10 %s", ease_content, content_table)
    update_metrics(out_dir, "ranker", "prior", {"ease_content_weight": ease_content})
    inputs, labels, valid, groups, weights = training_lists(data, result, cfg, ease_content)
    tower_dim = result.retrievers["valid"].item_embeddings.shape[1]
    torch.manual_seed(cfg.seed)  # the initial weights must not depend on what ran before in the process
    ranker = build_ranker(data.features, tower_dim, **rc.model)
    stats = fit_ranker(ranker, inputs, labels, valid, rc, cfg.trainer, logger, out_dir, cfg.seed, progress, groups,
                       weights)
    update_metrics(out_dir, "ranker", "valid_lists", {"ndcg@10": stats["best_val_ndcg@10"]})
    ranker.eval()

    rules = RuleSet.from_config(OmegaConf.to_container(cfg.rules, resolve=True), "configs/rules")
    pipe = build_pipeline(data, result, "test", ranker, cfg, rules, ease_content)
    rules.check_catalog(pipe.catalog)
    ks = list(cfg.eval.ks)
    users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    ts = first_times(data.split.test, data)[users]
    pop, vectors = item_popularity(data.train), data.item_vectors()
    lists = evaluate_pipeline(pipe, data, users, ts, ks)
    for name, topk in lists.items():
        update_metrics(out_dir, name, "test", metrics_from_topk(topk, data.test[users], ks, pop, vectors))
        save_lists(out_dir, name, users, topk)

    # Cold users: a sample of test users answered with no id and no history, next to MostPop.
    rng = np.random.default_rng(cfg.seed)
    cold = np.sort(rng.choice(users, size=min(cfg.eval.cold_users, len(users)), replace=False))
    cts = first_times(data.split.test, data)[cold]
    # keep the main evaluation's exposure state out of the slice
    cold_lists = evaluate_pipeline(pipe.variant(exposure=None), data, cold, cts, ks, cold=True)
    # A truly unknown user has no known history, so nothing is excluded for either.
    mostpop = topk_excluding(np.tile(pipe.store.popularity.astype(np.float32), (len(cold), 1)), None, max(ks))
    for name, topk in {"pipeline": cold_lists["pipeline"], "mostpop": mostpop}.items():
        update_metrics(out_dir, name, "test_cold_users", metrics_from_topk(topk, data.test[cold], ks, pop, vectors))

    add_section(out_dir, "Ranking", (
        f"Late-fusion ranker trained on {stats['train_lists']} validation-window lists of {pipe.settings.n_candidates} "
        f"retrieval candidates ({stats['positives_per_list']:.1f} positives per list), early-stopped on "
        f"{stats['val_lists']} held-out lists (list NDCG@10 {stats['best_val_ndcg@10']:.4f}; the prior alone "
        f"{stats['prior_val_ndcg@10']:.4f}; residual weight per route {stats['route_scale']}) after "
        f"{stats['epochs']} epochs, {stats['fit_seconds']:.1f}s"
        + (f", {stats['exposure_negatives']:,} exposure negatives weighted {rc.impression_negatives.weight} "
           "(shown, not acted on: `train.py events=`)" if weights is not None else "")
        + ". `ranker` = candidates re-ordered by the ranker; "
        f"`pipeline` = ranker + rules ({', '.join(r.name for r in rules.rules)}). Cold users: {len(cold)} test users answered "
        f"as unknown (no id, no history: context and popularity only), row `test_cold_users`. Prior: EASE (l2 "
        f"{rc.cooc.ease_l2}) with item attributes at weight {ease_content}"
        + (" chosen on valid NDCG@10 (" + ", ".join(f"{w}: {v:.4f}" for w, v in content_table.items()) + ")."
           if content_table else ".")))
    art = RunArtifacts(out_dir)
    lists_seen = data_seen(data.split.valid)  # the ranker learns from validation-window lists
    save_ranker(art, "ranker", ranker, rc.model, tower_dim, lists_seen)
    with art.writing("ranker_features", saw=data_seen(history_frame(data, "test")),
                     ease_content_weight=ease_content) as path:
        pipe.features.save(path)
    with art.writing("rules") as path:
        path.write_text(OmegaConf.to_yaml(cfg.rules))
    with art.writing("settings") as path:
        pipe.settings.save(path)
    return RankingResult(pipe, ranker, (inputs, labels, valid, groups, weights), users, ts, ease_content)
