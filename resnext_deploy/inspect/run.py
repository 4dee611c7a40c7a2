"""``inspect --dir``: every typed file's sites and every runtime's layers, written to inspect.json/.md/.png."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..artifacts import Manifest, now_iso, write_json, write_text
from ..data import open_dataset, take
from ..errors import BadInputError
from ..evaluate.verify import default_data
from ..source import recorded_source
from .latency import BACKENDS, profile_all
from .records import INSPECT_JSON, INSPECT_MD, INSPECT_PNG, InspectRecord
from .render import inspect_markdown, write_png
from .site_report import CONFIRMED, artifact_accuracy

TYPED = ("model.fp16.onnx", "model.int8.onnx")
TIMED = ("model.onnx", "model.int8.onnx")  # FP32 against INT8 by default
DEFAULT_COUNT = 32


def run_inspect(
    directory: Path,
    data: Path | None = None,
    count: int = DEFAULT_COUNT,
    artifacts: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    confirm: int = CONFIRMED,
    log: Callable[[str], None] = print,
) -> InspectRecord:
    """Inspect DIR's typed files (accuracy) and ``artifacts`` on ``backends`` (latency); write the three files."""
    from ..artifacts import load_onnx

    manifest = Manifest(directory)
    fp32 = manifest.require("model.onnx", "run `resnext-deploy export` first")
    unknown = [b for b in backends or () if b not in BACKENDS]
    if unknown:
        raise BadInputError(
            f"--backends: no layer profiler for {', '.join(unknown)}; choose from {', '.join(BACKENDS)} or none"
        )
    chosen = list(dict.fromkeys(artifacts or [name for name in (*TYPED, *TIMED) if manifest.entry(name)]))
    entries = {name: entry for name in chosen if (entry := manifest.entry(name)) is not None}
    missing = [name for name in chosen if name not in entries]
    if missing:
        raise BadInputError(f"--artifacts: {', '.join(missing)} not in {directory}/manifest.json; make it first")
    source = recorded_source(manifest)
    dataset = open_dataset(
        data if data is not None else default_data(source), source.preprocessing, count, num_classes=source.num_classes
    )
    images = take(dataset, count).images
    record = InspectRecord(now_iso(), dataset.description, len(images))
    if dataset.description.startswith("synthetic"):
        record.notes.append("no images: synthetic inputs (pass --data for errors that mean something)")
    float_model = load_onnx(directory / "model.onnx")
    started = time.perf_counter()
    for name in [n for n in chosen if n in TYPED]:
        entry = entries[name]
        log(f"inspect: {name} site by site on {len(images)} images")
        search = entry.search
        accuracy, _passes = artifact_accuracy(
            directory, entry, float_model, load_onnx(directory / name), images, search, confirm
        )
        record.accuracy.append(accuracy)
    record.seconds["accuracy"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    timed = {n: entries[n].precision or "fp32" for n in chosen if n.endswith(".onnx")}
    if backends is None or backends:
        record.latency, notes = profile_all(
            directory, timed if artifacts else {n: timed[n] for n in timed if n in TIMED},
            list(backends or BACKENDS), source.image_size, log, runtime_files=not artifacts,
        )  # fmt: skip
        record.notes += notes
    record.seconds["latency"] = round(time.perf_counter() - started, 2)
    del fp32
    write_json(directory / INSPECT_JSON, record.to_dict())
    write_text(directory / INSPECT_MD, inspect_markdown(record))
    if write_png(record, directory / INSPECT_PNG):
        log(f"wrote {directory / INSPECT_PNG}")
    log(f"wrote {directory / INSPECT_JSON} and {directory / INSPECT_MD}")
    return record


def read_inspect(directory: Path) -> InspectRecord | None:
    """DIR/inspect.json as records, or None when inspect has not run there."""
    from ..artifacts import read_json

    path = directory / INSPECT_JSON
    return InspectRecord.from_dict(read_json(path)) if path.exists() else None
