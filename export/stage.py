"""The ``export`` stage: a trained run's artifacts -> ONNX models -> a Triton model repository.

Layout written into ``cfg.export.repository`` (committed files come from ``triton_repo/``)::

    user_tower/ item_tower/ ranker/   config.pbtxt (generated), 1/model.onnx, 1/model.py (committed)
    ranker_student/                   all generated, when the run has a distilled student
    ranker_int8/ ranker_student_int8/ all generated: int8 dynamic quantization of each ranker (export.int8)
    retrieval/                        config.pbtxt, 1/model.py (committed); 1/items.faiss, item_ids.json ...
    recommend/                        config.pbtxt, 1/model.py (committed); 1/artifacts/, specs.json,
                                      item_titles.json, rankers.json (default ranker, the others a request may name)
    export.json                       what was exported from which run, parity and int8 quality results

Every ONNX model is checked against PyTorch on real and random inputs before it is written into
the repository's config; a mismatch fails the export. Quantized rankers are compared with their fp32
model on real candidate lists (score difference, top-10 agreement) and the figures are recorded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from export.config import ROOT, export_config
from export.onnx_export import check_parity, example_inputs, export_onnx
from export.quantize import int8_name, quantization_report, quantize_ranker
from export.spec import ModelSpec, item_tower_spec, ranker_spec, user_tower_spec
from export.triton_config import onnx_model_config
from features.store import FeatureStore
from ranking.load import artifacts_dir, load_pipeline
from ranking.model import load_ranker
from ranking.pipeline import retrieve_candidates
from retrieval.retriever import TorchModel
from retrieval.towers import load_two_tower

log = logging.getLogger(__name__)
TEMPLATE = ROOT / "triton_repo"
# Triton name -> checkpoint in artifacts/; a student is exported when the distill stage wrote one.
RANKERS = {"ranker": "ranker.pt", "ranker_student": "ranker_student.pt"}
GENERATED = ("user_tower/1/model.onnx", "item_tower/1/model.onnx", "ranker/1/model.onnx", "recommend/1/specs.json",
             "recommend/1/rankers.json", "recommend/1/artifacts/pipeline.json", "retrieval/1/items.faiss")


def copy_template(repo: Path) -> None:
    """Committed ``config.pbtxt`` / ``model.py`` files of triton_repo/ into another repository path."""
    if repo.resolve() == TEMPLATE.resolve():
        return
    for src in [*TEMPLATE.glob("*/config.pbtxt"), *TEMPLATE.glob("*/1/model.py")]:
        dst = repo / src.relative_to(TEMPLATE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def load_models(art: Path, store: FeatureStore) -> dict[str, tuple[torch.nn.Module, ModelSpec]]:
    """Triton model name -> (PyTorch module in eval mode, its table) for every model of the run."""
    towers = load_two_tower(art / "two_tower.pt", store.features)
    dim = int(np.load(art / "item_embeddings.npy", mmap_mode="r").shape[1])
    models = {
        "user_tower": (towers.user_tower, user_tower_spec(store, towers.user_tower.input_names, dim)),
        "item_tower": (towers.item_tower, item_tower_spec(store, towers.item_tower.input_names, dim)),
    }
    for name, checkpoint in RANKERS.items():
        if (art / checkpoint).exists():
            ranker = load_ranker(art / checkpoint, store.features)
            models[name] = (ranker, ranker_spec(store, ranker.input_names, dim, name))
    return models


def parity_inputs(art: Path, store: FeatureStore, user_tower, ranker, rows: int) -> dict[str, dict[str, np.ndarray]]:
    """Real inputs: known users at their last interaction time, catalog items, their candidates' ranker rows.

    Returns:
        ``user_tower``, ``item_tower`` and ``ranker`` inputs (every ranker input; a student reads a subset).
    """
    users = np.arange(min(rows, len(store.users)), dtype=np.int64)
    ts = np.where(store.last_ts[users] >= 0, store.last_ts[users], 1_700_000_000)
    pipe = load_pipeline(art, user_encoder=TorchModel(user_tower), ranker=TorchModel(ranker))
    n = max(2, rows // pipe.n_candidates + 1)  # enough requests for `rows` ranker rows
    scores, items, queries = pipe.retriever.retrieve(users[:n], ts[:n], pipe.n_candidates)
    ranker_x = pipe.features.build_inputs(users[:n], ts[:n], queries, items, scores)
    return {
        "user_tower": store.user_inputs(users, ts),
        "item_tower": {k: v[:rows] for k, v in store.item_table.items()},
        "ranker": {k: v[:rows] for k, v in ranker_x.items()},
    }


def ranker_lists(art: Path, n_lists: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Whole candidate lists of real requests, built as the served pipeline builds them.

    Known users at their last interaction time, candidates from
    :func:`ranking.pipeline.retrieve_candidates` (index + co-occurrence, ``n_candidates`` each).

    Returns:
        Every ranker input for ``L * C`` rows (list-major) and ``valid`` (L, C): real candidates.
    """
    pipe = load_pipeline(art)
    store = pipe.store
    users = np.arange(min(n_lists, len(store.users)), dtype=np.int64)
    ts = np.where(store.last_ts[users] >= 0, store.last_ts[users], 1_700_000_000)
    scores, items, queries = retrieve_candidates(pipe.retriever, pipe.features, users, ts, pipe.n_candidates,
                                                 pipe.cold_popular_share, pipe.cooc_share)
    return pipe.features.build_inputs(users, ts, queries, items, scores), items >= 0


def served_rankers(models: dict, int8: bool) -> list[str]:
    """Triton names of the rankers a ``recommend`` request may name, teacher first."""
    names = [n for n in RANKERS if n in models]
    return names + [int8_name(n) for n in names] if int8 else names


def check_default_ranker(default: str, available: list[str]) -> None:
    """Raises ValueError when ``export.ranker`` names a ranker this export does not write."""
    if default not in available:
        raise ValueError(f"export.ranker={default!r} is not exported by this run; known: {', '.join(available)} "
                         "(ranker_student* need a run with artifacts/ranker_student.pt, *_int8 need export.int8.enabled)")


def code_bounds(store: FeatureStore) -> dict[str, int]:
    """Embedding-table sizes of every integer input (random parity inputs stay in range)."""
    f = store.features
    return {**f.cardinalities("user"), **f.cardinalities("item"), **f.cardinalities("context"),
            "history": f.cardinalities("item")["item_id"]}


def write_titles(art: Path, cfg: DictConfig, path: Path) -> bool:
    """Item id -> display title, from ``artifacts/item_titles.json`` or else the run's dataset.

    Returns:
        Whether titles were written (a catalog without a ``title`` column has none).
    """
    if (art / "item_titles.json").exists():
        shutil.copy2(art / "item_titles.json", path)
        return True
    dataset = json.loads((art / "pipeline.json").read_text()).get("dataset")
    if cfg.get("data") is None or cfg.data.get("name") != dataset:
        log.warning("no item titles: %s lacks item_titles.json and cfg.data is not the run's dataset %r", art, dataset)
        return False
    from features.prepare import load_dataset  # only for runs made before titles were an artifact

    items = load_dataset(cfg.data).items
    if "title" not in items.columns:
        return False
    titles = {str(i): ("" if t is None or t != t else str(t)) for i, t in zip(items["item_id"], items["title"])}
    path.write_text(json.dumps(titles))
    return True


def run_export(cfg: DictConfig, out_dir: Path) -> Path:
    """Export a finished run (``out_dir`` holds ``artifacts/``) into a Triton model repository.

    Args:
        cfg: the composed config; reads ``cfg.export`` (configs/export/default.yaml).
        out_dir: the run directory.

    Returns:
        The model repository path.
    """
    ecfg = export_config(cfg)
    started = time.time()
    art = artifacts_dir(out_dir)
    repo = Path(ecfg.repository)
    store = FeatureStore.load(art / "store")
    models = load_models(art, store)
    int8 = bool(ecfg.int8.enabled)
    rankers = served_rankers(models, int8)
    check_default_ranker(str(ecfg.ranker), rankers)
    (repo / "export.json").unlink(missing_ok=True)  # a failed export must not look complete
    copy_template(repo)
    meta = json.loads((art / "pipeline.json").read_text())
    real = parity_inputs(art, store, models["user_tower"][0], models["ranker"][0], int(ecfg.parity_rows))
    for name in [*RANKERS, *map(int8_name, RANKERS)]:  # generated-only models: present when this run has them
        if not (TEMPLATE / name).exists():
            shutil.rmtree(repo / name, ignore_errors=True)
    parity, specs = {}, []
    for name, (module, spec) in models.items():
        x = real["ranker" if name in RANKERS else name]
        path = export_onnx(module, spec, repo / name / "1" / "model.onnx", x, int(ecfg.opset))
        random_x = example_inputs(spec, int(ecfg.parity_rows), seed=1, high=code_bounds(store))
        parity[name] = max(check_parity(module, spec, path, v, float(ecfg.parity_atol)) for v in (x, random_x))
        write_onnx_model(repo, spec, ecfg, int(meta["n_candidates"]))
        specs.append(spec)
        log.info("%s: max |PyTorch - onnxruntime| = %.2e", name, parity[name])
    quality = quantize_rankers(repo, art, models, ecfg, int(meta["n_candidates"]), specs) if int8 else {}
    write_serving_files(repo, art, cfg, specs, int(meta["max_k"]))
    (repo / "recommend" / "1" / "rankers.json").write_text(json.dumps({"default": ecfg.ranker, "rankers": rankers}))
    (repo / "export.json").write_text(json.dumps({
        "run_dir": str(Path(out_dir).resolve()), "artifacts": str(art.resolve()), "flavour": ecfg.flavour,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 1),
        "ranker": ecfg.ranker, "rankers": rankers, "parity_max_abs_diff": parity, "int8": quality}, indent=2))
    log.info("Triton model repository (%s flavour): %s; recommend ranks with %s by default (known: %s)",
             ecfg.flavour, repo, ecfg.ranker, ", ".join(rankers))
    return repo


def write_onnx_model(repo: Path, spec: ModelSpec, ecfg: DictConfig, n_candidates: int) -> None:
    """``config.pbtxt`` (and, for a generated ranker, the python runner) of one exported ONNX model."""
    base = spec.name.removesuffix("_int8")
    max_batch = int(ecfg.max_batch_size.get(base) or ecfg.max_batch_size["ranker"])
    if base in RANKERS:  # one recommend request sends n_candidates rows
        max_batch = max(max_batch, n_candidates)
    (repo / spec.name / "config.pbtxt").write_text(onnx_model_config(
        spec, ecfg.flavour, max_batch, int(ecfg.max_queue_delay_us), int(ecfg.instances), int(ecfg.ort_threads)))
    if not (repo / spec.name / "1" / "model.py").exists():  # generated rankers: the ranker's python runner
        shutil.copy2(TEMPLATE / "ranker" / "1" / "model.py", repo / spec.name / "1" / "model.py")


def quantize_rankers(repo: Path, art: Path, models: dict, ecfg: DictConfig, n_candidates: int,
                     specs: list[ModelSpec]) -> dict[str, dict]:
    """``<ranker>_int8`` next to every exported ranker; appends their tables to ``specs``.

    Returns:
        Quantized model name -> :func:`export.quantize.quantization_report` on real candidate lists.

    Raises:
        AssertionError: a quantized ranker keeps less than ``export.int8.min_top10_overlap`` of the
            fp32 ranker's top-10 (do not serve it).
    """
    q = ecfg.int8
    lists, valid = ranker_lists(art, int(q.lists))
    quality = {}
    for name in [n for n in RANKERS if n in models]:
        spec = dataclasses.replace(models[name][1], name=int8_name(name))  # same tensors, new Triton name
        src = repo / name / "1" / "model.onnx"
        dst = quantize_ranker(src, repo / spec.name / "1" / "model.onnx", bool(q.per_channel))
        quality[spec.name] = quantization_report(spec, src, dst, lists, valid, 10)
        log.info("%s vs %s: %s", spec.name, name, quality[spec.name])
        if quality[spec.name]["top10_overlap"] < float(q.min_top10_overlap):
            raise AssertionError(f"{spec.name} keeps {quality[spec.name]['top10_overlap']:.1%} of {name}'s top-10 on "
                                 f"real lists < export.int8.min_top10_overlap={q.min_top10_overlap}; set "
                                 "export.int8.enabled=false or per_channel=true")
        write_onnx_model(repo, spec, ecfg, n_candidates)
        specs.append(spec)
    return quality


def write_serving_files(repo: Path, art: Path, cfg: DictConfig, specs: list[ModelSpec], max_k: int) -> None:
    """The python models' generated files: run artifacts, the tensor table, titles, the FAISS index."""
    version = repo / "recommend" / "1"
    shutil.rmtree(version / "artifacts", ignore_errors=True)
    shutil.copytree(art, version / "artifacts")
    (version / "specs.json").write_text(json.dumps([s.to_dict() for s in specs], indent=1))
    (version / "item_titles.json").unlink(missing_ok=True)
    write_titles(art, cfg, version / "item_titles.json")
    version = repo / "retrieval" / "1"
    for name in ("items.faiss", "items.faiss.json"):
        shutil.copy2(art / name, version / name)
    shutil.copy2(art / "store" / "items.json", version / "item_ids.json")
    (version / "retrieval.json").write_text(json.dumps({"max_k": max_k}))


def is_exported(repo: Path, run_dir: Path, flavour: str) -> bool:
    """True when ``repo`` holds a complete ``flavour`` export of ``run_dir`` (per its export.json)."""
    manifest = Path(repo) / "export.json"
    if not manifest.exists() or any(not (Path(repo) / f).exists() for f in GENERATED):
        return False
    m = json.loads(manifest.read_text())
    return m.get("run_dir") == str(Path(run_dir).resolve()) and m.get("flavour") == flavour


def same_choices(repo: Path, ecfg: DictConfig) -> bool:
    """The repository's export.json has this config's default ranker and int8 setting."""
    m = json.loads((repo / "export.json").read_text())
    return m.get("ranker") == ecfg.ranker and bool(m.get("int8")) == bool(ecfg.int8.enabled)


def export_if_needed(cfg: DictConfig, run_dir: Path) -> Path:
    """:func:`run_export` unless the configured repository already holds this run's export."""
    ecfg = export_config(cfg)
    repo = Path(ecfg.repository)
    if is_exported(repo, run_dir, ecfg.flavour) and same_choices(repo, ecfg):
        log.info("%s already holds the export of %s", ecfg.repository, run_dir)
        return Path(ecfg.repository)
    return run_export(cfg, run_dir)
