"""Images in, class names out: ``triton-repo --preprocess`` models that take encoded JPEG or PNG bytes.

One preprocessing model (Triton's Python backend) decodes, resizes, crops and normalises with
:mod:`resnext_deploy.imageprep`, copied verbatim beside its ``model.py``, using the preprocessing recorded in
DIR (the values ``verify`` uses). In front of each batched classifier of the repository stands an ensemble
``<model>_image``: ``IMAGE`` (bytes) in, the classifier's logits out, with ``labels.txt`` so Triton's
classification extension returns class names.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import imageprep
from ..archs import Preprocessing
from .options import Batching
from .repo_ledger import CONFIG_HEADER, VERSION
from .repo_model import LABELS_FILE, RepoModel, labels_text, model_config_pb2

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

IMAGE_INPUT = "IMAGE"  # the encoded image, one per batch row (TYPE_STRING, dims [1])
PREPROCESS_SUFFIX = "_preprocess"
IMAGE_SUFFIX = "_image"
PREPROCESSED = "preprocessed"  # the ensemble's internal tensor between the two steps
# What the preprocessing model's version folder holds: its model.py, and the package's own preprocessing module.
# model.py runs only inside Triton (it imports the imageprep beside it), so it is read as a file, never imported here.
MODEL_FILE = Path(__file__).with_name("triton_image_model.py")
VERSION_FILES = {"model.py": MODEL_FILE, "imageprep.py": Path(imageprep.__file__)}


@dataclass(frozen=True)
class ImageModel:
    """One model folder of the image path: its config text, the files of its version folder, its labels."""

    name: str
    config: str
    copies: Sequence[tuple[Path, str]] = ()  # (source, name in the version folder), copied byte for byte
    labels: str | None = None
    kind: str = "ensemble"  # what the log line says it is

    def write(self, folder: Path, file_mode: int) -> None:
        version_dir = folder / VERSION
        version_dir.mkdir()  # an ensemble's version folder stays empty, but Triton requires it
        for source, target in self.copies:
            shutil.copyfile(source, version_dir / target)
            (version_dir / target).chmod(file_mode)
        files = {"config.pbtxt": self.config} | ({LABELS_FILE: self.labels} if self.labels is not None else {})
        for file_name, text in files.items():
            (folder / file_name).write_text(text, encoding="utf-8")
            (folder / file_name).chmod(file_mode)


def preprocess_config(
    name: str, pre: Preprocessing, output_name: str, max_batch_size: int, batching: Batching
) -> ModelConfig:
    """The Python-backend model that turns ``IMAGE`` bytes into ``output_name``, a normalised CHW float32 batch."""
    pb = model_config_pb2()
    config = pb.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=max_batch_size,
        input=[pb.ModelInput(name=IMAGE_INPUT, data_type=pb.TYPE_STRING, dims=[1])],
        output=[pb.ModelOutput(name=output_name, data_type=pb.TYPE_FP32, dims=[3, pre.image_size, pre.image_size])],
    )
    values = {
        "resize_size": str(pre.resize_size),
        "image_size": str(pre.image_size),
        "mean": ",".join(repr(float(v)) for v in pre.mean),  # repr: the float round-trips exactly
        "std": ",".join(repr(float(v)) for v in pre.std),
        "interpolation": pre.interpolation,
    }
    for key, value in values.items():
        config.parameters[key].string_value = value
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.instance_group.add(count=batching.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    return config


def ensemble_config(model: RepoModel, preprocess_name: str, classes: int = 0) -> ModelConfig:
    """``<model>_image``: the preprocessing model, then ``model``; its outputs are the classifier's.

    An output of ``classes`` scores (``classes`` > 0: DIR has class names) names labels.txt, as triton-repo's
    classifiers do, so that a classification request to the ensemble returns the names.
    """
    pb = model_config_pb2()
    (image,) = model.inputs
    config = pb.ModelConfig(
        name=f"{model.name}{IMAGE_SUFFIX}",
        platform="ensemble",
        max_batch_size=model.max_batch_size,
        input=[pb.ModelInput(name=IMAGE_INPUT, data_type=pb.TYPE_STRING, dims=[1])],
        output=[
            pb.ModelOutput(name=s.name, data_type=pb.DataType.Value(s.data_type), dims=list(s.dims[1:]))
            for s in model.outputs
        ],
    )
    for output in config.output:
        if classes and list(output.dims) == [classes]:
            output.label_filename = LABELS_FILE
    steps = config.ensemble_scheduling.step
    first = steps.add(model_name=preprocess_name, model_version=-1)
    first.input_map[IMAGE_INPUT] = IMAGE_INPUT
    first.output_map[image.name] = PREPROCESSED
    second = steps.add(model_name=model.name, model_version=-1)
    second.input_map[image.name] = PREPROCESSED
    for spec in model.outputs:
        second.output_map[spec.name] = spec.name
    return config


def image_models(
    models: Sequence[RepoModel],
    base: str,
    pre: Preprocessing,
    labels: tuple[str, ...],
    source: str,
    batching: Batching,
    log: Callable[[str], None] = print,
) -> list[ImageModel]:
    """The preprocessing model and one ensemble per classifier it can feed (batched, one FP32 image input)."""
    from google.protobuf import text_format

    shape = (3, pre.image_size, pre.image_size)
    fed = []
    for model in models:
        if model.max_batch_size == 0 or len(model.inputs) != 1:
            log(f"warning: no {model.name}{IMAGE_SUFFIX}: {model.name} has a fixed batch or several inputs")
        elif model.inputs[0].data_type != "TYPE_FP32" or tuple(model.inputs[0].dims[1:]) != shape:
            log(f"warning: no {model.name}{IMAGE_SUFFIX}: its input is not float32 {list(shape)}")
        else:
            fed.append(model)
    if not fed:
        return []
    name = f"{base}{PREPROCESS_SUFFIX}"
    input_names = {model.inputs[0].name for model in fed}
    if len(input_names) > 1:  # one preprocessing model names its output after the classifiers' input
        fed = [model for model in fed if model.inputs[0].name == fed[0].inputs[0].name]
    pre_config = preprocess_config(name, pre, fed[0].inputs[0].name, max(m.max_batch_size for m in fed), batching)
    described = (
        f"resize {pre.resize_size} ({pre.interpolation}), crop {pre.image_size}, mean {list(pre.mean)}, "
        f"std {list(pre.std)}"
    )
    header = f"{CONFIG_HEADER} --preprocess from {source}: {described}.\n"
    result = [
        ImageModel(
            name,
            header + text_format.MessageToString(pre_config),
            tuple((path, target) for target, path in VERSION_FILES.items()),
            kind=f"Python backend: encoded images, {described}",
        )
    ]
    for model in fed:
        config = ensemble_config(model, name, len(labels))
        text = f"{CONFIG_HEADER} --preprocess: {name}, then {model.name}.\n" + text_format.MessageToString(config)
        labelled = any(output.label_filename for output in config.output)
        result.append(ImageModel(config.name, text, (), labels_text(labels) if labelled else None))
    return result
