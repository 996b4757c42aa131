"""The served pipeline's settings: one dataclass, built from ``configs/pipeline/``, saved with the run.

Adding a setting means adding a field here and a key in ``configs/pipeline/default.yaml``: the
config instantiates this class (``_target_``), the run saves it as ``artifacts/pipeline.json`` and
every reader of a run (Triton, batch, bench, export) loads it back through :meth:`PipelineSettings.load`.
Values live in YAML only; there are no Python defaults to drift from them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PipelineSettings:
    """How a request is answered.

    Attributes:
        n_candidates: candidates per request scored by the ranker (index + co-occurrence + popular).
        cooc_share: share of the candidate slots given to the best co-occurrence items of the
            request's known items.
        cold_popular_share: for a request with no known user and no recent items, share of the
            candidates taken from the most popular items.
        max_k: largest k a request may ask for.
        category_feature: the item feature the rules see as an item's categories (None: none).
    """

    n_candidates: int
    cooc_share: float
    cold_popular_share: float
    max_k: int
    category_feature: str | None

    def __post_init__(self) -> None:
        where = "configs/pipeline/default.yaml"
        if isinstance(self.n_candidates, bool) or not isinstance(self.n_candidates, int) or self.n_candidates < 1:
            raise ValueError(f"pipeline.n_candidates={self.n_candidates!r} must be a positive integer ({where})")
        if isinstance(self.max_k, bool) or not isinstance(self.max_k, int) or self.max_k < 1:
            raise ValueError(f"pipeline.max_k={self.max_k!r} must be a positive integer ({where})")
        for name in ("cooc_share", "cold_popular_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"pipeline.{name}={v!r} must be a number in [0, 1] ({where})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "PipelineSettings":
        """Read settings saved by :meth:`save`.

        Raises:
            FileNotFoundError: missing file, or fields missing / unknown (a run of another version).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} missing: not a trained run; run `python train.py` and pass its output directory")
        d = json.loads(p.read_text())
        fields = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(fields - set(d)), sorted(set(d) - fields)
        if missing or unknown:
            raise FileNotFoundError(f"{p} lacks {missing} / has unknown {unknown}: the run was made by another "
                                    "version; re-run `python train.py`")
        return cls(**d)
