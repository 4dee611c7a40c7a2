"""The engine manifest (``model.<precision>.engine.json``): what a plan was built from, with, and for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...artifacts import EngineProfile, read_json
from ...errors import BadInputError
from ...serde import INLINE, RecordError, decode, encode
from .options import BuildOptions
from .probe import GpuInfo, version_tuple
from .trtexec import build_trt_command

ENGINE_MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class EngineManifest:
    """What ``model.<precision>.engine.json`` records about a built plan, sealed by a checksum of the rest."""

    engine: str
    plan_sha256: str
    plan_bytes: int
    precision: str
    source_onnx: str
    source_onnx_sha256: str
    calibration_fingerprint: str | None  # of the typed ONNX file's calibration set; None for one made without
    tensorrt_version: str
    gpu_info: GpuInfo = field(metadata=INLINE)  # its fields at the top level, where engine manifests have them
    profile: EngineProfile
    build_options: BuildOptions
    build_seconds: float
    built: str
    strongly_typed: bool = True
    tf32: bool = False
    format: int = ENGINE_MANIFEST_FORMAT
    checksum: str = ""

    def sealed(self) -> EngineManifest:
        """This record with the checksum of its other fields, as it is written."""
        return replace(self, checksum=manifest_checksum(encode(self)))


def engine_manifest_path(engine_path: str | Path) -> Path:
    """``model.<precision>.engine.json`` beside the engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def manifest_checksum(body: Mapping[str, object]) -> str:
    """The sha256 of an engine manifest's JSON object without its checksum (keys sorted)."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_engine_manifest(engine_path: str | Path) -> EngineManifest:
    """The ``.engine.json`` beside an engine, checked against its own checksum; refuses a missing or edited one.

    The checksum is checked on the JSON as written, before it is decoded, so it covers every field a build wrote.
    """
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
    try:
        return decode(EngineManifest, body)
    except RecordError as exc:
        raise BadInputError(f"{path} is not a resnext-deploy engine manifest ({exc}); {rebuild}") from None


def check_compatible(body: EngineManifest, engine_path: Path, installed: str, capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU unless it was built to move."""
    options = body.build_options
    built, cc = body.tensorrt_version, body.gpu_info.compute_capability
    rebuild = (
        f"rebuild it on this machine with `{build_trt_command(engine_path)}` (add --hardware-compat ampere+ "
        "and/or --version-compatible to build engines that move between GPUs or TensorRT versions)"
    )
    if built != installed:
        newer_ok = options.version_compatible and version_tuple(installed) >= version_tuple(built)
        if not newer_ok:
            raise BadInputError(
                f"{engine_path} was built with TensorRT {built}, this is TensorRT {installed}; {rebuild}"
            )
    if cc != capability:
        ampere_ok = options.hardware_compat == "ampere+" and int(capability.split(".")[0]) >= 8
        if not ampere_ok:
            raise BadInputError(
                f"{engine_path} was built for compute capability {cc} ({body.gpu_info.gpu}), "
                f"this GPU is {capability}; {rebuild}"
            )
