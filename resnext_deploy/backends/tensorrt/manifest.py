"""The engine manifest (``model.<precision>.engine.json``): what a plan was built from, with, and for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...artifacts import read_json
from ...errors import BadInputError
from .probe import version_tuple
from .trtexec import build_trt_command

ENGINE_MANIFEST_FORMAT = 1


def engine_manifest_path(engine_path: str | Path) -> Path:
    """``model.<precision>.engine.json`` beside the engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def manifest_checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_engine_manifest(engine_path: str | Path) -> dict[str, Any]:
    """The ``.engine.json`` beside an engine, checked against its own checksum; refuses a missing or edited one."""
    engine_path = Path(engine_path)
    path = engine_manifest_path(engine_path)
    rebuild = f"rebuild the engine with `{build_trt_command(engine_path)}`"
    if not engine_path.exists():
        raise BadInputError(f"{engine_path} does not exist; {rebuild}")
    if not path.exists():
        raise BadInputError(
            f"{path} is missing; an engine is loaded only with the manifest build-trt writes beside it "
            f"(TensorRT version, GPU, profile, plan sha256); {rebuild}"
        )
    body = read_json(path)
    if not isinstance(body, dict) or body.get("format") != ENGINE_MANIFEST_FORMAT or "checksum" not in body:
        raise BadInputError(f"{path} is not a resnext-deploy engine manifest; {rebuild}")
    if manifest_checksum(body) != body["checksum"]:
        raise BadInputError(f"{path} was edited after the build (its checksum no longer matches); {rebuild}")
    return body


def check_compatible(body: dict[str, Any], engine_path: Path, installed: str, capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU unless it was built to move."""
    options = body.get("build_options", {})
    built, cc = body.get("tensorrt_version", "unknown"), body.get("compute_capability", "unknown")
    rebuild = (
        f"rebuild it on this machine with `{build_trt_command(engine_path)}` (add --hardware-compat ampere+ "
        "and/or --version-compatible to build engines that move between GPUs or TensorRT versions)"
    )
    if built != installed:
        newer_ok = options.get("version_compatible") and version_tuple(installed) >= version_tuple(built)
        if not newer_ok:
            raise BadInputError(
                f"{engine_path} was built with TensorRT {built}, this is TensorRT {installed}; {rebuild}"
            )
    if cc != capability:
        ampere_ok = options.get("hardware_compat") == "ampere+" and int(capability.split(".")[0]) >= 8
        if not ampere_ok:
            raise BadInputError(
                f"{engine_path} was built for compute capability {cc} ({body.get('gpu', 'unknown GPU')}), "
                f"this GPU is {capability}; {rebuild}"
            )
