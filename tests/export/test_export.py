"""ONNX export and the generated repository: tables, config.pbtxt, PyTorch vs onnxruntime parity."""

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from google.protobuf import text_format
from omegaconf import OmegaConf
from tritonclient.grpc import model_config_pb2

from tests.conftest import TINY_DATA, compose_cfg
from export.__main__ import main as export_main
from export.config import DEFAULTS, recommend_inference, run_config
from export.onnx_export import example_inputs, export_onnx, export_score_graph, run_torch
from inference.models import OnnxCallable, onnx_session, run_onnx
from export.spec import ranker_spec
from inference.spec import CONTENT_VECTOR, ModelSpec, from_batch, to_batch
from export.repository import (GENERATED, code_bounds, export_if_needed, is_exported, load_models, manifest_digest,
                               parity_inputs, run_export)
from export.triton_config import onnx_model_config
from features.store import FeatureStore
from ranking.features import GROUPS, input_groups
from pipeline.artifacts import RunArtifacts, load_pipeline
from ranking.model import build_ranker
from pipeline.pipeline import Request

pytestmark = pytest.mark.slow
ONNX_MODELS = ("user_tower", "item_tower", "ranker")


def export_cfg(tmp, repo, *overrides):
    """The tiny test config with an export group pointing at ``repo``."""
    cfg = compose_cfg(tmp, TINY_DATA)
    if cfg.get("export") is None:
        cfg.export = OmegaConf.load(DEFAULTS)
    cfg.export.repository = str(repo)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


@pytest.fixture(scope="module")
def repo(tiny_run, tmp_path_factory):
    """The tiny run exported once (shared with test_serving.py through the same path)."""
    return export_if_needed(export_cfg(tmp_path_factory.mktemp("cfg"), tiny_run.parent / "triton_repo"), tiny_run)


@pytest.fixture(scope="module")
def models(tiny_run):
    """store, and name -> (PyTorch module, table, real inputs) of the run's models."""
    art = RunArtifacts(tiny_run)
    store = art.load_store()
    loaded = load_models(art, store)
    real = parity_inputs(art, store, loaded["user_tower"][0], loaded["ranker"][0], rows=50)
    return store, {name: (module, spec, real[name]) for name, (module, spec) in loaded.items()}


def test_tables_follow_the_feature_set(models):
    store, m = models
    user, item, ranker = (m[n][1] for n in ONNX_MODELS)
    assert user.input_names == m["user_tower"][0].input_names
    assert item.input_names == m["item_tower"][0].input_names
    assert ranker.input_names == m["ranker"][0].input_names
    assert sorted(ranker.input_names) == sorted(n for g in input_groups(store).values() for n in g)
    kinds = {s.name: s for g in ("user", "item", "context") for s in store.features.specs[g]}
    for spec in (user, item, ranker):
        for t in spec.inputs:
            if t.name in kinds and kinds[t.name].kind in ("multi_categorical", "text"):
                assert (t.dtype, t.shape) == (np.int64, (kinds[t.name].max_len,)), t
            elif t.name in kinds:
                assert t.shape == () and t.dtype == (np.float32 if kinds[t.name].kind == "numeric" else np.int64), t
    assert next(t for t in user.inputs if t.name == "history").shape == (store.history_len,)
    assert ranker.outputs[1].shape == (len(GROUPS),)


def test_real_inputs_have_the_table_dtypes_and_shapes(models):
    for _, spec, x in models[1].values():
        for t in spec.inputs:
            assert x[t.name].dtype == t.dtype and x[t.name].shape[1:] == t.shape, (spec.name, t)


def test_table_survives_json(models):
    for _, spec, _ in models[1].values():
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_to_batch_checks_names_and_shapes(models):
    _, spec, x = models[1]["user_tower"]
    wire = to_batch(spec.inputs, x)
    assert [a.shape[1:] for a in wire] == [t.shape or (1,) for t in spec.inputs]
    assert all(np.array_equal(from_batch(t, a), x[t.name]) for t, a in zip(spec.inputs, wire))
    with pytest.raises(KeyError, match="input 'history' missing"):
        to_batch(spec.inputs, {k: v for k, v in x.items() if k != "history"})
    with pytest.raises(ValueError, match=r"input 'history' has rows of shape \(3,\), the table says \(20,\)"):
        to_batch(spec.inputs, {**x, "history": x["history"][:, :3]})


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_onnx_graph_has_the_table_names_and_a_dynamic_batch(repo, models, name):
    spec = models[1][name][1]
    graph = onnx.load(str(repo / name / "1" / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == spec.input_names
    assert [o.name for o in graph.graph.output] == spec.output_names
    for i in graph.graph.input:
        assert i.type.tensor_type.shape.dim[0].dim_param, f"{name}.{i.name}: batch axis is not dynamic"


@pytest.mark.parametrize("name", ONNX_MODELS)
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_onnxruntime_matches_pytorch(repo, models, name, rows):
    store, m = models
    module, spec, real = m[name]
    session = onnx_session(repo / name / "1" / "model.onnx")
    for x in (example_inputs(spec, rows, seed=rows, high=code_bounds(store)), {k: v[:rows] for k, v in real.items()}):
        for t, expected, got in zip(spec.outputs, run_torch(module, spec, x), run_onnx(session, spec, x)):
            assert got.shape == expected.shape == (len(x[spec.input_names[0]]), *t.shape)
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{name}.{t.name}")


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_generated_config_declares_the_table(repo, models, name):
    spec = models[1][name][1]
    cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (cfg.name, cfg.backend) == (name, "python")
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    for decl, t in zip([*cfg.input, *cfg.output], [*spec.inputs, *spec.outputs], strict=True):
        assert decl.name == t.name
        assert model_config_pb2.DataType.Name(decl.data_type) == t.triton_dtype
        assert tuple(decl.dims) == (t.shape or (1,))
        assert decl.HasField("reshape") == (t.shape == ()) and list(decl.reshape.shape) == []


def test_stock_flavour_uses_native_onnxruntime_on_gpu(models):
    spec = models[1]["ranker"][1]
    cfg = text_format.Parse(onnx_model_config(spec, "stock", 4096, 100, 2, 1), model_config_pb2.ModelConfig())
    assert cfg.backend == "onnxruntime" and cfg.default_model_filename == "model.onnx"
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    assert [t.name for t in cfg.input] == spec.input_names
    with pytest.raises(ValueError, match="export.flavour='docker'; known: wheel, stock"):
        onnx_model_config(spec, "docker", 1, 1, 1, 1)


def test_manifest_titles_and_serving_files(repo, tiny_run):
    manifest = json.loads((repo / "export.json").read_text())
    assert manifest["run_dir"] == str(tiny_run.resolve()) and manifest["flavour"] == "wheel"
    assert all(d < 1e-4 for d in manifest["parity_max_abs_diff"].values())
    assert is_exported(repo, tiny_run, "wheel") and not is_exported(repo, tiny_run, "stock")
    assert manifest["run_manifest_sha256"] == manifest_digest(tiny_run / "artifacts")
    titles = RunArtifacts(repo / "recommend" / "1" / "artifacts").titles()
    items = json.loads((tiny_run / "artifacts" / "store" / "items.json").read_text())
    assert set(titles) == set(items) and any(titles.values())
    served = json.loads((repo / "recommend" / "1" / "rankers.json").read_text())
    assert served["default"] == "ranker" and served["inference"] == "in_process"  # wheel flavour: auto -> in process
    specs = json.loads((repo / "recommend" / "1" / "specs.json").read_text())
    assert [s["name"] for s in specs] == [*ONNX_MODELS, "ranker_int8"]  # int8 twin of the teacher (no student here)
    assert json.loads((repo / "retrieval" / "1" / "item_ids.json").read_text()) == items
    for name in ONNX_MODELS:  # the committed python runner travels with the model
        assert (repo / name / "1" / "model.py").exists()


def test_onnx_pipeline_answers_like_the_pytorch_pipeline(repo, models, tiny_run):
    """The offline pipeline with onnxruntime models == with PyTorch: export changes nothing."""
    m = models[1]

    def ort_model(name):
        return OnnxCallable(repo / name / "1" / "model.onnx", m[name][1])

    torch_pipe = load_pipeline(tiny_run)
    onnx_pipe = load_pipeline(tiny_run, user_encoder=ort_model("user_tower"), rankers={"ranker": ort_model("ranker")})
    users = json.loads((tiny_run / "artifacts" / "store" / "users.json").read_text())[:20] + ["someone-new"]
    for u in users:
        r = Request(user_id=u, k=10, timestamp=1_700_500_000)
        a, b = torch_pipe.recommend([r])[0], onnx_pipe.recommend([r])[0]
        assert (a.item_ids, a.reasons, a.groups, a.route) == (b.item_ids, b.reasons, b.groups, b.route)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize("name", ["ranker", "ranker_int8"])
def test_serving_graphs_score_and_explain_like_the_full_graph(repo, models, name, tmp_path):
    """score.onnx gives every row's score and parts; explain.onnx turns any rows' parts into the
    contributions the full graph gives for them (int8: the same quantized fusion, batch-dependent
    activation scales, so a looser bound)."""
    spec, real = models[1]["ranker"][1], models[1]["ranker"][2]
    model = OnnxCallable(repo / name / "1" / "model.onnx", spec)
    assert model.scores_alone and model.explains_parts
    scores, parts = model.score_parts(real)
    rows = np.array([5, 0, 17, 3])
    full_score, full_contrib = model({k: v[rows] for k, v in real.items()})
    atol = 1e-5 if name == "ranker" else 0.05 * float(np.abs(full_contrib).max())
    np.testing.assert_allclose(scores[rows], full_score, atol=atol)
    np.testing.assert_allclose(model.explain_parts(parts[rows]), full_contrib, atol=atol)
    np.testing.assert_allclose(model.score(real), scores, atol=1e-6)
    older = tmp_path / name / "1"  # an export from before explain.onnx: the full graph explains
    shutil.copytree(repo / name / "1", older)
    (older / "explain.onnx").unlink()
    old = OnnxCallable(older / "model.onnx", spec)
    assert old.scores_alone and not old.explains_parts


def test_the_score_graph_takes_kept_content_vectors_in_place_of_item_attributes(repo, models, tmp_path):
    """content.onnx turns item attributes into the content group's vector; score.onnx takes that vector
    (not the attributes) and scores as the full graph does, whether the caller passes the vectors or
    the attributes; the int8 ranker has its own quantized content graph."""
    spec, real = models[1]["ranker"][1], models[1]["ranker"][2]
    content = [n for n in input_groups(models[0])["content"]]
    for name in ("ranker", "ranker_int8"):
        takes = {i.name for i in onnx_session(repo / name / "1" / "score.onnx").get_inputs()}
        assert CONTENT_VECTOR in takes and not takes & set(content), name
    # int8 keeps the fp32 content graph: quantized activations would make a kept vector depend on its batch
    fp32, int8 = (repo / name / "1" / "content.onnx" for name in ("ranker", "ranker_int8"))
    assert int8.read_bytes() == fp32.read_bytes()
    model = OnnxCallable(repo / "ranker" / "1" / "model.onnx", spec)
    assert sorted(model.content_inputs) == sorted(content)
    vectors = model.item_vectors(real)
    torch_vectors = models[1]["ranker"][0].content_vector({n: torch.as_tensor(real[n]) for n in content})
    np.testing.assert_allclose(vectors, torch_vectors.detach().numpy(), atol=1e-5)
    given = {k: v for k, v in real.items() if k not in content} | {CONTENT_VECTOR: vectors}
    np.testing.assert_array_equal(model.score_parts(given)[0], model.score_parts(real)[0])
    np.testing.assert_allclose(model.score_parts(real)[0], model(real)[0], atol=1e-5)
    damaged = tmp_path / "ranker" / "1"  # a score graph that takes the vectors without the graph making them
    shutil.copytree(repo / "ranker" / "1", damaged)
    (damaged / "content.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="content.onnx missing"):
        OnnxCallable(damaged / "model.onnx", spec)


@pytest.fixture(scope="module")
def learned_ranker(models, tmp_path_factory):
    """The run's ranker with its learned part switched on (the tiny run keeps the prior alone: route
    weights 0, so its scores do not read the group vectors), exported with its serving graphs."""
    import copy

    module, spec, real = models[1]["ranker"]
    module = copy.deepcopy(module)
    module.route_scale.fill_(1.0)
    path = tmp_path_factory.mktemp("learned") / "ranker" / "1" / "model.onnx"
    export_onnx(module, spec, path, real, int(OmegaConf.load(DEFAULTS).opset))
    export_score_graph(module, spec, path, real, int(OmegaConf.load(DEFAULTS).opset), 1e-4)
    return module, OnnxCallable(path, spec)


def test_kept_content_vectors_follow_catalog_updates_and_new_items(learned_ranker, models, tiny_run, tiny_prepared):
    """The served pipeline keeps each item's content vector; an item's update drops its kept vector and
    an item added online gets one: after the same catalog records, the ONNX pipeline still answers
    like the PyTorch one (which computes every vector in every request)."""
    from pipeline.catalog import OnlineCatalog
    from inference.models import TorchModel

    m = models[1]
    module, ranker = learned_ranker
    real = m["ranker"][2]
    content = list(ranker.content_inputs)
    zeroed = {k: v for k, v in real.items() if k not in content} | {CONTENT_VECTOR: np.zeros_like(ranker.item_vectors(real))}
    assert np.abs(ranker.score_parts(zeroed)[0] - ranker.score_parts(real)[0]).max() > 1e-3  # the vectors count
    art = RunArtifacts(tiny_run)
    torch_pipe = load_pipeline(tiny_run, rankers={"ranker": TorchModel(module)})
    onnx_pipe = load_pipeline(tiny_run, user_encoder=OnnxCallable(tiny_run.parent / "triton_repo" / "user_tower" / "1" /
                                                                  "model.onnx", m["user_tower"][1]),
                              rankers={"ranker": ranker})
    users = json.loads((tiny_run / "artifacts" / "store" / "users.json").read_text())[:12] + ["someone-new"]
    n = len(onnx_pipe.store.items)
    assert onnx_pipe._vectors["ranker"].have[:n].all()  # every item's vector computed at load

    def answers(pipe):
        return [pipe.recommend([Request(user_id=u, k=10, timestamp=1_700_500_000)])[0] for u in users]

    for a, b in zip(answers(torch_pipe), answers(onnx_pipe)):  # vectors kept for every candidate so far
        assert (a.item_ids, a.reasons, a.groups) == (b.item_ids, b.reasons, b.groups)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    vectors = onnx_pipe._vectors["ranker"]
    items = tiny_prepared.dataset.items.set_index("item_id")
    ids = [str(i) for i in onnx_pipe.store.items.ids[:2]]
    donor = {k: (None if pd.isna(v) else v) for k, v in items.loc[ids[1]].items()}
    update = pd.DataFrame([{"op": "upsert_item", "entity_id": ids[0], "attributes": json.dumps(donor, default=str)},
                           {"op": "upsert_item", "entity_id": "brand-new", "attributes": json.dumps(donor, default=str)}])
    before = vectors.rows(np.array([0, 1])).copy()
    assert vectors.have[0] and not np.array_equal(before[0], before[1])
    for pipe in (torch_pipe, onnx_pipe):
        towers = art.load_towers(pipe.store)
        OnlineCatalog(pipe, TorchModel(towers.item_tower)).apply(update)
    new = int(onnx_pipe.store.items.lookup(["brand-new"])[0])
    assert not vectors.have[0] and new >= 0  # dropped by the update
    kept = vectors.rows(np.array([0, 1, new]))
    np.testing.assert_array_equal(kept[0], kept[1])  # item 0 took item 1's attributes
    np.testing.assert_array_equal(kept[2], kept[1])
    for a, b in zip(answers(torch_pipe), answers(onnx_pipe)):
        assert (a.item_ids, a.reasons, a.groups) == (b.item_ids, b.reasons, b.groups)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_recommend_inference_follows_the_flavour_unless_set():
    assert recommend_inference(OmegaConf.create({"flavour": "wheel", "recommend_inference": "auto"})) == "in_process"
    assert recommend_inference(OmegaConf.create({"flavour": "stock", "recommend_inference": "auto"})) == "bls"
    assert recommend_inference(OmegaConf.create({"flavour": "stock", "recommend_inference": "in_process"})) == "in_process"


def test_export_rejects_an_unknown_recommend_inference(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="export.recommend_inference='grpc'; known: auto, in_process, bls"):
        run_export(export_cfg(tmp_path, tmp_path / "repo", "export.recommend_inference=grpc"), tiny_run)


def test_export_rejects_an_unknown_flavour(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="export.flavour='docker'; known: wheel, stock"):
        run_export(export_cfg(tmp_path, tmp_path / "repo", "export.flavour=docker"), tiny_run)


def test_export_of_an_incomplete_run_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "run" / "artifacts").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"manifest.json missing: .*run is not a complete trained run"):
        run_export(export_cfg(tmp_path, tmp_path / "repo"), tmp_path / "run")
    assert export_main(["--run-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_run_changed_since_its_export_is_not_exported(tiny_run, tmp_path):
    """A run refreshed in place (recsys-refresh rewrites the store and its manifest) was once taken as
    exported: the demo and the benchmark then served the old copy. The run's manifest digest decides."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    repo = tmp_path / "repo"  # a repository as far as is_exported reads it: export.json and the generated files
    for f in GENERATED:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).touch()
    (repo / "export.json").write_text(json.dumps({"run_dir": str(run.resolve()), "flavour": "wheel",
                                                  "run_manifest_sha256": manifest_digest(run / "artifacts")}))
    assert is_exported(repo, run, "wheel")
    art = RunArtifacts(run)
    art.note("exported_to", str(repo))  # what train.py's export stage and its finish stamp write after the export
    art.finish()
    assert is_exported(repo, run, "wheel")  # (once made make run export twice)
    art.record("store", art.manifest()["artifacts"]["store"]["saw"], refreshed_with={"new": 1})  # as a refresh writes
    assert not is_exported(repo, run, "wheel")


def test_a_misspelt_override_is_refused_not_ignored(tiny_run, capsys):
    """export.repositry=/x was once accepted as a new key: the export then went to the default repository."""
    assert export_main(["--run-dir", str(tiny_run), "export.repositry=/nowhere"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) ['export.repositry']" in err and "export.repository" in err
    cfg = run_config(tiny_run, ["export.flavour=stock", "export.int8.enabled=false"])
    assert cfg.export.flavour == "stock" and cfg.export.int8.enabled is False


def test_wrapper_rejects_a_module_with_other_outputs(models):
    module, spec, x = models[1]["user_tower"]
    two = ModelSpec(spec.name, spec.inputs, spec.outputs * 2)
    with pytest.raises(ValueError, match="module returned 1 outputs, the table declares 2"), torch.no_grad():
        run_torch(module, two, x)


def test_demo_asks_for_real_users_and_categories(repo, tmp_path):
    from serving.demo import demo_requests, latest_run

    art = repo / "recommend" / "1" / "artifacts"
    requests = dict(demo_requests(RunArtifacts(art)))
    users = json.loads((art / "store" / "users.json").read_text())
    known, cold, filtered, bad = requests.values()
    assert known["user_id"] in users and cold["user_id"] not in users and bad["k"] == 0
    store = FeatureStore.load(art / "store")
    assert known["timestamp"] == store.last_ts.max()
    genres = store.features.encoders["item"]["genres"].state["vocab"]
    assert filtered["exclude_categories"] == genres[:1]
    with pytest.raises(FileNotFoundError, match="no trained run under"):
        latest_run(tmp_path)


def test_demo_interrupted_says_one_line_not_a_traceback(tiny_run, monkeypatch, capsys):
    """Found by a CLI probe: Ctrl-C during recsys-demo's export printed a traceback."""
    import serving.demo as demo

    import os
    import signal

    seen = []

    def interrupted(*_):  # Ctrl-C during the export; the handler then ignores a second one until the stop is done
        os.kill(os.getpid(), signal.SIGINT)
        seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(demo, "export_if_needed", interrupted)
    assert demo.main(["--run-dir", str(tiny_run)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and "Traceback" not in err
    assert seen == [] and signal.getsignal(signal.SIGINT) is before  # raised at once; the handler put back


def test_an_export_over_a_served_repository_is_refused_unless_asked(tiny_run, tmp_path, capsys):
    """Found by an on-call probe: an export written over the repository a server serves went live at
    that server's next reload of recommend (a stub crash), beside the old versions of the other models,
    and left nothing to roll back to. recsys-serve marks the repositories it serves (inference/served.py)."""
    import subprocess
    import sys

    from inference.served import PREFIX, mark_served, serving_pids, unmark_served

    repo = tmp_path / "repo"
    repo.mkdir()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "recsys-serve"])  # a "server"
    try:
        marker = mark_served(repo, server.pid)
        (repo / f"{PREFIX}999999999").write_text("")  # a server gone without its cleanup: not counted, removed
        assert serving_pids(repo) == [server.pid] and not (repo / f"{PREFIX}999999999").exists()
        assert export_main(["--run-dir", str(tiny_run), f"export.repository={repo}"]) == 2
        err = capsys.readouterr().err
        assert f"is being served (recsys-serve PID {server.pid})" in err and "export.replace_served=true" in err
        cfg = run_config(tiny_run, [f"export.repository={repo}", "export.replace_served=true"])
        assert cfg.export.replace_served is True  # the way to do it anyway (a known key, also for older runs)
        unmark_served(marker)
        assert serving_pids(repo) == []
    finally:
        server.kill()
        server.wait()


def test_ranker_table_rejects_inputs_the_features_do_not_build(models):
    store = models[0]
    with pytest.raises(KeyError, match=r"ranker reads \['agee'\], which ranking.features.input_groups does not build"):
        ranker_spec(store, ["user_emb", "agee"], 8)


def test_a_distilled_student_is_exported_as_ranker_student(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "artifacts", run / "artifacts")
    store = FeatureStore.load(run / "artifacts" / "store")
    dim = np.load(run / "artifacts" / "item_embeddings.npy").shape[1]
    model_cfg = {"emb_dim": 4, "group_dim": 8, "hidden": [8], "dropout": 0.0, "prior": True, "tower_embeddings": True,
                 "groups": ["collaborative", "popularity"]}
    student = build_ranker(store.features, dim, **model_cfg)
    with RunArtifacts(run).writing("ranker_student") as path:
        torch.save({"state_dict": student.state_dict(), "model_cfg": model_cfg, "tower_dim": dim}, path)
    # int8 off: this student is untrained, so the int8 top-10 agreement gate says nothing useful here
    repo = run_export(export_cfg(tmp_path, tmp_path / "repo", "export.int8.enabled=false"), run)
    cfg = text_format.Parse((repo / "ranker_student" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [t.name for t in cfg.input] == student.input_names
    assert set(student.input_names) < {n for g in input_groups(store).values() for n in g}
    assert (repo / "ranker_student" / "1" / "model.py").read_text() == (repo / "ranker" / "1" / "model.py").read_text()
    specs = {s["name"] for s in json.loads((repo / "recommend" / "1" / "specs.json").read_text())}
    assert specs == {"user_tower", "item_tower", "ranker", "ranker_student"}
    assert json.loads((repo / "export.json").read_text())["parity_max_abs_diff"]["ranker_student"] < 1e-4


def test_template_copy_takes_only_committed_files(tmp_path):
    """An export into triton_repo/ itself (make run) leaves generated models there; copying the
    template into another repository must not carry them along."""
    from export.repository import TEMPLATE, TEMPLATE_FILES, copy_template

    template = tmp_path / "template"
    for name in TEMPLATE_FILES:
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATE / name, template / name)
    (template / "ranker_student" / "1").mkdir(parents=True)
    (template / "ranker_student" / "config.pbtxt").write_text('name: "ranker_student"')
    (template / "ranker_student" / "1" / "model.py").write_text("")
    copy_template(tmp_path / "repo", template)
    copied = sorted(str(p.relative_to(tmp_path / "repo")) for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert copied == sorted(TEMPLATE_FILES)


def test_a_damaged_artifact_fails_the_export_before_the_repository_is_touched(repo, tiny_run, tmp_path):
    """A truncated index used to fail after the templates were copied and export.json removed: the good
    export it replaced was gone. Every artifact is read first now."""
    from features.schema import DataError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    index = RunArtifacts(run).path("index")
    index.write_bytes(index.read_bytes()[:500])
    target = tmp_path / "repo"
    shutil.copytree(repo, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"artifact index .* could not be read"):
        run_export(export_cfg(tmp_path / "cfg", target), run)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before


def test_damaged_titles_a_missing_ease_table_and_a_damaged_saved_config_fail_the_export_first(repo, tiny_run, tmp_path):
    """Found by a probe: truncated titles passed the export and failed the served model's load; without
    ease.npy every list was silently ranked on cosine scores the ranker never learned from; a damaged
    .hydra/config.yaml was a yaml traceback."""
    from export.config import run_config
    from features.schema import DataError

    target = tmp_path / "repo"
    shutil.copytree(repo, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    titles = RunArtifacts(run).path("item_titles")
    titles.write_bytes(titles.read_bytes()[:100])
    with pytest.raises(DataError, match=r"artifact item_titles .* could not be read"):
        run_export(export_cfg(tmp_path / "cfg", target), run)
    shutil.rmtree(run)
    shutil.copytree(tiny_run, run)
    ease = RunArtifacts(run).path("ranker_features") / "ease.npy"
    assert ease.is_file()  # the tiny run ranks on EASE scores
    ease.unlink()
    with pytest.raises(DataError, match=r"ease.npy is missing \(the ranker was trained on EASE scores"):
        run_export(export_cfg(tmp_path / "cfg", target), run)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    saved = run / ".hydra" / "config.yaml"
    saved.parent.mkdir(exist_ok=True)
    for text in ("paths: {root_dir: [", "", "- a\n"):
        saved.write_text(text)
        with pytest.raises(ValueError, match=r"the run's saved config .* (is damaged|is not a run config)"):
            run_config(run, [])


def test_a_run_without_a_student_leaves_no_student_in_the_repository(repo, tiny_run, tmp_path, monkeypatch):
    """An earlier export into triton_repo/ itself leaves ranker_student/ in the template folder; the
    check that keeps committed models used that folder's presence, so a run without a student (or one
    whose student deploy took out) kept serving the stale one. Decided by the committed files now."""
    import export.repository as er

    template = tmp_path / "template"
    for name in er.TEMPLATE_FILES:
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(er.TEMPLATE / name, template / name)
    (template / "ranker_student" / "1").mkdir(parents=True)  # what an export into triton_repo/ leaves
    monkeypatch.setattr(er, "TEMPLATE", template)
    run, target = tmp_path / "run", tmp_path / "repo"
    shutil.copytree(tiny_run, run)
    shutil.copytree(repo, target)
    (target / "ranker_student" / "1").mkdir(parents=True)
    (target / "ranker_student" / "config.pbtxt").write_text('name: "ranker_student"')
    run_export(export_cfg(tmp_path / "cfg", target), run)
    assert not (target / "ranker_student").exists() and (target / "ranker" / "1" / "model.onnx").is_file()


def test_a_failed_export_leaves_the_repository_it_found_and_a_good_one_keeps_foreign_models(repo, tiny_run, tmp_path,
                                                                                              monkeypatch, capsys):
    """Found by a probe of the CLIs: an export interrupted (Ctrl-C) or failing its int8 gate after the
    templates were copied left a repository without export.json and some models, which Triton then
    refused. The export is written next to the repository and swapped in when complete; a folder of the
    deployment's own in the repository is kept; a repository path that is a file is one line."""
    import export.repository as er
    from export.__main__ import main as export_main

    run, target = tmp_path / "run", tmp_path / "repo"
    shutil.copytree(tiny_run, run)
    shutil.copytree(repo, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(er, "write_serving_files", interrupted)  # late: every model already written
        with pytest.raises(KeyboardInterrupt):
            run_export(export_cfg(tmp_path / "cfg", target), run)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    (target / "my_model" / "1").mkdir(parents=True)
    (target / "my_model" / "config.pbtxt").write_text('name: "my_model"')
    assert run_export(export_cfg(tmp_path / "cfg", target), run) == target
    assert (target / "my_model" / "config.pbtxt").read_text() == 'name: "my_model"'
    assert (target / "export.json").is_file() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "afile").write_text("x")
    assert export_main(["--run-dir", str(run), f"export.repository={tmp_path / 'afile'}"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
