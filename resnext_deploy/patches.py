"""Every change this tool makes to a third-party library's code, each applied only inside its ``with`` block.

Each patch swaps methods of one class for the length of the block and puts the originals back after, whatever
happens inside; each says what it changes, why there is no other way, and the versions it was checked against.
A new version of the library may change what is patched: the tests in ``tests/test_patches.py`` notice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from typing import Any


@contextlib.contextmanager
def _swapped(cls: type, methods: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """``cls``'s methods replaced by ``methods`` inside the block, the originals restored after."""
    originals = {name: cls.__dict__.get(name) for name in methods}  # None: inherited, so removed after
    for name, method in methods.items():
        setattr(cls, name, method)
    try:
        yield
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


def typer_help(default_for: Callable[[str | None], Any]) -> contextlib.AbstractContextManager[None]:
    """Typer's help, inside the block, as the option groups need it: ``TyperOption``'s type and default texts.

    - No type beside a flag that takes no value (Typer's Rich help shows ``<bool>``). An option's own empty
      metavar reaches the flags we declare but not Click's ``--help``, which every command has.
    - A grouped flag's default is its bundle's, ``default_for(parameter name)`` (the flag itself defaults to
      "not given", None, so that only what was said reaches the bundle); None there: Typer's own.
    - A comma list shows as it is typed; an on/off pair (``--search/--no-search``) names the side that is on.

    Typer offers no hook for any of these. Checked against Typer 0.29.2 (``TyperOption.display_type_rich``,
    ``_extract_default_help_str`` and ``_get_default_string``, which ``typer.rich_utils`` calls).
    """
    from typer.core import TyperOption

    option_type = TyperOption.display_type_rich
    option_default = TyperOption._extract_default_help_str
    option_text = TyperOption._get_default_string

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else option_type(self, ctx)

    def extract_default_help_str(self: TyperOption, *, ctx: Any) -> Any:
        found = default_for(self.name)
        return option_default(self, ctx=ctx) if found is None else found

    def get_default_string(self: TyperOption, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
        if self.is_bool_flag and self.secondary_opts and default_for(self.name) is not None:
            return (self.opts if default_value else self.secondary_opts)[0].lstrip("-")
        if isinstance(default_value, (tuple, list)):
            return ",".join(str(v) for v in default_value)
        return option_text(self, ctx=ctx, show_default_is_str=show_default_is_str, default_value=default_value)

    return _swapped(
        TyperOption,
        {
            "display_type_rich": display_type_rich,
            "_extract_default_help_str": extract_default_help_str,
            "_get_default_string": get_default_string,
        },
    )


def pytriton_labels(
    models: Collection[str], output: str, file_name: str, text: str
) -> contextlib.AbstractContextManager[None]:
    """PyTriton's ``Model``, inside the block, gives ``models`` a Triton label file, as ``triton-repo`` does.

    ``output``'s entry of each such model's configuration names ``file_name``, and the files PyTriton sends
    to Triton include it, holding ``text``; so classification requests return class names. PyTriton's
    ``ModelConfig`` has no label field, and the configuration is made inside ``Triton.run()``, so the two
    methods that make it are swapped while ``serve`` runs its server. Checked against PyTriton 0.7.0
    (``pytriton.models.model.Model.get_model_config`` and ``get_proxy_model_files``).
    """
    from pytriton.models.model import Model

    model_config, proxy_files = Model.get_model_config, Model.get_proxy_model_files

    def get_model_config(model: Model) -> dict:
        data = model_config(model)
        if model.model_name in models:
            for item in data.get("output", []):
                if item.get("name") == output:
                    item["label_filename"] = file_name
        return data

    def get_proxy_model_files(model: Model) -> dict[str, bytes]:
        data = proxy_files(model)
        if model.model_name in models:
            data[f"file:{file_name}"] = text.encode()
        return data

    return _swapped(Model, {"get_model_config": get_model_config, "get_proxy_model_files": get_proxy_model_files})
