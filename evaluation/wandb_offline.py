"""Read what an offline W&B run recorded (``<run>/wandb/offline-run-*/run-*.wandb``), without uploading.

wandb-core keeps an offline run's config, summary and artifacts in its transaction log until
``wandb sync`` sends it; this reads that log (a LevelDB-style record log of protobuf ``Record``s),
so a run's contents can be checked on a machine with no network.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = 7  # b":W&B", 2 magic bytes, 1 version byte
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Yield every protobuf Record of a ``.wandb`` log in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log (no ':W&B' header)")
    pos, parts = HEADER, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the rest of a block too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if length == 0 and kind == 0:
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            parts = [payload]
        elif kind == FIRST:
            parts = [payload]
            continue
        elif kind == MIDDLE:
            parts.append(payload)
            continue
        else:  # LAST
            parts.append(payload)
        record = pb.Record()
        record.ParseFromString(b"".join(parts))
        yield record


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"config": {...}, "summary": {...}, "artifacts": {name: {"type", "files"}}}`` of an offline run.

    Args:
        run_dir: an ``offline-run-*`` folder.
    """
    log_file = next(Path(run_dir).glob("run-*.wandb"), None)
    if log_file is None:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}; pass an offline-run-* folder of <run>/wandb/")
    config, summary, artifacts = {}, {}, {}
    for record in records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            art = record.artifact
            artifacts[art.name] = {"type": art.type, "files": sorted(e.path for e in art.manifest.contents)}
    return {"config": config, "summary": summary, "artifacts": artifacts}
