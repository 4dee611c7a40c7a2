"""The CLI's option groups: each declared once, defaults only in the bundles, the bundle passed down whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.cli import app, main
from resnext_deploy.errors import BadInputError, ExitCode
from resnext_deploy.evaluate.settings import BenchSettings
from resnext_deploy.precision.options import PrecisionOptions


def _options(command: str) -> dict[str, object]:
    """Each option of a command by its first flag, with the default the CLI itself gives it."""
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {param.opts[0]: param.default for param in click_command.params}


class Captured(BadInputError):
    """Stops a command where the library would start its work, holding what the CLI passed down."""


def test_build_trt_and_pipeline_share_one_declaration_of_the_precision_and_build_options() -> None:
    build_trt, pipeline = _options("build-trt"), _options("pipeline")
    shared = {"--calib-dir", "--search", "--int8-cosine", "--min-batch", "--version-compatible", "--timing-cache"}
    assert shared <= build_trt.keys() & pipeline.keys()
    assert {flag for flag in build_trt if flag not in pipeline} == {"--fp16", "--int8", "--onnx-only", "--trt-major"}
    # Defaults live in the bundles: the CLI gives the grouped options none, so what is not said is not passed.
    assert all(pipeline[flag] is None for flag in ("--calib-count", "--budget", "--max-batch", "--ov-hint"))


def test_bench_passes_the_bundle_whole_with_the_dataclass_defaults(tiny_dir: Path, monkeypatch) -> None:
    seen: list[BenchSettings] = []

    def capture(directory, settings, **_kwargs):
        seen.append(settings)
        raise Captured("captured")

    monkeypatch.setattr("resnext_deploy.evaluate.bench.run_bench", capture)
    assert main(["bench", "--dir", str(tiny_dir)]) == ExitCode.BAD_INPUT
    assert main(["bench", "--dir", str(tiny_dir), "--budget", "30", "--ov-hint", "throughput"]) == ExitCode.BAD_INPUT
    assert seen[0] == BenchSettings()
    assert seen[1].budget_s == 30 and seen[1].backend_options == {"openvino": {"performance_hint": "throughput"}}


def test_build_trt_passes_the_precision_bundle_whole(tiny_dir: Path, monkeypatch) -> None:
    seen: list[PrecisionOptions] = []

    def capture(directory, precision, options, **_kwargs):
        seen.append(options)
        raise Captured("captured")

    monkeypatch.setattr("resnext_deploy.precision.typed.make_typed_onnx", capture)
    args = ["build-trt", "--dir", str(tiny_dir), "--int8", "--onnx-only", "--no-search", "--exclude", "a*"]
    assert main([*args, "--int8-cosine", "0.5", "--calib-count", "64"]) == ExitCode.BAD_INPUT
    [options] = seen
    assert not options.search and options.exclude == ("a*",) and options.calib_count == 64
    assert options.tolerance("int8").cosine_min == 0.5
    assert options.search_max_fraction == PrecisionOptions().search_max_fraction


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--min-batch", "0"], ExitCode.BAD_INPUT, "--min-batch must be at least 1"),
        (["--calib-count", "0"], ExitCode.BAD_INPUT, "--calib-count must be at least 1"),
        (["--int8-top1", "2"], ExitCode.BAD_INPUT, "--int8-top1 must be between"),
        (["--hardware-compat", "turing+"], ExitCode.USAGE, "--hardware-compat"),
    ],
)
def test_a_bad_option_is_one_line_before_any_work(tiny_dir: Path, capsys, flags, code, message) -> None:
    before = sorted(p.name for p in tiny_dir.iterdir())
    assert main(["build-trt", "--dir", str(tiny_dir), "--fp16", "--onnx-only", *flags]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert sorted(p.name for p in tiny_dir.iterdir()) == before


def test_frozen_build_options_are_validated_when_made() -> None:
    with pytest.raises(BadInputError, match="min <= opt <= max"):
        BuildOptions(opt_batch=64)
    with pytest.raises(AttributeError):
        BuildOptions().max_batch = 64  # type: ignore[misc]


@pytest.mark.parametrize("command", ["verify", "bench", "pipeline", "triton-repo"])
def test_backend_knobs_are_flags_of_every_command_that_uses_backends(command: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--ov-hint" in out and "latency|throughput" in out and "<bool>" not in out


def _defaults_shown(command: str) -> dict[str, str | None]:
    """Each option of ``command`` that has a default (the bundle's for a grouped one): the text its --help
    shows for it, or None when its help has no ``[default: ...]``."""
    from typer.core import TyperOption

    from resnext_deploy.cli_options import help_default
    from resnext_deploy.patches import typer_help

    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    ctx = typer.Context(click_command)
    shown: dict[str, str | None] = {}
    for param in click_command.params:
        if not isinstance(param, TyperOption) or param.is_flag and not param.secondary_opts:
            continue  # a lone flag (--fp16) is off unless given: it has no default to show
        default = help_default(param.name) if help_default(param.name) is not None else param.default
        if default is None or default == () or param.opts[0] == "--help":
            continue
        if default == "":  # "not given" (verify's --backends): the help says in words what that means
            assert "default: " in (param.help or "").lower(), param.opts[0]
            continue
        with typer_help(help_default):  # as main() renders help
            record = param.get_help_record(ctx)
        text = " ".join((record or ("", ""))[1].split())
        shown[param.opts[0]] = text.split("[default: ", 1)[1].split("]", 1)[0] if "[default: " in text else None
    return shown


@pytest.mark.parametrize("command", sorted(typer.main.get_command(app).commands))  # type: ignore[attr-defined]
def test_every_option_with_a_default_shows_it_in_help(command: str, monkeypatch, capsys) -> None:
    shown = _defaults_shown(command)
    assert all(text for text in shown.values()), {flag: text for flag, text in shown.items() if not text}
    monkeypatch.setenv("COLUMNS", "250")
    assert main([command, "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for text in shown.values():
        assert f"[default: {text}]" in help_text


def test_help_shows_the_bundles_own_defaults() -> None:
    build, bench = _defaults_shown("build-trt"), _defaults_shown("bench")
    precision, settings = PrecisionOptions(), BenchSettings()
    assert build["--calib-count"] == str(precision.calib_count) and build["--max-batch"] == str(
        BuildOptions().max_batch
    )
    assert build["--search"] == "search" and build["--int8-cosine"] == "0.99"
    assert bench["--budget"] == str(settings.budget_s) and bench["--precisions"] == ",".join(settings.precisions)
    assert bench["--ov-hint"] == "latency"


def test_serve_and_triton_repo_pass_their_bundles_whole_with_one_batching_group(
    tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import resnext_deploy.serving.pytriton as pytriton
    import resnext_deploy.serving.triton_repo as triton_repo
    from resnext_deploy.serving.options import Batching, ServeOptions, TritonRepoOptions

    seen: list[object] = []
    monkeypatch.setattr(pytriton, "serve", lambda _directory, options, **_kwargs: seen.append(options))
    monkeypatch.setattr(triton_repo, "make_triton_repo", lambda _d, _out, options, **_kwargs: seen.append(options))
    assert main(["serve", "--dir", str(tiny_dir), "--instances", "2", "--no-http"]) == 0
    repo_flags = ["--out", str(tmp_path / "repo"), "--max-queue-delay-us", "0", "--ov-hint", "throughput"]
    assert main(["triton-repo", "--dir", str(tiny_dir), *repo_flags]) == 0
    serve, repo = seen
    assert isinstance(serve, ServeOptions) and isinstance(repo, TritonRepoOptions)
    assert serve == ServeOptions(batching=Batching(ServeOptions().batching.max_batch_size, instances=2), http=False)
    assert repo.batching == Batching(max_queue_delay_us=0) and repo.batching.max_batch_size is None
    assert set(repo.backend_options) == {"openvino"}
    shared = {"--max-batch-size", "--max-queue-delay-us", "--instances"}
    assert shared <= _options("serve").keys() & _options("triton-repo").keys()


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("serve", ["--instances", "0"], "--instances must be between 1 and"),
        ("serve", ["--port", "9000", "--grpc-port", "9000"], "three different ports"),
        ("triton-repo", ["--out", "repo", "--max-queue-delay-us", "-1"], "--max-queue-delay-us must be between 0"),
        ("triton-repo", ["--out", "repo", "--onnx-kind", "cpu", "--trt-accelerator"], "needs GPU instances"),
    ],
)
def test_a_bad_serving_option_is_one_line_of_bad_input(tiny_dir: Path, capsys, command, flags, message) -> None:
    assert main([command, "--dir", str(tiny_dir), *flags]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
