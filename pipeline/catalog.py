"""Catalog changes into a loaded pipeline: new items online, updated attributes, blocks, user attributes.

:class:`OnlineCatalog` applies accepted catalog records (:mod:`events.catalog`, replayed from the
durable log's ``catalog`` table by every ``recommend`` instance) to a pipeline in memory, in place:

- ``upsert_item`` of a new item: its attributes are encoded with the run's saved encoders (unknown
  values -> out of vocabulary; its id has no learned embedding, so the item tower sees the OOV id
  code and the content), it is embedded by the item tower (the exported ONNX online, the PyTorch
  tower offline: the same numbers) and gets a catalog index: the item vocabulary, the feature
  tables (item tower inputs, the ranker's content features), the ranker's item embeddings and
  first-seen time, the rules' catalog (categories, MMR vectors, popularity, the exposure counts),
  popularity and the seen matrix's width all grow by one row, and its vector enters the retrieval
  index (FAISS ``add_with_ids`` / the exact index's append), so it can be retrieved and ranked with
  no retraining. Interaction events on it are then accepted and applied like any other;
- ``upsert_item`` of an existing item: the given attributes replace its encoded ones (the others
  keep theirs), it is embedded again and its vector replaced in the index and every table;
- ``block`` / ``unblock``: the rules' catalog flag (:func:`ranking.rules.request_filter`), so the
  item leaves every answer (every route, the backfill) from the next one on; ``unblock`` restores it;
- ``upsert_user``: :meth:`features.store.FeatureStore.set_user_attributes` (a known user's row of
  the user table; an unknown user's attributes kept for their requests and their first event).

Not changed: the co-occurrence / EASE tables (a new item has no column there: its co-occurrence
scores are 0 until ``recsys-refresh`` or a retrain) and the models.

Cost: per batch, one item-tower call on the batch's upserted items and one index add, O(batch);
the per-item arrays grow into spare capacity (half again when full), so O(batch) amortised; the
item vocabulary's id array is copied once per batch with new items (O(items) pointers, ~1 ms per
100k items); replacing an existing item's vector in a Flat FAISS index compacts its storage (O(N)
per batch with an update), an IVF index removes from one list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from events.catalog import fold_records
from features.encoders import FeatureSet
from retrieval.index import upsert_vectors

TITLE = "title"
log = logging.getLogger(__name__)


def catalog_schema(features: FeatureSet) -> dict[str, dict[str, tuple]]:
    """The attribute columns a catalog record may name, with their kinds: every user / item feature's
    source column but the id, and ``title`` for items (the display title, a feature or not). Each is
    ``(kind, sep, range)``: ``range`` the (low, high) a numeric column accepts
    (:meth:`features.encoders.FeatureSet.numeric_ranges`), None for other kinds."""
    schema = {}
    for group, id_column in (("user", "user_id"), ("item", "item_id")):
        ranges = features.numeric_ranges(group)
        schema[group] = {s.source: (s.kind, s.sep, ranges.get(s.source) if s.kind == "numeric" else None)
                         for s in features.specs[group] if s.source != id_column}
    schema["item"].setdefault(TITLE, ("text", "|", None))
    return schema


class _Growable:
    """Per-item arrays grown along their first axis into spare capacity (O(batch) amortised appends);
    the owner's attribute is set to a view of the first n rows after each append."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def append(self, name: str, current: np.ndarray, rows: np.ndarray) -> np.ndarray:
        buf = self._bufs.get(name)
        n, m = len(current), len(current) + len(rows)
        if buf is None or current.base is not buf:  # first growth, or the owner replaced its array
            buf = current
        if m > len(buf):
            grown = np.empty((max(m, len(buf) * 3 // 2 + 16), *current.shape[1:]), dtype=current.dtype)
            grown[:n] = current
            buf = grown
        buf[n:m] = rows
        self._bufs[name] = buf
        return buf[:m]


class OnlineCatalog:
    """Applies catalog records to ``pipeline`` (its store, features, retriever index and rules catalog).

    Args:
        pipeline: a loaded :class:`pipeline.pipeline.Pipeline`.
        item_encoder: the item tower as a callable (encoded item features by name -> (B, D)
            embeddings): :class:`inference.models.OnnxCallable` over ``item_tower/1/model.onnx``
            online, :class:`inference.models.TorchModel` offline.
        titles: the served display titles (item id -> title), updated by a ``title`` attribute.
    """

    def __init__(self, pipeline, item_encoder: Callable, titles: dict[str, str] | None = None):
        self.pipeline, self.item_encoder = pipeline, item_encoder
        self.store, self.features = pipeline.store, pipeline.features
        self.titles = titles if titles is not None else {}
        self.schema = catalog_schema(self.store.features)
        self._grow = _Growable()

    def apply(self, records: pd.DataFrame) -> dict[str, int]:
        """Apply records (columns op, entity_id, attributes: a dict or its JSON text), in their order.

        Returns:
            counts: new_items, updated_items, blocked, unblocked, users.
        """
        changes = fold_records(records)
        items, users, flags = changes.items, changes.users, changes.blocked
        new, updated = self.upsert_items(items) if items else (0, 0)
        blocked, unblocked = self._set_blocked(flags)
        if users:
            self.store.set_user_attributes(list(users), list(users.values()))
        return {"new_items": new, "updated_items": updated, "blocked": blocked, "unblocked": unblocked,
                "users": len(users)}

    # -- items ------------------------------------------------------------------------------------

    def encode_items(self, rows: dict[str, dict]) -> dict[str, np.ndarray]:
        """Encoded feature rows (the item tower's inputs) for item id -> raw attributes: a known item
        starts from its stored row and takes the given attributes; a new one has missing ones."""
        store = self.store
        ids = list(rows)
        idx = store.items.lookup(np.asarray(ids, dtype=object))
        cols = [s.source for s in store.features.specs["item"] if s.source != "item_id"]
        frame = pd.DataFrame({"item_id": ids, **{c: [rows[i].get(c) for i in ids] for c in dict.fromkeys(cols)}})
        enc = store.features.transform("item", frame)
        out = {}
        for spec in store.features.specs["item"]:
            col = np.asarray(enc[spec.name])
            old = idx >= 0
            if old.any():  # keep the stored codes of a known item's id and of the attributes not given
                keep = old & np.array([spec.source == "item_id" or spec.source not in rows[i] for i in ids])
                col = col.copy()
                col[keep] = store.item_table[spec.name][idx[keep]]
            out[spec.name] = col.astype(store.item_table[spec.name].dtype, copy=False)
        return out

    def upsert_items(self, rows: dict[str, dict]) -> tuple[int, int]:
        """Add new items / re-embed updated ones (see the module docstring). -> (new, updated)."""
        store, features, pipe = self.store, self.features, self.pipeline
        ids = np.asarray(list(rows), dtype=object)
        idx = store.items.lookup(ids)
        enc = self.encode_items(rows)
        vectors = np.asarray(self.item_encoder(enc), dtype=np.float32).reshape(len(ids), -1)  # (B, D)
        old, new = idx >= 0, idx < 0
        n0, n_new = len(store.items), int(new.sum())
        if old.any():  # replace in place: every view shares the rows
            for name, col in enc.items():
                store.item_table[name][idx[old]] = col[old]
            store.items_changed(idx[old])
            for emb in {id(a): a for a in (features.item_embeddings, pipe.retriever.item_embeddings)}.values():
                emb[idx[old]] = vectors[old]
            pipe.catalog.vectors[idx[old]] = _unit(vectors[old])
            self._set_categories(idx[old], enc, rows=np.flatnonzero(old))
        if n_new:
            self._append_items(ids[new], {k: v[new] for k, v in enc.items()}, vectors[new])
        upsert_vectors(pipe.retriever.index, n0 + np.arange(n_new), vectors[new])
        if old.any():
            try:
                upsert_vectors(pipe.retriever.index, idx[old], vectors[old])
            except ValueError as e:  # e.g. HNSW: no removal; the tables are updated, the index keeps the old vector
                log.warning("catalog: %d updated item(s) keep their old vector in the index: %s", int(old.sum()), e)
        for item_id, attrs in rows.items():
            if attrs.get(TITLE) is not None:
                self.titles[item_id] = str(attrs[TITLE])
            elif TITLE in attrs:  # cleared (null), as the model's title input is: answers show none either
                self.titles.pop(item_id, None)
        return n_new, int(old.sum())

    def _append_items(self, ids: np.ndarray, enc: dict[str, np.ndarray], vectors: np.ndarray) -> None:
        store, features, pipe, grow = self.store, self.features, self.pipeline, self._grow.append
        b = len(ids)
        store.item_table = {k: grow(f"item.{k}", v, enc[k]) for k, v in store.item_table.items()}
        store.popularity = grow("popularity", store.popularity, np.zeros(b, store.popularity.dtype))
        store.popularity_changed()
        store.seen.resize((store.seen.shape[0], store.seen.shape[1] + b))  # wider: no entry moves
        shared = pipe.retriever.item_embeddings is features.item_embeddings
        features.item_embeddings = grow("features.item_embeddings", features.item_embeddings, vectors)
        pipe.retriever.item_embeddings = features.item_embeddings if shared else grow(
            "retriever.item_embeddings", pipe.retriever.item_embeddings, vectors)
        features.item_first_ts = grow("item_first_ts", features.item_first_ts, np.full(b, -1, np.int64))
        cat = pipe.catalog
        cat.vectors = grow("catalog.vectors", cat.vectors, _unit(vectors))
        cat.popularity = grow("catalog.popularity", cat.popularity, np.zeros(b))
        cat.segment_popularity = {s: grow(f"segment.{s}", p, np.zeros(b)) for s, p in cat.segment_popularity.items()}
        cat.item_ids = grow("catalog.item_ids", np.asarray(cat.item_ids, dtype=object), ids)
        cat.blocked = grow("catalog.blocked", cat.blocked, np.zeros(b, bool))
        cat.categories = grow("catalog.categories", cat.categories, np.zeros((b, cat.categories.shape[1]), np.int64))
        cat.primary = grow("catalog.primary", cat.primary, np.zeros(b, np.int64))
        if pipe.exposure is not None:
            pipe.exposure.counts = grow("exposure", pipe.exposure.counts, np.zeros(b, np.int64))
        store.items.extend(ids)
        if cat._ids is not store.items:
            cat._ids.extend(ids)
        n = len(store.items)
        self._set_categories(np.arange(n - b, n), enc)

    def _set_categories(self, idx: np.ndarray, enc: dict[str, np.ndarray], rows: np.ndarray | None = None) -> None:
        """The rules' category codes (and primary category) of catalog items ``idx`` from encoded rows."""
        feature, cat = self.pipeline.settings.category_feature, self.pipeline.catalog
        if not feature or not len(idx):
            return
        codes = np.asarray(enc[feature])
        codes = (codes if rows is None else codes[rows]).reshape(len(idx), -1)[:, : cat.categories.shape[1]]
        cat.categories[idx] = 0
        cat.categories[idx, : codes.shape[1]] = codes
        first = (cat.categories[idx] != 0).argmax(axis=1)
        cat.primary[idx] = cat.categories[idx, first]

    # -- blocks -----------------------------------------------------------------------------------

    def _set_blocked(self, flags: dict[str, bool]) -> tuple[int, int]:
        """Block / unblock the known items of ``flags``; -> (blocked, unblocked) counts of those applied
        (an id the catalog lacks is neither: the catalog model accepts known items only, a replay may
        still hold old ones)."""
        if not flags:
            return 0, 0
        idx = self.store.items.lookup(np.asarray(list(flags), dtype=object))
        value = np.array(list(flags.values()), dtype=bool)
        ok = idx >= 0
        self.pipeline.catalog.blocked[idx[ok]] = value[ok]
        return int(value[ok].sum()), int((~value[ok]).sum())


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (zero rows stay zero), as :class:`ranking.rules.ItemCatalog` keeps its vectors."""
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)
