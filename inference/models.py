"""Models as pipeline callables: named numpy arrays in, numpy out, whatever runs them.

The pipeline calls its user encoder and rankers the same way offline and online:
:class:`TorchModel` (a PyTorch module, offline), :class:`OnnxCallable` (an exported ONNX file in
onnxruntime, in process) or a Triton BLS call (``triton_repo/recommend``). ``INFERENCE`` names how
the served ``recommend`` model runs its ONNX models.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from inference.providers import open_session
from inference.spec import CONTENT_VECTOR, ModelSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# How `recommend` runs its ONNX models: auto (the export's choice), in_process (onnxruntime inside
# the python model), bls (calls to the Triton ONNX models).
INFERENCE = ("auto", "in_process", "bls")


class TorchModel:
    """Adapts an ``nn.Module`` taking a dict of tensors to numpy in, numpy out (eval mode).

    Args:
        module: the plain model (user tower, ranker, student).
        device: where it runs; inputs are copied there and outputs back to the CPU (``cuda`` for
            the in-process GPU path, see docs/gpu.md).
    """

    def __init__(self, module: "torch.nn.Module", device: "torch.device | str" = "cpu"):
        import torch  # here, not at the top: the served path (ONNX only) never pays torch's import

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def __call__(self, inputs: dict[str, np.ndarray]):
        import torch

        with torch.no_grad():
            out = self.module({k: torch.as_tensor(v).to(self.device) for k, v in inputs.items()})
        if isinstance(out, tuple):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()


def onnx_session(path: Path, threads: int = 1, gpu: bool = False) -> ort.InferenceSession:
    """An onnxruntime session (few CPU threads: serving runs several models side by side).

    ``gpu``: use the CUDA provider when this onnxruntime build has one (CPU otherwise).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return open_session(path, opts, gpu)  # logs the providers the session really got


SCORE_FILE = "score.onnx"  # a ranker's score graph next to its model.onnx (export.onnx_export)
EXPLAIN_FILE = "explain.onnx"  # its contributions from the score graph's PARTS rows
CONTENT_FILE = "content.onnx"  # its content-group vectors from item attributes (score.onnx takes CONTENT_VECTOR)
PARTS = "parts"  # the score graph's second output: what explain.onnx needs of each row


class OnnxCallable:
    """An exported ONNX model as a pipeline callable: named numpy arrays in, numpy out (like the
    PyTorch :class:`retrieval.retriever.TorchModel`); one output comes back bare, several as a tuple.

    A ranker exported with its serving graphs (``score.onnx`` and ``explain.onnx`` next to
    ``model.onnx``) also offers :meth:`score` (the score alone: one fusion pass per candidate instead
    of 1 + groups), :meth:`score_parts` (the score and each row's ``parts``) and
    :meth:`explain_parts` (contributions from parts rows: a fusion-only graph). The pipeline scores
    every candidate and explains only the returned items. An export without ``explain.onnx`` (or
    with a score-only ``score.onnx``) explains with the full graph.

    A ranker exported with ``content.onnx`` has a score graph that takes each row's content-group
    vector (``CONTENT_VECTOR``) in place of the item attributes (``content_inputs``): a caller that
    keeps those vectors per item (:meth:`item_vectors`, see :class:`pipeline.item_vectors.ItemVectors`)
    passes them; without them the score methods compute them from the attributes first.
    """

    def __init__(self, path: Path, spec: ModelSpec, threads: int = 1, gpu: bool = False):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} missing; run `python -m export --run-dir <run>` to write it")
        self.spec = spec
        self.session = onnx_session(path, threads, gpu)
        score, explain = Path(path).with_name(SCORE_FILE), Path(path).with_name(EXPLAIN_FILE)
        ranker = len(spec.outputs) > 1
        self.score_session = onnx_session(score, threads, gpu) if ranker and score.is_file() else None
        has_parts = self.score_session is not None and PARTS in {o.name for o in self.score_session.get_outputs()}
        self.explain_session = onnx_session(explain, threads, gpu) if has_parts and explain.is_file() else None
        self.feed = {t.name: t.dtype for t in spec.inputs}
        self.content_session, self.content_inputs, self.score_feed = None, (), self.feed
        takes = {i.name for i in self.score_session.get_inputs()} if self.score_session is not None else set()
        if CONTENT_VECTOR in takes:
            content = Path(path).with_name(CONTENT_FILE)
            if not content.is_file():
                raise FileNotFoundError(f"{content} missing ({SCORE_FILE} takes {CONTENT_VECTOR} from it); re-export "
                                        "with `python -m export --run-dir <run>`")
            self.content_session = onnx_session(content, threads, gpu)
            self.content_inputs = tuple(i.name for i in self.content_session.get_inputs())
            self.content_feed = {n: self.feed[n] for n in self.content_inputs}
            self.score_feed = {n: (self.feed[n] if n in self.feed else np.dtype(np.float32)) for n in takes}

    def __call__(self, inputs: dict[str, np.ndarray]):
        out = self.session.run(self.spec.output_names, self._feed(inputs))
        return out[0] if len(out) == 1 else tuple(out)

    def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The first output alone (the score), from the score graph when there is one."""
        if self.score_session is None:
            return self(inputs)[0]
        return self.score_session.run(self.spec.output_names[:1], self._score_feed(inputs))[0]

    def score_parts(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores (R,), parts (R, P)) from the score graph; ``explains_parts`` must be True."""
        scores, parts = self.score_session.run([self.spec.output_names[0], PARTS], self._score_feed(inputs))
        return scores, parts

    def item_vectors(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(R, H) content-group vectors of items from their attributes (``content_inputs``, R rows);
        only for a ranker exported with ``content.onnx`` (``content_inputs`` not empty)."""
        return self.content_session.run(None, {n: np.asarray(inputs[n], dtype=t) for n, t in self.content_feed.items()})[0]

    def explain_parts(self, parts: np.ndarray) -> np.ndarray:
        """Contributions (R, G) of ``parts`` rows (from :meth:`score_parts`)."""
        return self.explain_session.run(self.spec.output_names[1:2], {PARTS: np.ascontiguousarray(parts)})[0]

    @property
    def scores_alone(self) -> bool:
        """Whether :meth:`score` is cheaper than a full call (the score graph exists)."""
        return self.score_session is not None

    @property
    def explains_parts(self) -> bool:
        """Whether :meth:`score_parts` / :meth:`explain_parts` are there (score.onnx with parts, explain.onnx)."""
        return self.explain_session is not None

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.asarray(inputs[name], dtype=dtype) for name, dtype in self.feed.items()}

    def _score_feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The score graph's inputs: ``CONTENT_VECTOR`` computed from the attributes when not given."""
        if self.content_session is not None and CONTENT_VECTOR not in inputs:
            inputs = {**inputs, CONTENT_VECTOR: self.item_vectors(inputs)}
        return {name: np.asarray(inputs[name], dtype=dtype) for name, dtype in self.score_feed.items()}


def run_onnx(session: ort.InferenceSession, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a session on named inputs; outputs in table order."""
    feed = {t.name: np.asarray(inputs[t.name], dtype=t.dtype) for t in spec.inputs}
    return session.run(spec.output_names, feed)


