"""The ``distill`` stage: the student ranker from the teacher's scores, gated, evaluated like the teacher."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from evaluation.evaluate import metrics_from_topk
from evaluation.metrics import item_popularity
from evaluation.report import add_section, read_metrics, save_lists, update_metrics
from features.prepare import Prepared
from inference.models import TorchModel
from pipeline.artifacts import RunArtifacts, data_seen
from ranking.cost import count_flops, torch_latency_ms
from ranking.distill import distill
from ranking.model import LateFusionRanker, build_ranker
from stages.ranking import RankingResult, evaluate_pipeline, save_ranker


def distill_student(data: Prepared, cfg: DictConfig, teacher: LateFusionRanker, lists: tuple, tower_dim: int,
                    out_dir: Path, logger, progress: bool) -> tuple[LateFusionRanker, dict]:
    """The configured student distilled from ``teacher`` on its training ``lists`` (the teacher's scores,
    unweighted); raises :class:`ranking.distill.DistillGateError` below the gate. -> (student in eval mode, stats)"""
    inputs, labels, valid, groups, _ = lists
    torch.manual_seed(cfg.seed)
    student = build_ranker(data.features, tower_dim, **OmegaConf.to_container(cfg.distill.model, resolve=True))
    stats = distill(teacher, student, inputs, labels, valid, cfg.distill, cfg.ranking, cfg.trainer, logger,
                    out_dir, cfg.seed, progress, groups)
    return student.eval(), stats


def run_distill(data: Prepared, cfg: DictConfig, ranking: RankingResult, out_dir: Path, logger, progress: bool) -> LateFusionRanker:
    """Distil the teacher into the configured student, gate it, evaluate it like the teacher."""
    inputs = ranking.lists[0]
    tower_dim = ranking.pipeline.retriever.item_embeddings.shape[1]
    student, stats = distill_student(data, cfg, ranking.ranker, ranking.lists, tower_dim, out_dir, logger, progress)
    ks = list(cfg.eval.ks)
    pop, vectors = item_popularity(data.train), data.item_vectors()
    pipe = ranking.pipeline.variant(rankers={"ranker_student": TorchModel(student)}, default_ranker="ranker_student",
                                    exposure=None)
    lists = evaluate_pipeline(pipe, data, ranking.users, ranking.timestamps, ks)
    m = metrics_from_topk(lists["ranker"], data.test[ranking.users], ks, pop, vectors)
    update_metrics(out_dir, "student", "test", m)
    save_lists(out_dir, "student", ranking.users, lists["ranker"])
    # 500 candidates of real requests: latency, size, FLOPs of both rankers.
    rows = {k: v[:500] for k, v in inputs.items()}
    cost = {}
    for name, model in (("teacher", ranking.ranker), ("student", student)):
        cost[name] = {"params": sum(p.numel() for p in model.parameters()),
                      "flops_500": count_flops(model, rows), "torch_ms_500": torch_latency_ms(model, rows)}
        update_metrics(out_dir, name if name == "student" else "ranker", "cost", cost[name])
    teacher = read_metrics(out_dir)
    kept = {k: m[k] / teacher[f"ranker/test/{k}"] for k in ("ndcg@10", "recall@10") if teacher.get(f"ranker/test/{k}")}
    update_metrics(out_dir, "student", "retained", kept)
    add_section(out_dir, "Distillation", (
        f"Student ranker (groups {', '.join(student.groups)}; {cost['student']['params']:,} parameters vs "
        f"{cost['teacher']['params']:,}) distilled from the teacher's scores (MSE + listwise KL at T="
        f"{cfg.distill.temperature}, label weight {cfg.distill.label_weight}) in {stats['epochs']} epochs. "
        f"Held-out lists NDCG@10: student {stats['student_val_ndcg@10']:.4f} vs teacher "
        f"{stats['teacher_val_ndcg@10']:.4f} ({stats['retained']:.1%} retained; gate "
        f"{cfg.distill.gate.min_retained:.0%}). Test: NDCG@10 {kept.get('ndcg@10', float('nan')):.1%} and Recall@10 "
        f"{kept.get('recall@10', float('nan')):.1%} of the teacher's. 500 candidates: "
        f"{cost['student']['flops_500'] / 1e6:.1f} vs {cost['teacher']['flops_500'] / 1e6:.1f} MFLOPs, PyTorch "
        f"{cost['student']['torch_ms_500']:.2f} vs {cost['teacher']['torch_ms_500']:.2f} ms."))
    save_ranker(RunArtifacts(out_dir), "ranker_student", student, cfg.distill.model, tower_dim,
                data_seen(data.split.valid))
    return student
