"""Each third-party patch holds only inside its block: the library's own methods before, after, and after an error."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import typer
from typer.core import TyperOption

from resnext_deploy.cli import app, main
from resnext_deploy.cli_options import help_default
from resnext_deploy.patches import pytriton_labels, typer_help

TYPER_METHODS = ("display_type_rich", "_extract_default_help_str", "_get_default_string")


def _typer_methods() -> dict[str, object]:
    return {name: TyperOption.__dict__[name] for name in TYPER_METHODS}


def test_the_typer_patch_holds_only_inside_its_block() -> None:
    before = _typer_methods()
    command = typer.main.get_command(app).commands["triton-repo"]  # type: ignore[attr-defined]
    ctx = typer.Context(command)
    [flag] = [param for param in command.params if "--trt-accelerator" in param.opts]
    assert flag.display_type_rich(ctx) is not None  # Typer's own: a type beside a flag that takes no value
    with typer_help(help_default):
        assert all(_typer_methods()[name] is not before[name] for name in TYPER_METHODS)
        assert flag.display_type_rich(ctx) is None
    assert _typer_methods() == before
    with pytest.raises(RuntimeError), typer_help(help_default):
        raise RuntimeError("a command failed")
    assert _typer_methods() == before


def test_main_renders_help_with_the_patch_and_leaves_typer_as_it_was(capsys, monkeypatch) -> None:
    before = _typer_methods()
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[default: 32]" in out and "[default: http]" in out and "<bool>" not in out
    assert _typer_methods() == before


@pytest.fixture
def fake_pytriton(monkeypatch: pytest.MonkeyPatch) -> type:
    """A stand-in ``pytriton.models.model.Model`` with the two methods the patch swaps, as PyTriton 0.7.0 has them."""

    class Model:
        def __init__(self, model_name: str) -> None:
            self.model_name = model_name

        def get_model_config(self) -> dict:
            return {"output": [{"name": "logits"}, {"name": "CLASS"}]}

        def get_proxy_model_files(self) -> dict[str, bytes]:
            return {}

    for name in ("pytriton", "pytriton.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("pytriton.models.model")
    module.Model = Model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pytriton.models.model", module)
    return Model


def test_the_pytriton_patch_labels_the_named_models_only_inside_its_block(fake_pytriton: type) -> None:
    model, other = fake_pytriton("m"), fake_pytriton("other")
    before = (fake_pytriton.get_model_config, fake_pytriton.get_proxy_model_files)
    with pytriton_labels(("m", "m_image"), "logits", "labels.txt", "a\nb\n"):
        assert model.get_model_config()["output"] == [
            {"name": "logits", "label_filename": "labels.txt"},
            {"name": "CLASS"},
        ]
        assert model.get_proxy_model_files() == {"file:labels.txt": b"a\nb\n"}
        assert other.get_model_config()["output"][0] == {"name": "logits"} and other.get_proxy_model_files() == {}
    assert (fake_pytriton.get_model_config, fake_pytriton.get_proxy_model_files) == before
    assert model.get_model_config()["output"][0] == {"name": "logits"} and model.get_proxy_model_files() == {}
    with pytest.raises(KeyboardInterrupt), pytriton_labels(("m",), "logits", "labels.txt", "a\n"):
        raise KeyboardInterrupt  # Ctrl-C while serving
    assert (fake_pytriton.get_model_config, fake_pytriton.get_proxy_model_files) == before


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="needs nvidia-pytriton (the triton extra)")
def test_pytritons_own_model_has_the_methods_the_patch_swaps() -> None:
    from pytriton.models.model import Model

    before = {name: Model.__dict__[name] for name in ("get_model_config", "get_proxy_model_files")}
    with pytriton_labels(("m",), "logits", "labels.txt", "a\n"):
        assert Model.__dict__["get_model_config"] is not before["get_model_config"]
    assert {name: Model.__dict__[name] for name in before} == before
