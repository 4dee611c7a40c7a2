"""The artifact directory: its files (atomic writes, sha256, lock), its manifest, and safe ONNX reading."""

from .manifest import MANIFEST_NAME, Manifest, refuse_owned, tool_versions
from .onnx_io import external_files, load_onnx, name_nodes, opset_of, single_input
from .precisions import ONNX_FILES, PRECISIONS, Precision
from .store import (
    CALIBRATION_NAME,
    LOCK_NAME,
    PARTIAL_PREFIX,
    atomic_path,
    cache_error,
    check_writable,
    engine_file,
    is_number,
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
    "PARTIAL_PREFIX",
    "PRECISIONS",
    "Precision",
    "Manifest",
    "atomic_path",
    "cache_error",
    "check_writable",
    "engine_file",
    "is_number",
    "external_files",
    "load_onnx",
    "locked",
    "name_nodes",
    "now_iso",
    "opset_of",
    "prepare_dir",
    "refuse_owned",
    "read_json",
    "sha256_file",
    "single_input",
    "tool_versions",
    "write_bytes",
    "write_json",
    "write_text",
]
