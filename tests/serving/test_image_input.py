"""Images in, class names out: ``triton-repo --preprocess`` and serve's image model preprocess like ``verify``.

The preprocessing model's ``imageprep.py`` must be the package's own file, byte for byte; the tensors it makes
from an encoded JPEG must equal those ``verify``'s data loading makes from the same file. The slow test loads
the preprocessing model into PyTriton's bundled tritonserver, which has the Python backend but no ONNX
Runtime backend, so the ensemble itself is checked as Triton's ModelConfig, step by step.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import digit_jpeg

import resnext_deploy.imageprep
from resnext_deploy.artifacts import Manifest
from resnext_deploy.data import open_dataset, take
from resnext_deploy.serving import ensemble
from resnext_deploy.serving.image_input import class_names_of, images_to_batch
from resnext_deploy.serving.options import TritonRepoOptions
from resnext_deploy.serving.triton_repo import make_triton_repo
from resnext_deploy.source import recorded_source

has_tritonclient = importlib.util.find_spec("tritonclient") is not None and importlib.util.find_spec("grpc") is not None
needs_tritonclient = pytest.mark.skipif(not has_tritonclient, reason="needs tritonclient[grpc]")
PREFIX = "resnext_tiny"


def _parse(model_dir: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _verify_batch(image: Path, directory: Path) -> np.ndarray:
    """What verify feeds the model for ``image``'s folder: its data loading, with DIR's recorded preprocessing."""
    pre = recorded_source(Manifest(directory)).preprocessing
    return take(open_dataset(image.parent.parent, pre), 1).images


def test_image_bytes_become_the_tensor_verify_makes(tiny_dir: Path, tmp_path: Path):
    image = digit_jpeg(tmp_path / "images")
    pre = recorded_source(Manifest(tiny_dir)).preprocessing
    served = images_to_batch(np.array([[image.read_bytes()]], dtype=np.object_), pre)
    assert served.shape == (1, 3, pre.image_size, pre.image_size) and served.dtype == np.float32
    np.testing.assert_allclose(served, _verify_batch(image, tiny_dir), rtol=0, atol=1e-6)


def test_class_names_are_the_top1_names_or_indices():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], dtype=np.float32)
    assert class_names_of(logits, ("cat", "dog", "fox")).tolist() == [[b"dog"], [b"cat"]]
    assert class_names_of(logits, ()).tolist() == [[b"1"], [b"0"]]


def test_an_undecodable_image_is_refused_in_one_line(tiny_dir: Path):
    pre = recorded_source(Manifest(tiny_dir)).preprocessing
    with pytest.raises(Exception) as caught:
        images_to_batch(np.array([[b"GIF89a but not really"]], dtype=np.object_), pre)
    assert resnext_deploy.imageprep.refusal(caught.value) == (
        "not a usable image (not an image format Pillow reads); send JPEG or PNG bytes"
    )


@needs_tritonclient
def test_triton_repo_preprocess_writes_the_packages_preprocessing_verbatim_and_an_ensemble(
    tiny_dir: Path, tmp_path: Path
):
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "repo"
    written = make_triton_repo(tiny_dir, out, TritonRepoOptions(preprocess=True), log=lambda _m: None)
    names = sorted(path.name for path in written)
    assert names == sorted(
        [f"{PREFIX}_onnx_fp32", f"{PREFIX}_openvino_fp32", f"{PREFIX}_preprocess"]
        + [f"{PREFIX}_onnx_fp32_image", f"{PREFIX}_openvino_fp32_image"]
    )
    version = out / f"{PREFIX}_preprocess" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["imageprep.py", "model.py"]
    assert (version / "imageprep.py").read_bytes() == Path(resnext_deploy.imageprep.__file__).read_bytes()
    assert (version / "model.py").read_bytes() == ensemble.MODEL_FILE.read_bytes()

    pre = recorded_source(Manifest(tiny_dir)).preprocessing
    preprocess = _parse(out / f"{PREFIX}_preprocess")
    given = {key: value.string_value for key, value in preprocess.parameters.items()}
    assert (int(given["resize_size"]), int(given["image_size"]), given["interpolation"]) == (
        pre.resize_size,
        pre.image_size,
        pre.interpolation,
    )
    assert [float(v) for v in given["mean"].split(",")] == list(pre.mean)  # exactly: repr round-trips
    assert [float(v) for v in given["std"].split(",")] == list(pre.std)
    assert (preprocess.backend, [i.name for i in preprocess.input]) == ("python", ["IMAGE"])

    for kind in ("onnx", "openvino"):
        classifier = _parse(out / f"{PREFIX}_{kind}_fp32")
        image = _parse(out / f"{PREFIX}_{kind}_fp32_image")
        assert image.platform == "ensemble" and image.max_batch_size == classifier.max_batch_size
        assert (image.input[0].name, image.input[0].data_type) == ("IMAGE", model_config_pb2.TYPE_STRING)
        assert [(o.name, list(o.dims)) for o in image.output] == [(o.name, list(o.dims)) for o in classifier.output]
        first, second = image.ensemble_scheduling.step
        assert (first.model_name, second.model_name) == (preprocess.name, classifier.name)
        (tensor,) = first.output_map.values()
        assert dict(first.output_map) == {preprocess.output[0].name: tensor}
        assert dict(second.input_map) == {classifier.input[0].name: tensor}
        assert list(preprocess.output[0].dims) == list(classifier.input[0].dims)
        assert set(second.output_map) == {o.name for o in classifier.output}
        assert not (out / image.name / "labels.txt").exists()  # the tiny model has no class names

    make_triton_repo(tiny_dir, out, log=lambda _m: None)  # without --preprocess its folders go, by the ledger
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        f"{PREFIX}_onnx_fp32",
        f"{PREFIX}_openvino_fp32",
    ]


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or not has_tritonclient, reason="needs nvidia-pytriton"
)
def test_the_preprocessing_model_runs_in_tritonserver_like_verify(demo_dir: Path, tmp_path: Path):
    """PyTriton's bundled tritonserver loads the written preprocessing model alone (it has no ONNX Runtime
    backend for the ensemble's classifier) and turns a JPEG into verify's tensor; a non-image is refused."""
    import tritonclient.http as http
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    out = tmp_path / "repo"
    make_triton_repo(demo_dir, out, TritonRepoOptions(preprocess=True), log=lambda _m: None)
    name = f"{recorded_source(Manifest(demo_dir)).arch}_preprocess"
    server = tmp_path / "tritonserver"  # PyTriton's own layout: the stub of this Python in the Python backend
    shutil.copytree(get_root_module_path() / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_*"))
    stub = get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}")
    shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
    http_port = _port()
    command = [server / "bin" / "tritonserver", "--model-repository", out, "--backend-directory", server / "backends"]
    command += ["--http-port", http_port, "--grpc-port", _port(), "--allow-metrics", "false", "--exit-timeout-secs", 2]
    command += ["--model-control-mode", "explicit", "--load-model", name]
    libraries = f"{sysconfig.get_config_var('LIBDIR')}:{get_libs_path()}"  # this Python's libpython, as serve does
    env = {**os.environ, "LD_LIBRARY_PATH": libraries, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = tmp_path / "tritonserver.log"
    image = digit_jpeg(tmp_path / "images")
    with open(log, "wb") as sink:
        process = subprocess.Popen([str(part) for part in command], env=env, stdout=sink, stderr=subprocess.STDOUT)
    client = http.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        deadline = time.monotonic() + 90
        while not _ready(client, name):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        request = http.InferInput("IMAGE", [1, 1], "BYTES")
        request.set_data_from_numpy(np.array([[image.read_bytes()]], dtype=np.object_))
        tensor = client.infer(name, [request]).as_numpy("input")
        np.testing.assert_allclose(tensor, _verify_batch(image, demo_dir), rtol=0, atol=1e-6)
        request.set_data_from_numpy(np.array([[b"\x89PNG but cut short"]], dtype=np.object_))
        with pytest.raises(Exception, match="IMAGE: not a usable image .*; send JPEG or PNG bytes"):
            client.infer(name, [request])
    finally:
        client.close()
        process.terminate()
        process.wait(30)


def _ready(client, name: str) -> bool:
    try:
        return client.is_model_ready(name)
    except Exception:  # noqa: BLE001 - not listening yet
        return False
