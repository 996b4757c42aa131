"""The ``export`` stage: a trained run's artifacts -> ONNX models -> a Triton model repository.

Layout written into ``cfg.export.repository`` (committed files come from ``triton_repo/``)::

    user_tower/ item_tower/ ranker/   config.pbtxt (generated), 1/model.onnx, 1/model.py (committed)
    ranker_student/                   all generated, when the run has a distilled student
    retrieval/                        config.pbtxt, 1/model.py (committed); 1/items.faiss, item_ids.json ...
    recommend/                        config.pbtxt, 1/model.py (committed); 1/artifacts/, specs.json, item_titles.json
    export.json                       what was exported from which run, and the parity results

Every ONNX model is checked against PyTorch on real and random inputs before it is written into
the repository's config; a mismatch fails the export.
"""

from __future__ import annotations

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
from export.spec import ModelSpec, item_tower_spec, ranker_spec, user_tower_spec
from export.triton_config import onnx_model_config
from features.store import FeatureStore
from ranking.load import artifacts_dir, load_pipeline
from ranking.model import load_ranker
from retrieval.retriever import TorchModel
from retrieval.towers import load_two_tower

log = logging.getLogger(__name__)
TEMPLATE = ROOT / "triton_repo"
# Triton name -> checkpoint in artifacts/; a student is exported when the distill stage wrote one.
RANKERS = {"ranker": "ranker.pt", "ranker_student": "ranker_student.pt"}
GENERATED = ("user_tower/1/model.onnx", "item_tower/1/model.onnx", "ranker/1/model.onnx", "recommend/1/specs.json",
             "recommend/1/artifacts/pipeline.json", "retrieval/1/items.faiss")


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
    (repo / "export.json").unlink(missing_ok=True)  # a failed export must not look complete
    copy_template(repo)
    store = FeatureStore.load(art / "store")
    meta = json.loads((art / "pipeline.json").read_text())
    models = load_models(art, store)
    real = parity_inputs(art, store, models["user_tower"][0], models["ranker"][0], int(ecfg.parity_rows))
    shutil.rmtree(repo / "ranker_student", ignore_errors=True)  # only a run with a student has one
    parity = {}
    for name, (module, spec) in models.items():
        x = real["ranker" if name in RANKERS else name]
        path = export_onnx(module, spec, repo / name / "1" / "model.onnx", x, int(ecfg.opset))
        random_x = example_inputs(spec, int(ecfg.parity_rows), seed=1, high=code_bounds(store))
        parity[name] = max(check_parity(module, spec, path, v, float(ecfg.parity_atol)) for v in (x, random_x))
        max_batch = int(ecfg.max_batch_size.get(name) or ecfg.max_batch_size["ranker"])
        if name in RANKERS:  # one recommend request sends n_candidates rows
            max_batch = max(max_batch, int(meta["n_candidates"]))
        (repo / name / "config.pbtxt").write_text(onnx_model_config(
            spec, ecfg.flavour, max_batch, int(ecfg.max_queue_delay_us), int(ecfg.instances), int(ecfg.ort_threads)))
        if not (repo / name / "1" / "model.py").exists():  # ranker_student: the ranker's python runner
            shutil.copy2(TEMPLATE / "ranker" / "1" / "model.py", repo / name / "1" / "model.py")
        log.info("%s: max |PyTorch - onnxruntime| = %.2e", name, parity[name])
    write_serving_files(repo, art, cfg, [spec for _, spec in models.values()], int(meta["max_k"]))
    (repo / "export.json").write_text(json.dumps({
        "run_dir": str(Path(out_dir).resolve()), "artifacts": str(art.resolve()), "flavour": ecfg.flavour,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started, 1),
        "parity_max_abs_diff": parity}, indent=2))
    log.info("Triton model repository (%s flavour): %s", ecfg.flavour, repo)
    return repo


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


def export_if_needed(cfg: DictConfig, run_dir: Path) -> Path:
    """:func:`run_export` unless the configured repository already holds this run's export."""
    ecfg = export_config(cfg)
    if is_exported(Path(ecfg.repository), run_dir, ecfg.flavour):
        log.info("%s already holds the export of %s", ecfg.repository, run_dir)
        return Path(ecfg.repository)
    return run_export(cfg, run_dir)
