"""From config to model-ready data: load, split, index, fit encoders on train, encode tables.

:class:`Prepared` is what every stage consumes; the vocabularies and fitted encoders that serving
needs are saved with the feature store (:meth:`features.store.FeatureStore.save`) and loaded unchanged later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from features.encoders import FeatureSet
from features.schema import DataError, Dataset
from features.splits import Split, make_split
from features.vocab import IdVocab, interaction_matrix

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A dataset split, indexed and encoded.

    Attributes:
        users, items: dense index spaces (all users in the users table, every catalog item).
        user_table, item_table: encoded features, one row per user / item index.
        train, valid, test: (n_users, n_items) binary CSR matrices of each split part.
        exposure_negatives: items shown to a user and not acted on (``user_id``, ``item_id``,
            ``timestamp``; :func:`features.feedback.exposure_negatives`), from ``train.py events=``.
    """

    dataset: Dataset
    split: Split
    users: IdVocab
    items: IdVocab
    features: FeatureSet
    user_table: dict[str, np.ndarray]
    item_table: dict[str, np.ndarray]
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    diversity_feature: str | None = None
    exposure_negatives: pd.DataFrame | None = None

    @property
    def n_items(self) -> int:
        return len(self.items)

    def history(self, part: str) -> sp.csr_matrix:
        """Items to exclude when evaluating ``part``: train for valid, train+valid for test."""
        if part == "valid":
            return self.train
        if part == "test":
            return (self.train + self.valid).sign().tocsr()
        raise ValueError(f"unknown split part {part!r}; use valid or test")

    def item_vectors(self) -> np.ndarray | None:
        """Multi-hot (n_items, V) of the diversity feature, for intra-list diversity."""
        if not self.diversity_feature:
            return None
        codes = self.item_table[self.diversity_feature]
        if codes.ndim == 1:
            codes = codes[:, None]
        v = np.zeros((len(codes), int(codes.max()) + 1), dtype=np.float32)
        rows = np.repeat(np.arange(len(codes)), codes.shape[1])
        v[rows, codes.ravel()] = 1.0
        v[:, 0] = 0.0  # padding / out-of-vocabulary is not a shared attribute
        return v

    def cold_item_index(self) -> np.ndarray:
        return self.items.lookup(self.split.cold_items) if len(self.split.cold_items) else np.array([], dtype=np.int64)

    def titles(self) -> dict[str, str] | None:
        """Item id -> display title for clients; None when the catalog has no ``title`` column."""
        items = self.dataset.items
        if "title" not in items.columns:
            return None
        titles = items["title"].astype(object).where(items["title"].notna(), "")
        return dict(zip(items["item_id"].astype(str), titles.astype(str)))


def history_frame(data: Prepared, part: str) -> pd.DataFrame:
    """Known interactions when answering for ``part``: train for valid; train+valid for test."""
    return data.split.train if part == "valid" else pd.concat([data.split.train, data.split.valid], ignore_index=True)


def first_times(frame: pd.DataFrame, data: Prepared) -> np.ndarray:
    """(n_users,) each user's first timestamp in ``frame`` (their offline request time), -1 if none."""
    out = np.full(len(data.users), -1, dtype=np.int64)
    if len(frame):
        first = frame.groupby("user_id", sort=False)["timestamp"].min()
        idx = data.users.lookup(first.index.to_numpy())
        out[idx[idx >= 0]] = first.to_numpy()[idx >= 0]
    return out


def load_dataset(data_cfg: DictConfig) -> Dataset:
    """Instantiate the configured loader (``data.loader._target_``)."""
    ds = instantiate(data_cfg.loader)
    if not isinstance(ds, Dataset):
        raise DataError(f"data.loader must return a features.schema.Dataset, got {type(ds).__name__}.")
    return ds


def prepare(cfg: DictConfig, dataset: Dataset | None = None) -> Prepared:
    """Load (unless given), split, index and encode according to ``cfg.data`` and ``cfg.split``."""
    where = f"configs/data/{cfg.data.name}.yaml"
    # Validate the feature declaration before any expensive work.
    features = FeatureSet.from_config(OmegaConf.to_container(cfg.data.features, resolve=True), where)
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    features.check_columns(ds.users, ds.items, where)
    s = cfg.split
    split = make_split(ds.interactions, s.method, s.test_share, s.valid_share, list(s.ratios), s.cold_item_share, cfg.seed)
    log.info("%s | split %s: %s", ds.summary(), split.name, split.sizes())
    users, items = IdVocab(ds.users["user_id"].to_numpy()), IdVocab(ds.items["item_id"].to_numpy())
    features.fit(ds.users, ds.items, split.train)
    div = cfg.data.get("diversity_feature")
    if div and div not in features.encoders["item"]:
        raise DataError(f"data.diversity_feature={div!r} in {where} is not a declared item feature; known: {list(features.encoders['item'])}.")
    cat = OmegaConf.select(cfg, "pipeline.category_feature", default=cfg.data.get("category_feature"))  # the rules' categories
    with_vocab = [n for n, e in features.encoders["item"].items() if "vocab" in e.state and n != "item_id"]
    if cat and cat not in with_vocab:
        raise DataError(f"category_feature={cat!r} (pipeline / data) is not a declared categorical item feature (the "
                        f"rules read its categories); declared ones: {with_vocab or 'none'} (data.features.item).")
    return Prepared(
        dataset=ds,
        split=split,
        users=users,
        items=items,
        features=features,
        user_table=features.transform("user", ds.users),
        item_table=features.transform("item", ds.items),
        train=interaction_matrix(split.train, users, items),
        valid=interaction_matrix(split.valid, users, items),
        test=interaction_matrix(split.test, users, items),
        diversity_feature=div,
    )
