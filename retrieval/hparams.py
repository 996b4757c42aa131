"""What a two-tower checkpoint needs to rebuild its towers without the data: feature shapes + model config.

Lightning stores these as the module's hyperparameters (``save_hyperparameters``), so
``TwoTowerModule.load_from_checkpoint("best.ckpt")`` works with no other argument.
"""

from __future__ import annotations

from dataclasses import asdict

from features.encoders import FeatureSpec

GROUPS = ("user", "item", "context")


class TowerFeatures:
    """The part of a fitted FeatureSet the towers are built from: specs and cardinalities per group."""

    def __init__(self, specs: dict[str, list[FeatureSpec]], cardinalities: dict[str, dict[str, int]]):
        self.specs, self._cardinalities = specs, cardinalities

    def cardinalities(self, group: str) -> dict[str, int]:
        """Vocabulary size of every categorical input of ``group``."""
        return self._cardinalities[group]


def tower_config(features, model_cfg: dict) -> dict:
    """Plain (YAML/JSON-safe) description of the towers: model config, feature specs, cardinalities.

    Args:
        features: a fitted :class:`features.encoders.FeatureSet` (or :class:`TowerFeatures`).
        model_cfg: ``retrieval.model`` as a dict (emb_dim, hidden, ...).
    """
    return {
        "model": dict(model_cfg),
        "specs": {g: [asdict(s) for s in features.specs[g]] for g in GROUPS},
        "cardinalities": {g: {k: None if v is None else int(v) for k, v in features.cardinalities(g).items()}
                          for g in GROUPS},
    }


def tower_features(config: dict) -> TowerFeatures:
    """The inverse of :func:`tower_config`'s feature part."""
    specs = {g: [FeatureSpec(**s) for s in config["specs"][g]] for g in GROUPS}
    return TowerFeatures(specs, {g: dict(config["cardinalities"][g]) for g in GROUPS})
