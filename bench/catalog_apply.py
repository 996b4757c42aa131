"""Cost of catalog changes applied online (pipeline/catalog.py), on a trained run.

    python -m bench.catalog_apply --run-dir RUN [--repeats 20]

Loads the run's served pipeline (PyTorch towers offline; the item tower as exported ONNX when the
run's Triton repository is given with --repository), then times ``OnlineCatalog.apply`` for
batches of new items (1, 10, 100), an attribute update of one known item (re-embed + index
replace), a block and a user upsert, and a request before / after all the items those timed batches
added (111 per repeat: 2,220 at the default 20 repeats). Prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import RunArtifacts
from pipeline.catalog import OnlineCatalog
from pipeline.pipeline import Request


def _ms(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--repository", type=Path, default=None, help="Triton repository: use its item_tower ONNX")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    art = RunArtifacts(args.run_dir)
    pipe = art.load_pipeline()
    store = pipe.store
    if args.repository is not None:
        from inference.models import OnnxCallable
        from inference.spec import load_specs

        specs = load_specs(args.repository / "recommend" / "1" / "specs.json")
        encoder, kind = OnnxCallable(args.repository / "item_tower" / "1" / "model.onnx", specs["item_tower"]), "onnx"
    else:
        from inference.models import TorchModel

        encoder, kind = TorchModel(art.load_towers(store).item_tower), "torch"
    catalog = OnlineCatalog(pipe, encoder)
    source = {s.source for s in store.features.specs["item"]} - {"item_id"}
    attrs = {c: None for c in source}
    if "price" in source:
        attrs["price"] = 9.99
    counter = iter(range(10**9))

    def items(n):
        return pd.DataFrame([{"op": "upsert_item", "entity_id": f"bench-{next(counter)}", "attributes": attrs}
                             for _ in range(n)])

    t = int(store.last_ts.max()) + 60
    user = str(store.users.ids[0])
    rows = []
    before = _ms(lambda: pipe.recommend([Request(user, 10, t)]), args.repeats)
    n0 = len(store.items)
    for n in (1, 10, 100):
        p50, p95 = _ms(lambda n=n: catalog.apply(items(n)), args.repeats)
        rows.append((f"{n} new item(s), one batch", p50, p95))
    known = str(store.items.ids[0])
    rows.append(("update 1 known item (re-embed, index replace)",
                 *_ms(lambda: catalog.apply(pd.DataFrame([{"op": "upsert_item", "entity_id": known,
                                                           "attributes": attrs}])), args.repeats)))
    rows.append(("block 1 item", *_ms(lambda: catalog.apply(pd.DataFrame(
        [{"op": "block", "entity_id": known, "attributes": {}}])), args.repeats)))
    rows.append(("upsert 1 user", *_ms(lambda: catalog.apply(pd.DataFrame(
        [{"op": "upsert_user", "entity_id": "bench-user", "attributes": {}}])), args.repeats)))
    catalog.apply(pd.DataFrame([{"op": "unblock", "entity_id": known, "attributes": {}}]))
    after = _ms(lambda: pipe.recommend([Request(user, 10, t)]), args.repeats)
    print(f"run {args.run_dir} ({n0} items at start, {len(store.items)} after; item tower: {kind})")
    print("| step | p50 ms | p95 ms |\n|---|---:|---:|")
    for name, p50, p95 in rows:
        print(f"| {name} | {p50:.2f} | {p95:.2f} |")
    print(f"| a request (k=10), before | {before[0]:.2f} | {before[1]:.2f} |")
    print(f"| the same request after {len(store.items) - n0} new items | {after[0]:.2f} | {after[1]:.2f} |")


if __name__ == "__main__":
    main()
