"""One owner of a run's files: every name, its save and load, and a manifest of what each saw.

Layout of ``<run>/artifacts/`` (the names live here and nowhere else)::

    manifest.json          schema version, status, code version, config, and per artifact: when it
                           was written and which interactions it saw (counts, time range)
    two_tower.pt           tower weights + build config       item_embeddings.npy   (N, D) catalog vectors
    items.faiss(.json)     the FAISS index                    store/                feature store
    ranker.pt              the late-fusion ranker             ranker_student.pt     the distilled student
    ranker_features/       co-occurrence / EASE tables        rules.yaml            the business rules
    pipeline.json          :class:`PipelineSettings`          item_titles.json      display titles
    interactions.parquet   every interaction the served state (store, ranker_features) was built from

Every reader of a run (the Triton models, the batch command, bench, export, the demo) goes
through :class:`RunArtifacts`; the stages write through it. An artifact counts only once it is
recorded in the manifest after its file was written, so a run killed mid-way is visibly
incomplete instead of half-loaded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from features.schema import DataError
from features.store import FeatureStore
from inference.models import TorchModel
from pipeline.pipeline import Pipeline
from pipeline.settings import PipelineSettings
from ranking.features import CandidateFeatures
from ranking.rule_config import RuleSet
from ranking.rules import ItemCatalog
from retrieval.index import load_index
from retrieval.retriever import Retriever

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FILES = {
    "two_tower": "two_tower.pt",
    "item_embeddings": "item_embeddings.npy",
    "index": "items.faiss",
    "store": "store",
    "ranker": "ranker.pt",
    "ranker_student": "ranker_student.pt",
    "ranker_features": "ranker_features",
    "rules": "rules.yaml",
    "settings": "pipeline.json",
    "item_titles": "item_titles.json",
    "interactions": "interactions.parquet",
}
# What the served pipeline cannot do without (the student and titles are optional).
PIPELINE = ("two_tower", "item_embeddings", "index", "store", "ranker", "ranker_features", "rules", "settings")
RANKERS = {"ranker": "ranker", "ranker_student": "ranker_student"}  # Triton name -> artifact


def code_version() -> str:
    """``git describe`` of this checkout, or the installed package version outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybrid-recommender")
    except PackageNotFoundError:
        return "unknown"


def data_seen(frame: pd.DataFrame) -> dict:
    """What an artifact saw of an interactions table: counts and the time range (Unix seconds)."""
    if len(frame) == 0:
        return {"interactions": 0, "users": 0, "items": 0, "first_timestamp": None, "last_timestamp": None}
    return {"interactions": int(len(frame)), "users": int(frame["user_id"].nunique()),
            "items": int(frame["item_id"].nunique()), "first_timestamp": int(frame["timestamp"].min()),
            "last_timestamp": int(frame["timestamp"].max())}


def make_catalog(store: FeatureStore, item_embeddings: np.ndarray, category_feature: str | None) -> ItemCatalog:
    """Rules' view of the items; without a category feature every item is uncategorised."""
    if category_feature:
        return ItemCatalog.from_store(store, item_embeddings, category_feature)
    n = len(store.items)
    return ItemCatalog(np.zeros((n, 1), np.int64), ["<none>"], item_embeddings, store.popularity, store.items.ids)


# What reading a damaged artifact raises (np.load of a truncated .npz: BadZipFile; torch.load of an
# emptied file: EOFError / UnpicklingError; faiss: RuntimeError; JSON and parquet: ValueError).
UNREADABLE = (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile)


def _reads(artifact):
    """A loader of ``RunArtifacts`` whose read failures name the artifact (``artifact``: its name, or a
    function of the loader's arguments giving it)."""
    def wrap(method):
        @functools.wraps(method)
        def inner(self, *args, **kwargs):
            with self.reading(artifact(*args, **kwargs) if callable(artifact) else artifact):
                return method(self, *args, **kwargs)
        return inner
    return wrap


class RunArtifacts:
    """The ``artifacts/`` folder of one run.

    Args:
        path: a run directory or its ``artifacts/`` folder.
    """

    def __init__(self, path: str | Path):
        p = Path(path).expanduser()
        self.dir = p / "artifacts" if (p / "artifacts").is_dir() or p.name != "artifacts" else p
        self.run_dir = self.dir.parent

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {}
        with self.reading(MANIFEST):
            return json.loads(self.manifest_path.read_text())

    @contextlib.contextmanager
    def reading(self, name: str) -> Iterator[None]:
        """Turn a failure to read artifact ``name`` (truncated, emptied, not the format) into a
        :class:`DataError` naming its file and the fix, instead of the reader's own traceback."""
        try:
            yield
        except DataError:
            raise
        except UNREADABLE as e:
            where = self.dir / FILES[name] if name in FILES else self.dir / name
            raise DataError(f"run {self.run_dir}: artifact {name} ({where}) could not be read: {type(e).__name__}: "
                            f"{str(e)[:600]}. If the file is damaged or was copied half-way, restore the run "
                            "directory, or train it again.") from e

    def _write_manifest(self, m: dict) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=1, default=str))
        tmp.replace(self.manifest_path)  # atomic: a reader never sees half a manifest

    def start(self, config, dataset: str) -> None:
        """Begin a run: a fresh manifest with status ``running`` (``complete`` only after :meth:`finish`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config
        self._write_manifest({"schema_version": SCHEMA_VERSION, "status": "running", "code_version": code_version(),
                              "dataset": dataset, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "config": cfg, "artifacts": {}})

    def finish(self) -> None:
        m = self.manifest()
        m.update(status="complete", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._write_manifest(m)

    def fail(self, error: BaseException) -> None:
        """End a run that raised: status ``failed`` with the error, instead of ``running`` for good."""
        m = self.manifest()
        if m.get("status") != "running":  # not started here (or already ended): nothing to say
            return
        m.update(status="failed", error=f"{type(error).__name__}: {str(error)[:1000]}",
                 finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._write_manifest(m)

    def record(self, name: str, saw: dict | None = None, **info) -> None:
        """Mark ``name`` as written (its file is complete), with the data it saw."""
        m = self.manifest()
        if not m:
            raise FileNotFoundError(f"{self.manifest_path} missing: call RunArtifacts.start() before writing artifacts")
        m["artifacts"][name] = {"file": FILES[name], "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "written_at_unix": time.time(), "saw": saw, **info}
        self._write_manifest(m)

    def forget(self, name: str) -> None:
        """Take ``name`` out of the run (its manifest entry, then its file): e.g. a student distilled for
        towers that were replaced, which must not be exported with the new ones."""
        m = self.manifest()
        if m.get("artifacts", {}).pop(name, None) is not None:
            self._write_manifest(m)
        self.path(name).unlink(missing_ok=True)

    def note(self, key: str, value) -> None:
        """Add a run-level fact to the manifest (e.g. where the run was exported)."""
        m = self.manifest()
        m[key] = value
        self._write_manifest(m)

    @contextlib.contextmanager
    def writing(self, name: str, saw: dict | None = None, **info) -> Iterator[Path]:
        """``with art.writing("ranker", saw=...) as path: torch.save(..., path)``: recorded on success only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        yield self.path(name)
        self.record(name, saw, **info)

    # ------------------------------------------------------------------ files
    def path(self, name: str) -> Path:
        if name not in FILES:
            raise KeyError(f"unknown artifact {name!r}; known: {', '.join(FILES)}")
        return self.dir / FILES[name]

    def has(self, name: str) -> bool:
        """Written completely (recorded in the manifest) and present."""
        return name in self.manifest().get("artifacts", {}) and self.path(name).exists()

    def check(self, names=PIPELINE) -> "RunArtifacts":
        """Raise FileNotFoundError naming what is missing and the command that makes it."""
        if not self.run_dir.exists():
            raise FileNotFoundError(f"run directory {self.run_dir} does not exist; pass the output directory of "
                                    "`python train.py`")
        m = self.manifest()
        if not m:
            raise FileNotFoundError(f"{self.manifest_path} missing: {self.run_dir} is not a complete trained run "
                                    "(or was made by an older version). Run `python train.py` (stage=all or "
                                    "stage=ranking) and pass its output directory.")
        missing = [n for n in names if not self.has(n)]
        if missing:
            status = m.get("status")
            why = ("" if status == "complete" else f" (the run failed: {m['error']})" if m.get("error")
                   else " (the run did not finish: it was stopped or failed)")
            # the deployed history (``interactions``) is written by stage=deploy, the rest by stage=ranking
            stage = "deploy" if "interactions" in missing else "ranking"
            raise FileNotFoundError(f"{self.dir} lacks {[FILES[n] for n in missing]}{why}; run `python train.py` "
                                    f"(stage=all or stage={stage}) and pass its output directory.")
        return self

    @_reads("settings")
    def load_settings(self) -> PipelineSettings:
        return PipelineSettings.load(self.path("settings"))

    @_reads("store")
    def load_store(self) -> FeatureStore:
        return FeatureStore.load(self.path("store"))

    @_reads("item_embeddings")
    def load_item_embeddings(self, mmap: bool = False) -> np.ndarray:
        return np.load(self.path("item_embeddings"), mmap_mode="r" if mmap else None)

    @_reads("index")
    def load_index(self):
        return load_index(self.path("index"))[0]

    @_reads("index")
    def index_settings(self) -> dict:
        """The index's build / search parameters (``retrieval.index.IndexConfig`` as saved)."""
        index = self.path("index")
        return json.loads(index.with_name(index.name + ".json").read_text())

    @_reads("two_tower")
    def load_towers(self, store: FeatureStore):
        from retrieval.towers import load_two_tower  # torch: only offline readers load the PyTorch models

        return load_two_tower(self.path("two_tower"), store.features)

    @_reads(lambda name, store: RANKERS[name])
    def load_ranker(self, name: str, store: FeatureStore):
        from ranking.model import load_ranker

        return load_ranker(self.path(RANKERS[name]), store.features)

    @_reads("rules")
    def load_rules(self) -> RuleSet:
        path = self.path("rules")
        return RuleSet.from_config(OmegaConf.to_container(OmegaConf.load(path)), str(path))

    def ranker_names(self) -> list[str]:
        """Triton names of the rankers this run has, teacher first."""
        return [n for n, a in RANKERS.items() if self.has(a)]

    @_reads("store")
    def item_ids(self) -> list[str]:
        return json.loads((self.path("store") / "items.json").read_text())

    @_reads("store")
    def user_ids(self) -> list[str]:
        return json.loads((self.path("store") / "users.json").read_text())

    @_reads("item_titles")
    def titles(self) -> dict[str, str]:
        """Item id -> display title ({} when the catalog has no titles)."""
        p = self.path("item_titles")
        return json.loads(p.read_text()) if p.is_file() else {}

    def load_pipeline(self, user_encoder: Callable | None = None, rankers: dict[str, Callable] | None = None,
                      default_ranker: str = "ranker") -> Pipeline:
        """The served pipeline of this run.

        Args:
            user_encoder: callable (numpy dict in, numpy out) replacing the PyTorch user tower, e.g. an
                onnxruntime session in the Triton models.
            rankers: name -> callable replacing the PyTorch rankers (default: every ranker of the run
                in PyTorch).
            default_ranker: the ranker a request that names none gets.
        """
        self.check()
        settings = self.load_settings()
        store = self.load_store()
        emb = self.load_item_embeddings()
        if user_encoder is None:
            user_encoder = TorchModel(self.load_towers(store).user_tower)
        if rankers is None:
            rankers = {n: TorchModel(self.load_ranker(n, store)) for n in self.ranker_names()}
        retriever = Retriever(user_encoder, self.load_index(), store, emb)
        rules = self.load_rules()
        catalog = make_catalog(store, emb, settings.category_feature)
        with self.reading("ranker_features"):
            features = CandidateFeatures.load(self.path("ranker_features"), store)
        pipe = Pipeline(retriever, rankers, default_ranker, features, rules, catalog, settings,
                        rules.make_tracker(len(catalog)))
        pipe.keep_item_vectors()  # an exported default ranker's content vectors, now rather than in requests
        return pipe


def load_pipeline(path: str | Path, **kwargs) -> Pipeline:
    """:meth:`RunArtifacts.load_pipeline` of the run at ``path`` (run directory or its artifacts/)."""
    return RunArtifacts(path).load_pipeline(**kwargs)
