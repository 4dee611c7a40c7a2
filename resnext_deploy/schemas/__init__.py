"""JSON Schemas of the JSON files this tool writes, shipped with the package (documented in docs/outputs.md).

Every such file carries ``schema_version``; it changes when a field is removed or changes meaning, so
a consumer can tell which schema to read a file with.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of output ``name`` (``verify``, ``bench``, ``bench_triton``, ``calibration``, ``inspect``)."""
    return json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
