"""The artifact directory: its files (atomic writes, sha256, lock), its manifest, and safe ONNX reading."""

from .manifest import MANIFEST_NAME, Manifest, recorded_step, tool_versions
from .onnx_io import external_files, load_onnx, name_nodes, opset_of, single_input
from .store import (
    CALIBRATION_NAME,
    LOCK_NAME,
    ONNX_FILES,
    PRECISIONS,
    atomic_path,
    check_writable,
    engine_file,
    locked,
    now_iso,
    prepare_dir,
    read_json,
    sha256_file,
    write_bytes,
    write_json,
    write_text,
)

__all__ = [
    "CALIBRATION_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "ONNX_FILES",
    "PRECISIONS",
    "Manifest",
    "atomic_path",
    "check_writable",
    "engine_file",
    "external_files",
    "load_onnx",
    "locked",
    "name_nodes",
    "now_iso",
    "opset_of",
    "prepare_dir",
    "read_json",
    "recorded_step",
    "sha256_file",
    "single_input",
    "tool_versions",
    "write_bytes",
    "write_json",
    "write_text",
]
