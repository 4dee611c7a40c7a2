"""The typed records of ``inspect.json``: per-site accuracy and per-layer latency, JSON only at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInputError
from ..serde import RecordError, decode, encode

INSPECT_JSON = "inspect.json"
INSPECT_MD = "inspect.md"
INSPECT_PNG = "inspect.png"


@dataclass(frozen=True)
class SiteRecord:
    """One site of one typed file: where it is, how the data looks there, and both views' error.

    ``local_*``: only this site typed (None for a block output, which has no pair); ``accumulated_*``:
    the typed file up to the site's consumers; ``added``: the share of signal energy the site's layer adds
    to what reached it. ``alone_*``: the logits when only this site is typed (``alone_source``: ``saved``
    from the INT8 search, or ``measured`` here). ``search``: what the INT8 search did here; ``fix``: what
    keeping it in float would give, where measured.
    """

    tensor: str
    node: str
    module: str
    kind: str
    precision: str
    depth: int
    nodes: tuple[str, ...] = ()
    scale: float | None = None
    step: float = 0.0
    low: float = 0.0
    high: float = 0.0
    clipped: float = 0.0
    flushed: float = 0.0
    rel_error: float = 0.0
    local_sqnr_db: float | None = None
    local_cosine: float | None = None
    accumulated_sqnr_db: float | None = None
    accumulated_cosine: float | None = None
    reached_sqnr_db: float | None = None
    added: float | None = None
    local_rank: int | None = None
    accumulated_rank: int | None = None
    alone_rel_error: float | None = None
    alone_top1: float | None = None
    alone_source: str | None = None
    search: str = ""
    fix: str | None = None


@dataclass(frozen=True)
class ArtifactAccuracy:
    """Every site of one typed file, in model order, with the file's own output agreement on the same images."""

    artifact: str
    precision: str
    top1: float  # the typed file's top-1 agreement with model.onnx on the inspected images
    sites: tuple[SiteRecord, ...]

    def ranked(self, view: str) -> list[SiteRecord]:
        """The sites in ``view``'s order (``local`` or ``accumulated``), worst first."""
        key = "local_rank" if view == "local" else "accumulated_rank"
        return sorted((s for s in self.sites if getattr(s, key) is not None), key=lambda s: getattr(s, key))

    @property
    def worst_sqnr_db(self) -> float | None:
        values = [s.local_sqnr_db for s in self.sites if s.local_sqnr_db is not None]
        return min(values) if values else None


@dataclass(frozen=True)
class LayerTime:
    """One row of a runtime's per-layer profile, mapped to the ONNX nodes it ran."""

    name: str  # the runtime's layer name
    nodes: tuple[str, ...]  # ONNX nodes fused into it, the weighted one first (none: a layer the runtime added)
    layer_type: str
    kernel: str  # what ran: OpenVINO's exec type (jit_avx512_I8), ONNX Runtime's op and provider
    precision: str  # the precision it really ran in
    ms: float  # mean time per inference
    depth: int  # order of the first ONNX node in model.onnx (-1: unknown)
    weighted: bool  # it runs a Conv/Gemm/MatMul
    overhead: bool  # a reorder, reformat, conversion or a Q/DQ that runs on its own


@dataclass(frozen=True)
class ArtifactLatency:
    """One artifact on one runtime, layer by layer, measured in its own process."""

    artifact: str
    precision: str
    backend: str
    batch_size: int
    iterations: int
    layers: tuple[LayerTime, ...]
    wall_ms: float  # median end-to-end time in the same process
    bench_ms: float | None = None  # bench's median for the same runner and batch, when bench.json has it

    @property
    def total_ms(self) -> float:
        return sum(layer.ms for layer in self.layers)

    @property
    def int8_weighted(self) -> int:
        return sum(1 for layer in self.layers if layer.weighted and layer.precision.lower() in ("i8", "u8", "int8"))

    @property
    def weighted(self) -> int:
        return sum(1 for layer in self.layers if layer.weighted)

    @property
    def overhead_ms(self) -> float:
        return sum(layer.ms for layer in self.layers if layer.overhead)


@dataclass
class InspectRecord:
    """What ``inspect`` found in a directory: ``inspect.json``."""

    created: str
    data: str
    images: int
    accuracy: list[ArtifactAccuracy] = field(default_factory=list)
    latency: list[ArtifactLatency] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # accuracy passes, output checks, latency

    def to_dict(self) -> dict[str, Any]:
        """``inspect.json``: the record, each latency's sums beside its layers, non-finite figures as null."""
        from ..schemas import SCHEMA_VERSION

        data = encode(self, nan_as_null=True)
        for written, latency in zip(data["latency"], self.latency, strict=True):
            sums = {
                "total_ms": latency.total_ms,
                "int8_weighted": latency.int8_weighted,
                "weighted": latency.weighted,
                "overhead_ms": latency.overhead_ms,
            }
            written.update(encode(sums, nan_as_null=True))
        return {"schema_version": SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: object) -> InspectRecord:
        """``inspect.json`` read back (the sums are derived again); a malformed one is bad input: run inspect again."""
        try:
            return decode(cls, data, nan_as_null=True)
        except RecordError as exc:
            raise BadInputError(f"{INSPECT_JSON} is malformed ({exc}); run `resnext-deploy inspect` again") from None
