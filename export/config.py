"""The export config: ``cfg.export`` (configs/export/default.yaml), and a finished run's config."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from export.triton_config import FLAVOURS
from inference.models import INFERENCE

# Where configs/ and triton_repo/ (the templates) live: the source checkout, or site-packages for a
# wheel install (both ship as package data).
ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "configs" / "export" / "default.yaml"


def export_config(cfg: DictConfig) -> DictConfig:
    """``cfg.export``, or configs/export/default.yaml resolved against ``cfg`` when the group is absent.

    Raises:
        ValueError: an unknown ``export.flavour`` or ``export.recommend_inference``.
    """
    if cfg.get("export") is None:
        cfg = OmegaConf.merge(cfg, {"export": OmegaConf.load(DEFAULTS)})
    ecfg = cfg.export
    if ecfg.flavour not in FLAVOURS:
        raise ValueError(f"export.flavour={ecfg.flavour!r}; known: {', '.join(FLAVOURS)} (configs/export/default.yaml)")
    if ecfg.get("recommend_inference", "auto") not in INFERENCE:
        raise ValueError(f"export.recommend_inference={ecfg.recommend_inference!r}; known: {', '.join(INFERENCE)} "
                         "(configs/export/default.yaml)")
    return ecfg


def recommend_inference(ecfg: DictConfig) -> str:
    """How ``recommend`` runs its ONNX models: ``in_process`` (onnxruntime inside the python model) or
    ``bls`` (calls to the Triton ONNX models). ``auto``: ``bls`` for the stock flavour, whose ONNX
    models run on the GPU with the native backend; ``in_process`` for the wheel flavour, where a BLS
    call is two interprocess hops to another python model."""
    choice = ecfg.get("recommend_inference", "auto")
    if choice == "auto":
        return "bls" if ecfg.flavour == "stock" else "in_process"
    return choice


def workspace_root() -> Path:
    """Where runs and the default Triton repository go: the source checkout when running from one
    (an editable install), else the current directory (never site-packages)."""
    return ROOT if (ROOT / "pyproject.toml").exists() else Path.cwd()


def run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """A finished run's config, with paths pointing at this checkout and ``run_dir``, plus overrides.

    The run's own ``.hydra/config.yaml`` when present (runs of ``python train.py``), otherwise
    configs/train.yaml; ``key=value`` overrides (e.g. ``export.flavour=stock``) go on top.
    """
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.exists():
        try:
            cfg = OmegaConf.load(saved)
        except Exception as err:  # noqa: BLE001 - yaml's and OmegaConf's errors alike: a damaged file
            raise ValueError(f"the run's saved config {saved} is damaged ({type(err).__name__}); restore it, or "
                             "move it away to export with configs/train.yaml") from None
        if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("paths"), DictConfig):
            raise ValueError(f"the run's saved config {saved} is not a run config (no paths section); restore it, "
                             "or move it away to export with configs/train.yaml")
    else:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.output_dir={run_dir}"])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.root_dir = str(workspace_root())
    cfg.paths.output_dir = str(run_dir)
    # Every export key of this code (a run saved by an older one may lack some), then the overrides
    # onto keys that exist: a typo such as export.repositry=/x must not export into the default place.
    cfg.export = OmegaConf.merge(OmegaConf.load(DEFAULTS), cfg.get("export") or {})
    given = OmegaConf.from_dotlist(overrides)
    tree = OmegaConf.to_container(cfg, resolve=False)  # keys as written: "???" and interpolations kept
    unknown = [key for key in _leaf_keys(OmegaConf.to_container(given)) if not _has_key(tree, key)]
    if unknown:
        known = ", ".join(f"export.{k}" for k in _leaf_keys(tree["export"]))
        raise ValueError(f"unknown config key(s) {unknown} in the overrides; known export keys: {known} "
                         "(configs/export/default.yaml); other keys are those of the run's config")
    return OmegaConf.merge(cfg, given)


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted paths of a nested dict's leaves."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += _leaf_keys(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


def _has_key(tree: dict, dotted: str) -> bool:
    """Whether the nested dict holds the dotted key (whatever its value: None, "???", an interpolation)."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
