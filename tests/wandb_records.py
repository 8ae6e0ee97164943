"""Reads an offline W&B run file (``run-<id>.wandb``) into wandb's own protobuf ``Record`` messages.

The file is a LevelDB-style log (the format wandb's sync reads): a 7-byte header, then 32 KiB
blocks of chunks, each ``crc32 (4) | length (2, little-endian) | type (1) | payload``; a record is
one FULL chunk or FIRST, MIDDLE..., LAST chunks. Current wandb reads it in its Go core only.
"""
from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B\xe1\xbe\x00"
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path} does not start with the W&B log header {HEADER!r}")
    position, pending = len(HEADER), b""
    while position + 7 <= len(data):
        room = BLOCK - position % BLOCK
        if room < 7:  # a block's tail too short for a chunk header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            position += BLOCK - position % BLOCK if position % BLOCK else 0
            continue
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(path: str | Path, timeout: float = 120.0) -> list[wandb_internal_pb2.Record]:
    """The records once the run's ``exit`` record is written.

    ``wandb.finish()`` can return while wandb-core is still writing the file on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def offline_run(path: str | Path) -> dict[str, Any]:
    """``{"config": {...}, "history": [{key: value}], "summary": {...}, "files": [...]}`` of a finished run file."""
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "files": []}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "files":
            out["files"].extend(f.path for f in record.files.files)
    return out
