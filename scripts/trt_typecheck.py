#!/usr/bin/env python3
"""Type-check the TensorRT backend against NVIDIA's real Python bindings of TensorRT 10.x and 11.x.

``make trt-typecheck`` runs this. TensorRT does not install on a machine without NVIDIA's libraries, but its
binding wheels (``tensorrt-cu12-bindings``, ``tensorrt-cu13-bindings``) hold the real pybind11 extension,
which links against nine C functions of ``libnvinfer``, ``libnvonnxparser`` and ``libnvinfer_plugin``. For
each version this script:

1. downloads the binding wheel with pip into a cache (``--cache``; about 1.3 MB each);
2. builds the three libraries with ``cc`` as stubs whose functions return NULL, so that ``import tensorrt``
   works for introspection (nothing is called at import; ``trt.Builder(...)`` would raise ``TypeError``);
3. generates ``.pyi`` stubs with pybind11-stubgen, importing tensorrt in a subprocess over the stubs;
4. patches them: three fixes mypy needs to parse them, and what pybind11 does that the generated signatures
   do not say (tuples and lists convert to ``Dims``, ``Dims`` iterates, ``IHostMemory`` is a buffer, and
   the methods whose C++ result may be NULL can return ``None``);
5. runs mypy, configured in the project's ``pyproject.toml`` (``[tool.mypy]``: the whole package), with those
   stubs.

Exit status: 0 when mypy passes against every version, 1 when it reports an error, 2 when the bindings or
tools could not be prepared (no network to PyPI, no C compiler).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# Oldest to newest: the oldest TensorRT the project supports (10.8), a recent 10.x and the newest 11.x
# (binding wheels for the running CPython are fetched; 10.8 has none for 3.13).
VERSIONS = {
    "10.8.0.43": "tensorrt-cu12-bindings",
    "10.13.3.9": "tensorrt-cu12-bindings",
    "11.4.0.106": "tensorrt-cu13-bindings",
}
# What tensorrt.so takes from each library (`nm -D --undefined-only tensorrt.so`).
LIBRARIES = {
    "nvinfer": [
        "createInferBuilder_INTERNAL",
        "createInferRuntime_INTERNAL",
        "createInferRefitter_INTERNAL",
        "getPluginRegistry",
        "getBuilderPluginRegistry",
    ],
    "nvonnxparser": ["createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion"],
    "nvinfer_plugin": ["initLibNvInferPlugins"],
}
# Methods whose C++ result is a pointer that is NULL on failure, which pybind11 returns as None.
NULLABLE = ["build_serialized_network", "deserialize_cuda_engine", "create_execution_context", "create_timing_cache"]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnext-deploy-trt-typecheck"
PROJECT = Path(__file__).resolve().parent.parent


class PrepareError(Exception):
    """The bindings, or the tools to read them, could not be prepared."""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise PrepareError(f"`{' '.join(cmd[:5])} ...` failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def prepare(version: str, cache: Path) -> Path:
    """The directory holding the raw generated stubs of one version (made once, then reused)."""
    tag = f"{version}-cp{sys.version_info.major}{sys.version_info.minor}"
    home = cache / tag
    raw = home / "stubs"
    if (raw / "tensorrt" / "tensorrt.pyi").exists():
        return raw
    major = version.split(".")[0]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp_name:
        tmp = Path(tmp_name)
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(tmp),
              f"{VERSIONS[version]}=={version}"])  # fmt: skip
        wheel = next(tmp.glob("*.whl"))
        package = tmp / "site" / "tensorrt"
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith("tensorrt_bindings/"):
                    target = package / name.removeprefix("tensorrt_bindings/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
        libs = tmp / "lib"
        libs.mkdir()
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise PrepareError("no C compiler (cc) to build the stub libraries; apt-get install gcc")
        for lib, symbols in LIBRARIES.items():
            source = libs / f"{lib}.c"
            source.write_text("".join(f"void *{symbol}(void) {{ return 0; }}\n" for symbol in symbols))
            soname = f"lib{lib}.so.{major}"
            _run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(libs / soname), str(source)])
        env = {**os.environ, "PYTHONPATH": str(tmp / "site"), "LD_LIBRARY_PATH": str(libs)}
        imported = _run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"], env=env).strip()
        if imported != version:
            raise PrepareError(f"{wheel.name} imports as TensorRT {imported}, expected {version}")
        # C++ types the bindings do not name in Python (nvinfer1::IBuilder) are printed as they are; patch() maps them.
        _run([sys.executable, "-m", "pybind11_stubgen", "tensorrt", "-o", str(tmp / "stubs"), "--ignore-all-errors",
              "--print-invalid-expressions-as-is"], env=env)  # fmt: skip
        home.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(raw, ignore_errors=True)
        (tmp / "stubs").rename(raw)
    return raw


# Additions to the generated classes: what pybind11 and TensorRT's own Python code give them.
CLASS_ADDITIONS = {
    "Dims": "def __iter__(self) -> typing.Iterator[builtins.int]: ...",  # it iterates like the tuple it mirrors
    "IHostMemory": "def __buffer__(self, flags: builtins.int, /) -> memoryview: ...",  # bytes(plan), memoryview(plan)
}
DIMS_LIKE = "Dims | typing.Sequence[typing.SupportsInt]"  # pybind11 converts any sequence of ints to Dims


CPP_NAME = re.compile(r"\b(?:nvinfer1|nvonnxparser)::(?:v_\d+_\d+::)?(\w+)")  # nvinfer1::v_1_0::IErrorRecorder
OTHER_CPP = re.compile(r"\b(?:\w+::)+\w+(?:<[\w:, <>]*>)?")  # anything else C++ (detail::accessor<...>)
CPP_DEFAULT = re.compile(r"= <[^<>]*>")  # a default value shown as its repr: = <PluginFieldType.UNKNOWN: 8>


def _python_type(match: re.Match[str], classes: set[str]) -> str:
    """The Python class of a C++ type (IBuilder is Builder, IParserError is ParserError), else ``object``."""
    name = match.group(1)
    if name in classes:
        return name
    if name.startswith("I") and name[1:] in classes:
        return name[1:]
    return "object"


def patch(text: str) -> str:
    """What mypy needs to parse pybind11-stubgen's output of tensorrt, and what pybind11 converts implicitly.

    Nothing from the bindings is left ``Any``: a C++ type is mapped to its Python class, and where there is
    none (or the binding returns a plain Python object) the type is ``object``, which cannot be used unchecked.
    """
    classes = set(re.findall(r"^class (\w+)", text, flags=re.MULTILINE))
    lines = []
    for line in text.splitlines():
        code = line.lstrip()
        if code.startswith("def ") or (line[:1] == " " and re.match(r"\w+: ", code)):
            line = re.sub(r"\bbool\b", "builtins.bool", line)  # the module's `bool: DataType` shadows the builtin
            line = CPP_NAME.sub(lambda m: _python_type(m, classes), line)
            line = OTHER_CPP.sub("object", line)
            line = CPP_DEFAULT.sub("= ...", line)
            line = re.sub(r"-> typing\.Any:", "-> object:", line)
        if code.startswith("def "):
            line = re.sub(r"([(,] ?)in: ", r"\1in_: ", line)  # a parameter named `in`
            line = re.sub(r"(= \w+, \w+: [\w.]+)\)", r"\1 = ...)", line)  # add_scale_nd: required after defaults
            line = re.sub(r"(?<!self): Dims(?=[,)= ])", f": {DIMS_LIKE}", line)
            line = re.sub(rf"(def (?:{'|'.join(NULLABLE)})\(.*\) -> )([\w.]+):", r"\1\2 | None:", line)
        lines.append(line)
    text = "\n".join(lines) + "\n"
    future = "from __future__ import annotations\n"
    if future in text:
        text = text.replace(future, f"{future}import builtins\n", 1)
    for name, method in CLASS_ADDITIONS.items():
        text = text.replace(f"\nclass {name}:\n", f"\nclass {name}:\n    {method}\n", 1)
    return text


def patched(raw: Path, home: Path) -> Path:
    """The patched copy of the raw stubs (rewritten only when its text changes, so mypy's cache stays warm)."""
    out = home / "patched"
    for source in raw.rglob("*.pyi"):
        target = out / source.relative_to(raw)
        text = patch(source.read_text())
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return out


def check(version: str, project: Path, cache: Path) -> tuple[bool, str]:
    """mypy against one version's stubs: (passed, mypy's report)."""
    raw = prepare(version, cache)
    stubs = patched(raw, raw.parent)
    env = {**os.environ, "MYPYPATH": str(stubs)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(project / "pyproject.toml"),
           "--cache-dir", str(raw.parent / "mypy-cache"), "--python-version", "3.11"]  # fmt: skip
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env, check=False)
    if done.returncode not in (0, 1):
        raise PrepareError(f"mypy could not run: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", type=Path, default=PROJECT, help="the checkout to check (default: this one)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"wheels, stubs (default: {DEFAULT_CACHE})")
    parser.add_argument("--versions", default=",".join(VERSIONS), help="comma-separated, from: " + ", ".join(VERSIONS))
    args = parser.parse_args(argv)
    versions = [v for v in args.versions.split(",") if v]
    unknown = [v for v in versions if v not in VERSIONS]
    if unknown:
        parser.error(f"unknown version(s) {', '.join(unknown)}; known: {', '.join(VERSIONS)}")
    failed = []
    for version in versions:
        start = time.perf_counter()
        try:
            passed, report = check(version, args.project.resolve(), args.cache)
        except PrepareError as exc:
            print(f"trt-typecheck: TensorRT {version}: {exc}", file=sys.stderr)
            return 2
        print(f"TensorRT {version}: {'passed' if passed else 'FAILED'} ({time.perf_counter() - start:.1f} s)")
        if not passed:
            print(report)
            failed.append(version)
    if failed:
        print(f"trt-typecheck: mypy found errors against TensorRT {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"trt-typecheck: the package type-checks, its TensorRT code against TensorRT {', '.join(versions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
