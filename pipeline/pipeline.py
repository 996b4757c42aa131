"""One pipeline object: retrieve -> rank -> rules, for a batch of requests.

Offline evaluation, the batch command and the Triton ``recommend`` model all call it, so offline
and online answers for the same request cannot differ. Models are plain callables (numpy in,
numpy out): PyTorch modules offline, onnxruntime sessions or Triton calls online.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from events.catalog import number_within
from features.schema import CONTROL_CHARACTERS, MAX_ID_LENGTH
from inference.spec import CONTENT_VECTOR
from pipeline.item_vectors import ItemVectors
from pipeline.settings import PipelineSettings
from ranking.features import GROUPS, CandidateFeatures
from ranking.rule_config import RuleSet
from ranking.rules import ExposureTracker, ItemCatalog, RequestContext, member
from retrieval.retriever import Retriever

ROUTES = ("known_user", "cold_user")
# What on_stage reports, in order: the user tower, candidate retrieval, ranker features, the ranker,
# the rules, and the whole request.
STAGES = ("user_tower", "retrieval", "features", "ranker", "rules", "total")


class RequestError(ValueError):
    """A malformed request: the message names the field and the fix (served as INVALID_ARGUMENT)."""


@dataclass
class Request:
    """One recommendation request. Only ``user_id`` and ``k`` are required."""

    user_id: str
    k: int
    timestamp: int | None = None  # Unix seconds; now when omitted
    exclude_items: list[str] = field(default_factory=list)
    include_categories: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    recent_items: list[str] = field(default_factory=list)  # e.g. a cold user's session
    attributes: dict[str, object] = field(default_factory=dict)  # user attributes for unknown users
    segment: str | None = None
    promoted: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    """The answer to one request: items best first, with why each is there."""

    user_id: str
    route: str
    item_ids: list[str]
    scores: list[float]
    reasons: list[str]  # ranked | boosted | fresh | backfill:popularity | backfill:content
    groups: list[str]  # the signal group that contributed most to each item's score


def validate_request(r: Request, max_k: int) -> None:
    """Raise :class:`RequestError` for anything a request must not carry."""
    if not isinstance(r.user_id, str) or not r.user_id.strip():
        raise RequestError("user_id must be a non-empty string")
    if len(r.user_id) > MAX_ID_LENGTH:
        raise RequestError(f"user_id is {len(r.user_id)} characters long; at most {MAX_ID_LENGTH} are allowed")
    if CONTROL_CHARACTERS.search(r.user_id):
        raise RequestError(f"user_id {r.user_id!r} holds a control character (a NUL, a tab, a line break): no "
                           "user's id has one")
    if isinstance(r.k, bool) or not isinstance(r.k, (int, np.integer)) or not 1 <= r.k <= max_k:
        raise RequestError(f"k={r.k!r} must be an integer in 1..{max_k}")
    if r.timestamp is not None:
        t = float(r.timestamp)
        if not np.isfinite(t) or t < 0:
            raise RequestError(f"timestamp={r.timestamp!r} must be finite Unix seconds >= 0")
    for name in ("exclude_items", "recent_items", "promoted", "include_categories", "exclude_categories"):
        for v in getattr(r, name):
            if not isinstance(v, str) or not v or len(v) > MAX_ID_LENGTH or CONTROL_CHARACTERS.search(v):
                raise RequestError(f"{name} holds {v!r}; every entry must be a non-empty string of at most {MAX_ID_LENGTH} "
                                   "characters, without control characters")


def _check_number(name: str, value, bounds: tuple[float, float]) -> None:
    """A request's value of a numeric user attribute: a finite number within ``bounds`` (what the
    feature accepts, :meth:`features.encoders.FeatureEncoder.value_range`: not absurdly far from the
    training mean; the catalog model's check, :func:`events.catalog.number_within`), or None (missing)."""
    if value is None or number_within(value, bounds) is not None:
        return
    example = (f" (e.g. {name}={(bounds[0] + bounds[1]) / 2:g}, the training mean)"
               if all(map(math.isfinite, bounds)) else "")
    if number_within(value, None) is None:  # not a finite number: the absurdity bounds would only confuse
        raise RequestError(f"user attribute {name!r} is {value!r}; send a finite number{example}, or leave it out")
    raise RequestError(f"user attribute {name!r} is {value!r}: more than 10^6 standard deviations from the training "
                       f"mean; send a number in [{bounds[0]:g}, {bounds[1]:g}] (values outside the training range "
                       f"are clipped){example}, or leave it out")


def _given(value):
    """A request attribute's value; None for blank text (``age=`` on the wire): not given, numeric or
    categorical alike (a stored value stays), as a catalog upsert reads it; other text loses its
    surrounding spaces."""
    if isinstance(value, str):
        return value.strip() or None
    return value


def _merge(first: np.ndarray, extra: np.ndarray, n_extra: int, n: int) -> np.ndarray:
    """Up to n items: ``first`` (minus extra's) for n - n_extra slots, then extra, then the rest of first."""
    first, extra = first[first >= 0], extra[extra >= 0][:n_extra]
    head = first[~member(first, extra)]
    row = np.concatenate([head[: n - len(extra)], extra])
    return np.concatenate([row, head[n - len(extra):]])[:n]


def retrieve_candidates(retriever: Retriever, features: CandidateFeatures, users: np.ndarray, queries: np.ndarray,
                        settings: PipelineSettings, recent: np.ndarray | None = None, rows=None, seen=None,
                        cache: dict | None = None, promoted: list[np.ndarray] | None = None):
    """Candidates for a batch from three sources. -> scores (B, n), items (B, n).

    ``queries``: the requests' user-tower embeddings (B, D) (:meth:`Retriever.embed_requests`);
    ``rows`` / ``seen``: the requests' ``features.history_rows`` / ``store.seen_rows`` and ``cache``
    the batch's products (``features.history_top``), when the caller already has them.

    - the two-tower query through the FAISS index (every request);
    - co-occurrence with the request's known items (EASE, or cosine on large catalogs): their best
      ``cooc_share`` of the slots, so items the towers rank low but history strongly suggests reach
      the ranker;
    - for a request with neither a known user nor recent items (little for the towers to go on):
      the most popular items in ``cold_popular_share`` of the slots;
    - ``promoted``: each request's promoted items (catalog indices that its filters admit:
      :meth:`Pipeline.promoted_rows`), those not already candidates, in free slots or in place of the
      towers' weakest candidates (never the co-occurrence or popular ones; at most half the slots), so
      the ranker scores them and the boost can lift them.
    Every candidate's retrieval score is the query . item inner product, whatever its source.
    """
    n = settings.n_candidates
    scores, items = retriever.candidates(queries, users, n, seen=seen)
    users = np.asarray(users)
    has_recent = np.zeros(len(users), bool) if recent is None else (recent >= 0).any(axis=1)
    cold = (users < 0) & ~has_recent
    n_cooc, n_pop = int(n * settings.cooc_share), int(n * settings.cold_popular_share)
    extra = np.full((len(users), 0), -1, dtype=np.int64)
    if n_cooc and (~cold).any():
        extra = features.history_top(features.history_rows(users, recent, seen) if rows is None else rows, n_cooc, cache)
    popular = retriever.store.most_popular(n) if cold.any() and n_pop else None
    merged: dict[int, np.ndarray] = {}  # request -> the items another source put among its candidates
    for b in range(len(users)):
        if cold[b] and n_pop:
            row, merged[b] = _merge(items[b], popular, n_pop, n), popular[:n_pop]
        elif n_cooc and not cold[b]:
            row, merged[b] = _merge(items[b], extra[b], n_cooc, n), extra[b][extra[b] >= 0][:n_cooc]
        else:
            continue
        _set_row(retriever, items, scores, queries, b, row)
    for b, lifted in enumerate(promoted or ()):
        if len(lifted):
            _promote(retriever, items, scores, queries, b, lifted, merged.get(b), n)
    return scores, items


def _promote(retriever: Retriever, items: np.ndarray, scores: np.ndarray, queries: np.ndarray, b: int,
             lifted: np.ndarray, merged: np.ndarray | None, n: int) -> None:
    """Request ``b``'s promoted items join its candidates: in free slots, then in place of the towers'
    weakest candidates (the last of the towers' order; ``merged``, the other sources' items, stay), at
    most n // 2 of them, in their order (the request's own first)."""
    row = items[b][items[b] >= 0]
    lifted = lifted[~member(lifted, row)][: n // 2]
    free = n - len(row)
    if not len(lifted):
        return
    towers = np.flatnonzero(~member(row, merged)) if merged is not None else np.arange(len(row))
    lifted = lifted[: free + len(towers)]
    drop = len(lifted) - free
    if drop > 0:
        row = np.delete(row, towers[len(towers) - drop:])
    _set_row(retriever, items, scores, queries, b, np.concatenate([row, lifted]))


def _set_row(retriever: Retriever, items: np.ndarray, scores: np.ndarray, queries: np.ndarray, b: int,
             row: np.ndarray) -> None:
    """Request ``b``'s candidates become ``row`` (-1 after it), scored by the query . item product."""
    items[b] = -1
    items[b, : len(row)] = row
    scores[b] = -np.inf
    scores[b, : len(row)] = retriever.item_embeddings[row] @ queries[b]


StageCallback = Callable[[str, float], None]  # (stage name, seconds)


def _main_groups(reasons: list[str], contrib: np.ndarray) -> list[str]:
    """Each returned item's main signal group: its largest contribution; a backfilled item's is its
    backfill source (the ranker did not score it). ``contrib``: (k, G), one row per item."""
    main = contrib.argmax(axis=1).tolist() if len(contrib) else []
    return [r.split(":")[1] if r.startswith("backfill") else GROUPS[g] for g, r in zip(main, reasons)]


class _Stages:
    """Times the pipeline's steps for an ``on_stage`` callback (nothing is timed without one)."""

    def __init__(self, on_stage: StageCallback | None):
        self.on_stage = on_stage

    def run(self, name: str, fn, *args, **kwargs):
        if self.on_stage is None:
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.on_stage(name, time.perf_counter() - start)


class Pipeline:
    """Retriever + rankers + rules over one feature store.

    Args:
        retriever: user encoder, item index and feature store.
        rankers: ranker name -> callable (named numpy inputs -> scores, contributions); a request
            may name any of them.
        default_ranker: the ranker used when a request names none.
        features: the ranker's candidate features.
        rules: business rules after the ranker.
        catalog: the rules' view of the items.
        settings: :class:`PipelineSettings`.
        exposure: exposure-cap state shared by every request of this pipeline (None: no cap state).
    """

    def __init__(self, retriever: Retriever, rankers: dict[str, Callable], default_ranker: str,
                 features: CandidateFeatures, rules: RuleSet, catalog: ItemCatalog, settings: PipelineSettings,
                 exposure: ExposureTracker | None = None):
        if default_ranker not in rankers:
            raise ValueError(f"default ranker {default_ranker!r} is not among the rankers {sorted(rankers)}")
        self.retriever, self.rankers, self.default_ranker = retriever, dict(rankers), default_ranker
        self.features, self.rules, self.catalog, self.settings = features, rules, catalog, settings
        self.exposure = exposure
        self.store = retriever.store
        self.store.most_popular(1)  # sort the catalog by popularity now, not on the first cold request
        features.prepare_tables()  # and the co-occurrence table, not on the first request with a history
        # the boost rules that lift anything: their configured ids, and the requests' promoted items,
        # are added to the candidates (None: no such rule, promoted items change nothing)
        self._vectors: dict[str, ItemVectors] = {}  # ranker name -> its content vectors (_item_vectors)
        boosts = [r for r in rules.rules if r.name == "boost" and min(r.params["amount"], r.params["max_boost"]) > 0]
        self._boost_ids = tuple(i for r in boosts for i in r.params["ids"]) if boosts else None

    @property
    def max_k(self) -> int:
        return self.settings.max_k

    def variant(self, **changes) -> "Pipeline":
        """A pipeline sharing this one's parts, with some replaced (``rankers``, ``default_ranker``,
        ``exposure``, ...): e.g. an evaluation without exposure state, or with another ranker."""
        parts = dict(retriever=self.retriever, rankers=self.rankers, default_ranker=self.default_ranker,
                     features=self.features, rules=self.rules, catalog=self.catalog, settings=self.settings,
                     exposure=self.exposure)
        unknown = set(changes) - set(parts)
        if unknown:
            raise TypeError(f"unknown pipeline part(s) {sorted(unknown)}; known: {sorted(parts)}")
        return Pipeline(**{**parts, **changes})

    def ranker(self, name: str | None = None) -> Callable:
        """The ranker callable of that name (the default when None); RequestError for an unknown one."""
        name = self.default_ranker if name is None else name
        if name not in self.rankers:
            raise RequestError(f"ranker={name!r} is not served; known: {', '.join(self.rankers)}")
        return self.rankers[name]

    def rank(self, users: np.ndarray, timestamps: np.ndarray, recent: np.ndarray | None = None, attributes=None,
             ranker: str | None = None, on_stage: StageCallback | None = None):
        """Candidates and ranker scores for a batch. -> items (B, C), scores (B, C), contributions (B, C, G).

        ``on_stage(name, seconds)`` is called after each step (user_tower, retrieval, features, ranker).
        """
        items, scores, contrib, _ = self._rank(users, timestamps, recent, attributes, ranker, on_stage, explain=True,
                                               promoted=self.promoted_rows(users, recent, timestamps))
        return items, scores, contrib

    def promoted_rows(self, users: np.ndarray, recent: np.ndarray | None = None, timestamps=None,
                      requests: list[Request] | None = None) -> list[np.ndarray] | None:
        """Each request's promoted catalog items for the candidates: the request's ``promoted``, then the
        boost rules' ``ids``, each once, those its filters admit (the request's and the configured ones:
        an item the rules will drop must not join the list, whose statistics every candidate's features
        are scaled by); None when no boost rule lifts anything or nothing is promoted. ``recent``: each
        request's recent items, a (B, L) array (-1 padded) or one array per request."""
        if self._boost_ids is None:
            return None
        asked = [r.promoted for r in requests] if requests is not None else [()] * len(users)
        if not self._boost_ids and not any(asked):
            return None
        configured = self.catalog.item_indices(self._boost_ids)  # now: an id may have been added online
        out = []
        for b, own in enumerate(asked):
            ids = np.concatenate([self.catalog.item_indices(own), configured]) if len(own) else configured
            if len(ids):
                ids = ids[np.sort(np.unique(ids, return_index=True)[1])]  # each once, the request's first
                ctx = self._context(int(users[b]), requests[b] if requests is not None else None,
                                    recent[b] if recent is not None else None,
                                    timestamps[b] if timestamps is not None else None)
                ids = self.rules.admissible(ids, self.catalog, ctx)
            out.append(ids)
        return out

    def _rank(self, users, timestamps, recent, attributes, ranker, on_stage, explain: bool,
              promoted: list[np.ndarray] | None = None):
        """:meth:`rank`, plus a function giving the contributions of flat candidate rows (``promoted``:
        :meth:`promoted_rows`); ``explain``
        False with a ranker that scores alone (``scores_alone``, e.g. an ONNX ranker with its
        score.onnx): contributions are None, for the caller to ask for the returned items only
        (through that function: ``explain.onnx`` on the score graph's parts rows when the export has
        it, the full graph on those rows' inputs otherwise)."""
        fn = self.ranker(ranker)
        parts_only = not explain and getattr(fn, "explains_parts", False)  # score graph + explain graph
        vectors = self._item_vectors(ranker, fn) if parts_only else None
        stages = _Stages(on_stage)
        user_x = {}  # the user tower's inputs, also the ranker's user and context features

        def embed():
            user_x.update(self.store.user_inputs(users, timestamps, recent, attributes))
            return self.retriever.embed_users(user_x)
        queries = stages.run("user_tower", embed)
        seen = self.store.seen_rows(users)  # (B, N), and the known items with the request's own: both steps read them
        rows = seen if recent is None else self.features.history_rows(users, recent, seen)
        cache: dict = {}  # products of ``rows`` computed once for both steps
        r_scores, items = stages.run("retrieval", retrieve_candidates, self.retriever, self.features, users, queries,
                                     self.settings, recent, rows, seen, cache, promoted)

        def features():
            x = self.features.build_inputs(users, timestamps, queries, items, r_scores, recent, attributes, rows, user_x,
                                           cache, vectors.names if vectors is not None else ())
            if vectors is not None:  # the content vectors kept per item, in place of the attributes
                x[CONTENT_VECTOR] = vectors.rows(np.maximum(items.ravel(), 0))
            return x
        x = stages.run("features", features)
        b, c = items.shape
        contrib = None
        if parts_only:
            scores, parts = stages.run("ranker", fn.score_parts, x)

            def explainer(rows: np.ndarray) -> np.ndarray:  # explain.onnx on those rows' parts
                return fn.explain_parts(parts[rows])
        else:
            def explainer(rows: np.ndarray) -> np.ndarray:  # the full graph on those rows' inputs
                return fn({name: v[rows] for name, v in x.items()})[1]
            if not explain and getattr(fn, "scores_alone", False):
                scores = stages.run("ranker", fn.score, x)
            else:
                scores, contrib = stages.run("ranker", fn, x)
                contrib = np.asarray(contrib, np.float32).reshape(b, c, len(GROUPS))
        scores = np.where(items >= 0, np.asarray(scores, np.float32).reshape(b, c), -np.inf)
        return items, scores, contrib, explainer

    def apply_rules(self, user: int, items: np.ndarray, scores: np.ndarray, contrib: np.ndarray, k: int,
                    request: Request | None = None, recent: np.ndarray | None = None, timestamp: float | None = None):
        """Rules for one request's ranked candidates (``timestamp``: the request's time, Unix s; now
        when None). -> items, scores, reasons, groups."""
        out, out_scores, reasons, where = self._rules(user, items, scores, k, request, recent, timestamp)
        return out, out_scores, reasons, _main_groups(reasons, contrib[np.maximum(where, 0)])

    def keep_item_vectors(self, ranker: str | None = None) -> int:
        """Compute the content vectors of every item for that ranker (the default when None) now, if it
        takes them kept (an exported ranker with ``content.onnx``); -> how many were computed."""
        vectors = self._item_vectors(ranker, self.ranker(ranker))
        return vectors.fill() if vectors is not None else 0

    def _item_vectors(self, ranker: str | None, fn) -> ItemVectors | None:
        """The kept content vectors of that ranker (None for one that computes them itself)."""
        if not getattr(fn, "content_inputs", ()):
            return None
        name = self.default_ranker if ranker is None else ranker
        if name not in self._vectors:
            self._vectors[name] = ItemVectors(self.store, fn)
        return self._vectors[name]

    def _rules(self, user: int, items: np.ndarray, scores: np.ndarray, k: int, request: Request | None,
               recent: np.ndarray | None, timestamp: float | None = None):
        """-> items, scores, reasons, and where each returned item is among ``items`` (its last
        place; -1 for a backfilled item, which the ranker did not score)."""
        placed = np.flatnonzero(items >= 0)
        items, scores = items[placed], scores[placed]
        ctx = self._context(user, request, recent, timestamp)
        out, out_scores, reasons = self.rules.apply(items, scores, self.catalog, ctx, k)
        where = np.full(len(out), -1, dtype=np.int64)
        if len(out) and len(items):
            last = len(items) - 1 - np.argmax((items[None, :] == out[:, None])[:, ::-1], axis=1)
            ranked = np.asarray([not r.startswith("backfill") for r in reasons], dtype=bool)
            where[ranked] = placed[last[ranked]]
        return out, out_scores, reasons, where

    def _context(self, user: int, request: Request | None, recent: np.ndarray | None,
                 timestamp: float | None) -> RequestContext:
        """What the rules know of one request (``timestamp``: its time, Unix s; now when None)."""
        seen = self.store.seen_items(user)
        if recent is not None:
            seen = np.union1d(seen, recent[recent >= 0])
        now = float(time.time() if timestamp is None else timestamp)
        first_seen = self.features.item_first_ts  # read at call time: catalog growth replaces the array
        asked = {} if request is None else dict(
            exclude_items=request.exclude_items, include_categories=request.include_categories,
            exclude_categories=request.exclude_categories, segment=request.segment,
            # the content backfill's session: the last history_len items, as the models read it (seen: all)
            recent_items=recent[recent >= 0][-self.store.history_len:] if recent is not None else np.zeros(0, np.int64),
            promoted=request.promoted)
        return RequestContext(seen=seen, exposure=self.exposure, first_seen=first_seen, now=now, **asked)

    @staticmethod
    def _explain(explainer: Callable, rows: np.ndarray) -> np.ndarray:
        """Contributions (R, G) of the flat candidate ``rows`` only (the returned items)."""
        if not len(rows):
            return np.zeros((0, len(GROUPS)), np.float32)
        return np.asarray(explainer(rows), np.float32).reshape(len(rows), len(GROUPS))

    def recommend(self, requests: list[Request], ranker: str | None = None,
                  on_stage: StageCallback | None = None, record: bool = True) -> list[Recommendation]:
        """Answer a batch of requests (validated first; a bad one raises :class:`RequestError`).

        Args:
            requests: the batch.
            ranker: which of ``rankers`` scores it (None: the default).
            on_stage: called with (stage, seconds) for each step of :data:`STAGES`; ``rules`` includes
                the contributions of the returned items when the ranker scores alone.
            record: add the answers to the exposure-cap window (False: a health probe, shown to nobody).
        """
        start = time.perf_counter()
        self.ranker(ranker)  # an unknown ranker is a bad request, before any work
        for r in requests:
            validate_request(r, self.max_k)
        users = self.store.users.lookup([r.user_id for r in requests])
        now = int(time.time())
        ts = np.array([int(r.timestamp) if r.timestamp is not None else now for r in requests], dtype=np.int64)
        recent, sent = self._recent(requests)
        attributes = self._attributes(requests)
        try:
            for r in requests:
                self.catalog.category_codes(list(r.include_categories) + list(r.exclude_categories))
        except ValueError as e:
            raise RequestError(str(e)) from e
        items, scores, contrib, explainer = self._rank(users, ts, recent, attributes, ranker, on_stage, explain=False,
                                                       promoted=self.promoted_rows(users, sent, ts, requests))
        rules_start = time.perf_counter()
        answers = []
        for b, r in enumerate(requests):
            it, sc, reasons, where = self._rules(int(users[b]), items[b], scores[b], int(r.k), r,
                                                 sent[b] if sent is not None else None, int(ts[b]))
            if record and self.exposure is not None:
                self.exposure.record(it)
            answers.append((it, sc, reasons, where))
        c = items.shape[1]
        if contrib is None:  # one call for the returned items of the whole batch
            flat = [b * c + w[w >= 0] for b, (_, _, _, w) in enumerate(answers)]
            explained = self._explain(explainer, np.concatenate(flat))
            offsets = np.cumsum([0] + [len(f) for f in flat])
        out = []
        for b, (it, sc, reasons, where) in enumerate(answers):
            if contrib is None:
                rows = np.zeros((len(it), len(GROUPS)), np.float32)
                rows[where >= 0] = explained[offsets[b]:offsets[b + 1]]
            else:
                rows = contrib[b][np.maximum(where, 0)]
            route = "known_user" if users[b] >= 0 else "cold_user"
            out.append(Recommendation(requests[b].user_id, route,
                                      [str(self.store.items.ids[i]) for i in it], [float(s) for s in sc],
                                      list(reasons), _main_groups(reasons, rows)))
        if on_stage is not None:
            end = time.perf_counter()
            on_stage("rules", end - rules_start)
            on_stage("total", end - start)
        return out

    def _recent(self, requests: list[Request]) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
        """The requests' recent items as the models take them, (B, history_len) catalog indices (the last
        ones, -1 padded), and all of them per request: every item sent counts as seen for the rules (a
        session longer than the models' history must not get its first items back); (None, None)
        when no request sends any."""
        if not any(r.recent_items for r in requests):
            return None, None
        out = np.full((len(requests), self.store.history_len), -1, dtype=np.int64)
        sent = []
        for b, r in enumerate(requests):
            idx = self.store.items.lookup(r.recent_items)
            sent.append(idx[idx >= 0])
            idx = sent[-1][-self.store.history_len:]
            if len(idx):
                out[b, -len(idx):] = idx
        return out, sent

    def _attributes(self, requests: list[Request]) -> pd.DataFrame | None:
        cols = {s.source for s in self.store.features.specs["user"]}
        unknown = {k for r in requests for k in r.attributes} - cols
        if unknown:
            raise RequestError(f"unknown user attribute(s) {sorted(unknown)}; known: {sorted(cols - {'user_id'})}")
        ranges = self.store.features.numeric_ranges("user") if any(r.attributes for r in requests) else {}
        asked = [{name: v for name, v in ((n, _given(x)) for n, x in r.attributes.items()) if v is not None}
                 for r in requests]
        for a in asked:  # the stored ones were checked by the catalog model
            for name, value in a.items():
                if name in ranges:
                    _check_number(name, value, ranges[name])
        given = [self.store.request_attributes(r.user_id, a) for r, a in zip(requests, asked)]  # + stored (upsert_user)
        if not any(given):
            return None
        return pd.DataFrame([{c: a.get(c) for c in cols} for a in given])
