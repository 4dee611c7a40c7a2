"""A Triton model repository made from the artifact directory.

Each registered backend offers its Triton models (:meth:`~resnext_deploy.backends.base.Backend.triton_models`):
``onnxruntime_onnx`` for the ONNX files, ``tensorrt_plan`` for engines, and one more per ONNX file on
Triton's ``openvino`` backend (CPU instances). Each ``config.pbtxt`` is
built as Triton's own ``ModelConfig`` protobuf (shipped by ``tritonclient``) and printed in protobuf
text format, so a field Triton does not know cannot be written. ``tritonclient[grpc]`` (the protobuf
modules) is a core dependency: writing a repository needs neither PyTriton nor numpy < 2. With class names
(``export --class-names``) each model gets Triton's ``labels.txt``, so classification requests return names.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import ONNX_FILES, Manifest, external_files
from ..backends.base import TritonModel
from ..backends.tensorrt import BuildOptions
from ..errors import BadInputError
from ..source import export_command, recorded_source
from .options import DEFAULT_MAX_BATCH, ONNX_KINDS, TritonRepoOptions
from .repo_ledger import VERSION, RepoLedger, remove_stale, staged_model_dir
from .repo_model import (
    LABELS_FILE,
    VERSION_COMPATIBLE_FLAG,
    RepoModel,
    TensorSpec,
    labels_text,
    model_config_pb2,
    onnx_io,
)

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

# PyTriton (serve) and tritonclient's HTTP client (bench-triton) need numpy < 2, so they live in their own environment.
INSTALL_HINT = (
    "from a checkout, `make setup-triton` makes .venv-triton: run `.venv-triton/bin/resnext-deploy ...`; from a "
    "wheel, `pip install 'resnext-deploy[triton]'` into a virtual environment of its own (PyTriton needs numpy < 2)"
)
DEFAULT_OPT_BATCH = BuildOptions.opt_batch  # ONNX models prefer batches like an engine of build-trt's default profile
TRT_WORKSPACE_BYTES = 1 << 30
REPO_FILE_MODE = 0o644  # a repository is shipped: tritonserver often runs as another user than its author
# Graph I/O types the artifacts can have (onnx.TensorProto names) -> Triton data types.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# Triton's TensorRT backend lets a plan run its embedded lean runtime only when the server is started with this.
# The part of a model name that says what runs it, <arch>_<kind>_<precision>, where it is not the backend's name
# (the backends' Triton hooks name it; `serve` names its models alike).
NAME_KINDS = {"onnxruntime": "onnx"}


def build_model_config(
    model: RepoModel, options: TritonRepoOptions = TritonRepoOptions(), labels: tuple[str, ...] = ()
) -> ModelConfig:
    """The ``ModelConfig`` message for one model; with ``labels``, outputs of as many classes name labels.txt.

    Engines run on ``KIND_GPU``. ONNX models default to ``KIND_AUTO``, which Triton resolves to the GPU
    where it has one and to the CPU elsewhere, so one repository serves on both kinds of host. The
    optional TensorRT accelerator for ONNX uses FP16 kernels only for the FP16 and INT8 files, whose
    graphs already compute in FP16: precision is decided in the graph, not here.
    """
    pb = model_config_pb2()
    batched = model.max_batch_size > 0

    def tensor(spec: TensorSpec, cls):
        dims = spec.dims[1:] if batched else spec.dims
        return cls(name=spec.name, data_type=pb.DataType.Value(spec.data_type), dims=list(dims))

    config = pb.ModelConfig(
        name=model.name,
        max_batch_size=model.max_batch_size,
        input=[tensor(s, pb.ModelInput) for s in model.inputs],
        output=[tensor(s, pb.ModelOutput) for s in model.outputs],
        default_model_filename=model.model_file,
    )
    for output, spec in zip(config.output, model.outputs, strict=True):
        if labels and spec.dims[-1] == len(labels):  # Triton's classification extension returns these names
            output.label_filename = LABELS_FILE
    if model.triton_backend:
        config.backend = model.platform
    else:
        config.platform = model.platform
    for key, value in model.parameters.items():
        config.parameters[key].string_value = value
    if batched:
        config.dynamic_batching.preferred_batch_size.extend(model.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = options.batching.max_queue_delay_us
    kind = model.instance_kind or ONNX_KINDS[options.onnx_kind]
    config.instance_group.add(count=options.batching.instances, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    if options.trt_accelerator and model.platform == "onnxruntime_onnx":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP32" if model.precision == "fp32" else "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(TRT_WORKSPACE_BYTES)
    return config


def config_text(model: RepoModel, config: ModelConfig) -> str:
    """``config.pbtxt``: a comment naming the artifact it serves, then the message in text format."""
    from google.protobuf import text_format

    header = (
        f"# Generated by resnext-deploy triton-repo from {model.artifact.name} ({model.precision}, "
        f"sha256 {model.sha256}).\n"
    )
    note = model.engine_note()
    if note is not None:
        header += f"# {model.artifact.name} was {note}.\n"
    if any(group.kind == group.KIND_AUTO for group in config.instance_group):
        header += "# instance_group kind is KIND_AUTO (the default, so not printed): the GPU where there is one.\n"
    return header + text_format.MessageToString(config)


def _batch_plan(
    dims: tuple[int, ...], source: str, requested: int | None, limit: int | None, opt: int
) -> tuple[int, tuple[int, ...]]:
    """max_batch_size and preferred batch sizes for a graph whose leading dimension is ``dims[0]``."""
    if dims[0] != -1:
        return 0, ()  # a fixed batch: Triton passes requests through whole
    if requested is not None and limit is not None and requested > limit:
        raise BadInputError(f"--max-batch-size {requested} exceeds {source}'s optimization profile maximum {limit}")
    max_batch = requested or limit or DEFAULT_MAX_BATCH
    return max_batch, tuple(sorted({min(opt, max_batch), max_batch}))


def collect_models(
    directory: str | Path,
    name: str | None = None,
    max_batch_size: int | None = None,
    log: Callable[[str], None] = print,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[RepoModel]:
    """The models every registered backend offers for DIR's files that exist, match the manifest and are current.

    A stale file (made from an earlier model.onnx) would be served under the current model's name with
    another input size or other weights, so it is skipped with the reason. ``backend_options`` are the
    backends' knobs by name (OpenVINO's hint becomes its model's PERFORMANCE_HINT).
    """
    from ..backends.registry import backends, check_options

    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError(f"--dir {directory} is not a directory; run `{export_command(directory)}`")
    manifest = Manifest(directory)
    base = name or model_base_name(directory)
    if not MODEL_NAME_RE.match(base):
        raise BadInputError(f"--name {base!r} may hold only letters, digits, '_', '-' and '.'")
    given = check_options(backend_options or {})

    @functools.cache
    def usable(file_name: str) -> bool:
        path = directory / file_name
        if not path.exists():
            return False
        if (reason := manifest.stale_reason(file_name)) is not None:
            log(f"warning: skipped {file_name}: stale, {reason}; remake it to include it")
            return False
        if manifest.entry(file_name) is None:
            raise BadInputError(f"{path} is not recorded in {manifest.path}; remake it with resnext-deploy")
        manifest.require(file_name, "remake it with resnext-deploy")
        return True

    models = []
    for backend in backends().values():
        options = given.get(backend.name) or backend.option_values()
        for offer in backend.triton_models(directory, options, usable):
            models.append(_repo_model(directory, manifest, base, offer, max_batch_size))
    if not models:
        raise BadInputError(f"{directory} holds no current ONNX file or engine; run `{export_command(directory)}`")
    return models


def _repo_model(
    directory: Path, manifest: Manifest, base: str, offer: TritonModel, max_batch_size: int | None
) -> RepoModel:
    """The repository model of one backend's offer: its graph I/O, how Triton may batch it, what it needs."""
    path = directory / offer.artifact
    sha = manifest.require(offer.artifact, "remake it with resnext-deploy").sha256
    inputs, outputs = onnx_io(directory / (offer.io_from or offer.artifact))
    if offer.batch_profile is None:
        external = tuple(external_files(path))  # verify's confinement checks; their files travel with it
        batch = _batch_plan(inputs[0].dims, path.name, max_batch_size, None, DEFAULT_OPT_BATCH)
    else:
        external = ()
        if offer.profile_input is not None and [s.name for s in inputs] != [offer.profile_input]:
            raise BadInputError(f"{path}'s profile is for input {offer.profile_input!r}, its ONNX file's is not")
        low, opt, limit = offer.batch_profile
        batch = _batch_plan(inputs[0].dims, path.name, max_batch_size, limit, opt)
        if batch[0] and low > 1:
            raise BadInputError(
                f"{path}'s optimization profile starts at batch {low}, but Triton's dynamic batcher sends "
                f"batches from 1, which the model would refuse; for Triton, rebuild it with `{offer.rebuild}`"
            )
    return RepoModel(
        f"{base}_{offer.kind}_{offer.precision}",  # default_model_name() when no --name
        offer.platform,
        path,
        offer.precision,
        inputs,
        outputs,
        *batch,
        sha,
        offer.built_with,
        offer.version_compatible,
        external,
        offer.triton_backend,
        offer.instance_kind,
        offer.parameters,
    )


def model_base_name(directory: str | Path) -> str:
    """The architecture recorded in the manifest: the default model-name prefix of ``triton-repo`` and ``serve``."""
    manifest = Manifest(directory)
    return recorded_source(manifest).arch if manifest.entry(ONNX_FILES["fp32"]) is not None else "resnext"


def default_model_name(directory: str | Path, precision: str = "fp32", backend: str = "onnxruntime") -> str:
    """What ``serve`` and ``triton-repo`` call DIR's ONNX model of ``precision`` on ``backend``.

    For example ``resnext_tiny_onnx_fp32`` (ONNX Runtime) or ``resnext_tiny_openvino_fp32``.
    """
    return f"{model_base_name(directory)}_{NAME_KINDS.get(backend, backend)}_{precision}"


def _write_model(model: RepoModel, config: ModelConfig, labels: tuple[str, ...], folder: Path) -> None:
    """One model folder's files, written into ``folder`` (a staging folder renamed into place when whole)."""
    version_dir = folder / VERSION
    version_dir.mkdir()
    for location in model.external:
        target = version_dir / location
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.artifact.parent / location, target)
        target.chmod(REPO_FILE_MODE)
    shutil.copyfile(model.artifact, version_dir / model.model_file)
    (version_dir / model.model_file).chmod(REPO_FILE_MODE)
    files = {"config.pbtxt": config_text(model, config)}
    if any(output.label_filename for output in config.output):
        files[LABELS_FILE] = labels_text(labels)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        (folder / name).chmod(REPO_FILE_MODE)


def make_triton_repo(
    directory: str | Path,
    out: str | Path,
    options: TritonRepoOptions = TritonRepoOptions(),
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write a Triton model repository under ``out``: per model ``config.pbtxt`` and ``1/model.{onnx,plan}``.

    Each model folder is staged beside its place and renamed in whole. ``out`` keeps a ledger of the model
    folders written here: a rerun replaces those and removes the ones it no longer writes, refuses (before
    writing anything) a model folder holding what it did not write, such as a ``2/``, and leaves every other
    entry of ``out`` alone. ``options.preprocess`` adds the image models of :mod:`.ensemble` (encoded images in).
    """
    model_config_pb2()  # fail before writing anything when tritonclient is missing
    batching = options.batching
    models = collect_models(directory, options.name, batching.max_batch_size, log, options.backend_options)
    source = recorded_source(Manifest(directory))
    extra = []
    if options.preprocess:
        from .ensemble import image_models

        base = options.name or model_base_name(directory)
        extra = image_models(models, base, source.preprocessing, source.class_names, ONNX_FILES["fp32"], batching, log)
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BadInputError(f"--out {out} is not a folder; choose a folder for the Triton repository")
    ledger = RepoLedger.read(out) if out.is_dir() else RepoLedger(out, frozenset())
    names = [model.name for model in models] + [image.name for image in extra]
    for model_dir in [out / n for n in names] + [out / n for n in sorted(ledger.models - set(names))]:
        ledger.check_replaceable(model_dir)  # everything refused before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create {out}: {exc.strerror or exc}; choose a writable --out") from None
    ledger = ledger.write(ledger.models | set(names))  # a run cut short still owns what it wrote
    written = [_write_repo_model(model, options, source.class_names, out, log) for model in models]
    for image in extra:
        with staged_model_dir(out / image.name) as staging:
            image.write(staging, REPO_FILE_MODE)
        log(f"wrote {out / image.name} ({image.kind})")
        written.append(out / image.name)
    remove_stale(ledger, names, log)
    ledger.write(names)
    server = ["tritonserver", "--model-repository", str(out.resolve())]
    if any(model.version_compatible for model in models):
        server += shlex.split(VERSION_COMPATIBLE_FLAG)
    log(f"serve it with: {shlex.join(server)}")
    return written


def _write_repo_model(
    model: RepoModel, options: TritonRepoOptions, labels: tuple[str, ...], out: Path, log: Callable[[str], None]
) -> Path:
    """``out/<model>``, staged and renamed into place, said in one line (and what its engine needs, if anything)."""
    config = build_model_config(model, options, labels)
    model_dir = out / model.name
    with staged_model_dir(model_dir) as staging:
        _write_model(model, config, labels, staging)
    batching = (
        f"max batch {model.max_batch_size}, preferred {list(model.preferred_batch_sizes)}, "
        f"queue delay {options.batching.max_queue_delay_us} us"
        if model.max_batch_size
        else "fixed batch, no dynamic batching"
    )
    log(f"wrote {model_dir} ({model.platform} from {model.artifact.name}; {batching})")
    note = model.engine_note()
    if note is not None and not model.version_compatible:
        log(f"warning: {model.artifact.name} was {note}")
    return model_dir
