"""Reading ONNX files safely (parse errors, opsets, confined external data) and their single image input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BadInputError, one_line


def _tensors(graph) -> Iterator[Any]:
    """Every TensorProto a graph holds: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def name_nodes(graph) -> None:
    """Give unnamed (or duplicate-named) nodes unique names: the INT8 planner and ``--exclude`` select by name."""
    taken = {node.name for node in graph.node if node.name}
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        candidate = f"{node.op_type}_{index}"
        while candidate in taken:
            candidate += "_"
        node.name = candidate
        taken.add(candidate)
        seen.add(candidate)


def external_files(path: str | Path) -> list[str]:
    """The side files (relative locations) holding an ONNX file's external data, after ``load_onnx``'s checks."""
    import onnx

    model = load_onnx(path, load_external_data=False)
    locations = {
        next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    }
    return sorted(locations)


def load_onnx(path: str | Path, load_external_data: bool = True, serialized: bytes | None = None) -> Any:
    """Parse an ONNX file; a file that does not parse, or external data outside its directory, is a BadInputError.

    External data (weights kept in side files) must be relative paths to files inside the model's own
    directory, symlinks resolved: a location such as ``../../etc/shadow`` is refused before anything,
    ONNX Runtime, TensorRT's parser or trtexec, would read it. Unnamed nodes get names (see ``name_nodes``).
    ``serialized``: the file's bytes, already read by the caller (parsed instead of reading the file again).
    """
    import onnx

    path = Path(path)
    try:
        model = (
            onnx.load(str(path), load_external_data=False) if serialized is None else onnx.load_from_string(serialized)
        )
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise their own untyped errors on bad bytes
        detail = one_line(exc)
        raise BadInputError(f"{path} is not a readable ONNX model ({detail}); delete it and make it again") from None
    name_nodes(model.graph)
    opset = opset_of(model)
    if opset > onnx.defs.onnx_opset_version():
        raise BadInputError(
            f"{path} uses ONNX opset {opset}, newer than any this onnx {onnx.__version__} knows "
            f"({onnx.defs.onnx_opset_version()}); export it again with a lower --opset"
        )
    root = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise BadInputError(
                f"{path} keeps tensor {tensor.name!r} in {location!r}, outside its directory; external data "
                f"must be a file inside {root}, so this model is refused"
            )
        if not target.is_file():
            raise BadInputError(f"{path} keeps tensor {tensor.name!r} in {location!r}, which is missing")
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(root))
        except Exception as exc:  # noqa: BLE001 - a short or unreadable side file
            raise BadInputError(f"cannot read the external data of {path} ({one_line(exc)})") from None
    return model


def image_inputs(model: Any) -> list[Any]:
    """The graph's inputs but those that are also initializers (older exporters list weights as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def single_input(model: Any, path: str | Path) -> tuple[str, list[int | str]]:
    """The graph's one image input (see :func:`image_inputs`): its name and dims (``dim_param`` names for dynamic
    axes)."""
    inputs = image_inputs(model)
    if len(inputs) != 1:
        raise BadInputError(f"{path} must have one image input; found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def opset_of(model: Any) -> int:
    """The default-domain opset a model imports (0 when none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
