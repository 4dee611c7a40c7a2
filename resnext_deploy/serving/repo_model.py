"""What one model of a Triton repository is (its tensors, batching, origin) and Triton's config protobuf.

Below both writers of a repository: :mod:`.triton_repo` (the classifiers) and :mod:`.ensemble` (the image
models in front of them), which each describe their models with these records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..errors import BackendUnavailableError, BadInputError

LABELS_FILE = "labels.txt"
ONNX_TO_TRITON = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16"}
VERSION_COMPATIBLE_FLAG = "--backend-config=tensorrt,version-compatible=true"


def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig protobuf module, as ``tritonclient`` ships it."""
    try:
        from tritonclient.grpc import model_config_pb2 as module
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Triton's model configuration needs tritonclient[grpc] ({exc.name} is missing), a dependency of "
            "resnext-deploy: reinstall it (a checkout: `make setup`; a wheel: `pip install resnext_deploy-*.whl`)"
        ) from None
    return module


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``dims`` include the batch dimension, -1 where it is dynamic."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def onnx_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph inputs and outputs of an ONNX file, with Triton data types."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises untyped decode errors
        raise BadInputError(f"cannot read {path} as ONNX: {str(exc).strip()[:200]}") from None
    initializers = {init.name for init in graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if type_name not in ONNX_TO_TRITON:
            raise BadInputError(f"{path}: tensor {value.name!r} has type {type_name}, which Triton cannot serve")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, ONNX_TO_TRITON[type_name], dims)

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


@dataclass(frozen=True)
class RepoModel:
    """One model of the repository: where it came from and how Triton should batch it."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan, or a Triton backend (openvino)
    artifact: Path
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int  # 0: the graph has a fixed batch and Triton must not batch
    preferred_batch_sizes: tuple[int, ...]
    sha256: str
    tensorrt_version: str | None = None  # engines: the TensorRT that built the plan
    version_compatible: bool = False  # engines: built to load in later TensorRT versions
    external: tuple[str, ...] = ()  # the ONNX file's external-data side files, relative to its directory
    triton_backend: bool = False  # ``platform`` names a Triton backend (config.backend), not a platform
    instance_kind: str | None = None  # None: --onnx-kind
    parameters: Mapping[str, str] = field(default_factory=dict)

    def engine_note(self) -> str | None:
        """What the server must offer for this engine to load (None for ONNX models)."""
        if self.platform != "tensorrt_plan":
            return None
        if self.version_compatible:
            return (
                f"built version-compatible with TensorRT {self.tensorrt_version}: start tritonserver with "
                f"{VERSION_COMPATIBLE_FLAG} (its TensorRT must be {self.tensorrt_version} or later)"
            )
        return (
            f"built with TensorRT {self.tensorrt_version}: it loads only in a tritonserver whose TensorRT is "
            f"exactly {self.tensorrt_version} (Triton's release notes name it), on the GPU model it was built "
            "for; build with --version-compatible to relax the first"
        )

    @property
    def model_file(self) -> str:
        return "model.plan" if self.platform == "tensorrt_plan" else "model.onnx"


def labels_text(labels: tuple[str, ...]) -> str:
    """Triton's label file: one class name per line, line i naming output i."""
    return "".join(f"{label}\n" for label in labels)
