"""The command line's option groups, each declared once: its flags, and the validated bundle it makes.

A command takes a group as one parameter (``source: SourceOptions``); :func:`grouped` shows Typer the
group's flags in its place and calls the command with the bundle made from them. A flag left out is not
passed on, so every default lives in its dataclass alone (``SourceOptions``, ``PrecisionOptions``,
``BuildOptions``, ``BenchSettings``, the tolerance table); ``--help`` reads it from there (:func:`help_default`,
only when help is shown: those modules import torch). The backends' own knobs are read from the
registry each time the command line is parsed, so a registered backend's knob is a flag with no edit here.

Typer stays rather than plain Click: each group shows as a panel of its Rich help, and a group is a list of
typed parameters, which is what Typer reads (:func:`resnext_deploy.patches.typer_help` is the patch its help
still needs).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from .artifacts.precisions import Precision
from .errors import BadInputError
from .logs import log
from .precision.methods import METHODS


@dataclass(frozen=True)
class Flag:
    """One option of a group: the bundle field it fills, its flag(s), help, and the type Typer parses.

    ``convert`` turns the parsed value into the field's (a comma list into a tuple); it runs only when the
    flag was given.
    """

    field: str
    decls: str
    help: str
    kind: Any = str
    convert: Callable[[Any], Any] | None = None
    panel: str | None = None  # None: the group's

    def parameter(self, name: str, panel: str | None) -> inspect.Parameter:
        option = typer.Option(
            *self.decls.split(" "),
            help=self.help,
            rich_help_panel=self.panel or panel,
        )
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[self.kind], option]
        )


class Group:
    """Flags that make one bundle: ``make(given)`` gets only the fields whose flags were given.

    ``parts`` are groups whose bundles fill one field each (the tolerances inside the precision options).
    """

    def __init__(
        self,
        make: Callable[[dict[str, Any]], Any],
        flags: Sequence[Flag] = (),
        panel: str | None = None,
        parts: Mapping[str, Group] | None = None,
        defaults: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.make = make
        self._flags = tuple(flags)
        self.panel = panel
        self.parts = dict(parts or {})
        self._defaults = defaults
        self._known: Mapping[str, Any] | None = None

    def flags(self) -> tuple[Flag, ...]:
        return self._flags

    def defaults(self) -> Mapping[str, Any]:
        """Each field's default, read from the bundle (imported on first use, then kept)."""
        if self._known is None:
            self._known = dict(self._defaults()) if self._defaults else {}
        return self._known

    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        for flag in self.flags():
            key = f"{prefix}__{flag.field}"
            if _HELP.setdefault(key, (self, flag.field)) != (self, flag.field):  # --help would show the other's default
                raise ValueError(f"two option groups make the parameter {key}; give the commands' groups other names")
        own = [flag.parameter(f"{prefix}__{flag.field}", self.panel) for flag in self.flags()]
        return own + [p for name, part in self.parts.items() for p in part.parameters(f"{prefix}__{name}")]

    def bundle(self, prefix: str, values: dict[str, Any]) -> Any:
        """The bundle made from (and removing) this group's values among a command's keyword arguments."""
        given = {}
        for flag in self.flags():
            value = values.pop(f"{prefix}__{flag.field}", None)
            if value is not None:
                given[flag.field] = flag.convert(value) if flag.convert else value
        for name, part in self.parts.items():
            bundle = part.bundle(f"{prefix}__{name}", values)
            if bundle:
                given[name] = bundle
        return self.make(given)


# A grouped flag's parameter name -> its group and field, so that --help can show the bundle's default.
_HELP: dict[str, tuple[Group, str]] = {}


def help_default(name: str | None) -> Any:
    """The default ``--help`` shows for a grouped flag (the bundle's), or None (not grouped, or no default)."""
    group, field = _HELP.get(name or "", (None, ""))
    return None if group is None else group.defaults().get(field)


def _fields(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


class BackendGroup(Group):
    """Every registered backend's knobs that have a flag; the bundle maps backend name to the knobs given."""

    def __init__(self) -> None:
        super().__init__(self._by_backend, panel="Backend options", defaults=self._option_defaults)

    @classmethod
    def _option_defaults(cls) -> dict[str, Any]:
        return {f"{backend}__{option.name}": option.default for backend, option in cls._declared()}

    @staticmethod
    def _declared() -> list[tuple[str, Any]]:
        from .backends.registry import backends

        return [(backend.name, option) for backend in backends().values() for option in backend.options if option.flag]

    def flags(self) -> tuple[Flag, ...]:
        flags = []
        for backend, option in self._declared():
            kind = Literal[option.choices] if option.choices else type(option.default)
            text = f"{option.help} ({backend})"
            flags.append(Flag(f"{backend}__{option.name}", option.flag, text, kind))
        return tuple(flags)

    @staticmethod
    def _by_backend(given: dict[str, Any]) -> dict[str, dict[str, Any]]:
        options: dict[str, dict[str, Any]] = {}
        for key, value in given.items():
            backend, name = key.split("__", 1)
            options.setdefault(backend, {})[name] = value
        return options


class GroupedCommand:
    """A command whose signature, as Typer reads it, has each group parameter replaced by the group's flags."""

    def __init__(self, func: Callable[..., Any], groups: Mapping[str, Group]) -> None:
        self.func = func
        self.groups = dict(groups)
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__
        self.__module__ = func.__module__
        self.__annotations__: dict[str, Any] = {}  # Typer reads the types from the signature below

    @property
    def __signature__(self) -> inspect.Signature:
        own = []
        for param in inspect.signature(self.func).parameters.values():
            if param.name in self.groups:
                continue
            annotation = param.annotation
            if isinstance(annotation, str):  # postponed annotations: evaluate the command's own, not the bundles'
                annotation = eval(annotation, self.func.__globals__)
            own.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
        return inspect.Signature(own + [p for key, group in self.groups.items() for p in group.parameters(key)])

    def __call__(self, **values: Any) -> Any:
        for key, group in self.groups.items():
            values[key] = group.bundle(key, values)
        return self.func(**values)


def grouped(**groups: Group) -> Callable[[Callable[..., Any]], GroupedCommand]:
    """Decorate a command whose parameters named like ``groups`` take those groups' bundles."""
    return lambda func: GroupedCommand(func, groups)


# The bundles, imported when a command runs: their modules import torch or numpy, the command line does not.
def _precision_defaults() -> dict[str, Any]:
    from .precision.options import PrecisionOptions

    return _fields(PrecisionOptions)


def _build_defaults() -> dict[str, Any]:
    from .backends.tensorrt import BuildOptions

    return _fields(BuildOptions)


def _bench_defaults() -> dict[str, Any]:
    from .evaluate.settings import BenchSettings

    return _fields(BenchSettings)


def _tolerance_defaults() -> dict[str, Any]:
    from .parity import DEFAULT_TOLERANCES

    fields = {"cosine": "cosine_min", "top1": "top1_min", "max_accuracy_drop": "accuracy_drop_max"}
    return {
        f"{precision}_{flag}": getattr(DEFAULT_TOLERANCES[precision], attribute)
        for precision in ("fp16", "int8")
        for flag, attribute in fields.items()
    }


def _source(given: dict[str, Any]) -> Any:
    from .source import SourceOptions

    return SourceOptions(**given)


def _precision(given: dict[str, Any]) -> Any:
    from .precision.options import PrecisionOptions

    return PrecisionOptions(**given)


def _build(given: dict[str, Any]) -> Any:
    from .backends.tensorrt import BuildOptions

    return BuildOptions(**given)


def _bench(given: dict[str, Any]) -> Any:
    from .evaluate.settings import BenchSettings

    return BenchSettings(**given)


def comma_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """A comma list of choices; an unknown one is a usage error (exit 2), as Typer's own choices are."""
    from .evaluate.settings import parse_list

    try:
        return parse_list(text, allowed, option)
    except BadInputError as exc:
        raise typer.BadParameter(str(exc).removeprefix(f"{option} "), param_hint=f"'{option}'") from None


def backend_list(text: str) -> tuple[str, ...] | None:
    from .backends.registry import backend_names

    return comma_list(text, backend_names(), "--backends") if text else None


def _precisions(text: str) -> tuple[str, ...]:
    return comma_list(text, Precision.names(), "--precisions")


def _batch_sizes(text: str) -> tuple[int, ...]:
    from .evaluate.settings import parse_batch_sizes

    return parse_batch_sizes(text)


def _threads(threads: int) -> int | None:
    from .environment import cap_threads

    return cap_threads(threads, log)


def _tolerances(given: dict[str, Any]) -> dict[str, Any]:
    from .evaluate.verify import tolerance_overrides

    return tolerance_overrides(given) if given else {}


_PRE = "Preprocessing (recorded in model.onnx; every later step uses it)"
SOURCE = Group(
    _source,
    [
        Flag(
            "arch",
            "--arch",
            "Built-in architecture or one of timm's ResNeXt family (see `archs`); default: the demo model, or the "
            "architecture of a --preset weights tag.",
        ),
        Flag("checkpoint", "--checkpoint", ".pth/.pt/.bin/.safetensors state dict.", Path),
        Flag("num_classes", "--num-classes", "Classifier outputs; default: the checkpoint's.", int),
        Flag("image_size", "--image-size", "Input height and width.", int),
        Flag(
            "preset",
            "--preset",
            "torchvision-v1 (resize 256, bilinear), torchvision-v2 (resize 232, bilinear), timm "
            "(crop-pct 0.95, bicubic), or a weights tag: timm's (resnext50_32x4d.tv_in1k) or torchvision's "
            "(ResNeXt101_64X4D_Weights.IMAGENET1K_V1); default: the architecture's.",
            panel=_PRE,
        ),
        Flag("resize_size", "--resize-size", "Short side before the center crop.", int, panel=_PRE),
        Flag("crop_pct", "--crop-pct", "Image size / resize size (timm's crop_pct).", float, panel=_PRE),
        Flag("interpolation", "--interpolation", "bilinear or bicubic.", panel=_PRE),
        Flag("mean", "--mean", "R,G,B mean (0-1 scale).", panel=_PRE),
        Flag("std", "--std", "R,G,B std (0-1 scale).", panel=_PRE),
        Flag(
            "class_names",
            "--class-names",
            "Class names: a file with one per line, or a folder of class subfolders (recorded in model.onnx, the "
            "manifest and Triton's labels.txt). pipeline's default: the class subfolders of --calib-dir or --data "
            "when they are as many as the model's classes.",
            Path,
        ),
    ],
)

TOLERANCES = Group(
    _tolerances,
    [
        Flag("fp16_cosine", "--fp16-cosine", "Min per-image cosine for FP16.", float),
        Flag("fp16_top1", "--fp16-top1", "Min decisive top-1 agreement for FP16, a fraction.", float),
        Flag("int8_cosine", "--int8-cosine", "Min per-image cosine for INT8.", float),
        Flag("int8_top1", "--int8-top1", "Min decisive top-1 agreement for INT8, a fraction.", float),
        Flag("int8_max_accuracy_drop", "--int8-max-accuracy-drop", "Max accuracy loss of INT8 in points.", float),
    ],
    panel="Tolerances",
    defaults=_tolerance_defaults,
)

_SEARCH = "INT8 search"
PRECISION = Group(
    _precision,
    [
        Flag(
            "calib_source",
            "--calib-dir",
            "Calibration images (folder, recursive) or .npy/.npz of preprocessed arrays. "
            "Default: the bundled digits for the demo model; required for INT8 otherwise.",
            Path,
        ),
        Flag("calib_count", "--calib-count", "Calibration images, seeded, class-balanced.", int),
        Flag("calib_method", "--calib-method", "Calibration method.", Literal[METHODS]),
        Flag("percentile", "--percentile", "For --calib-method percentile.", float),
        Flag("exclude", "--exclude", "Node-name glob left unquantized (repeatable).", list[str], tuple),
        Flag("high_precision", "--high-precision", "What INT8 leaves unquantized runs in.", Literal["fp16", "fp32"]),
        Flag(
            "check_source",
            "--check-data",
            "Held-out images the typed files are checked on. Default: 10% (at least 32) of --calib-dir.",
            Path,
        ),
        Flag("search", "--search/--no-search", "Search when INT8 fails (--no-search: fail).", bool, panel=_SEARCH),
        Flag(
            "search_max_fraction",
            "--search-max-fraction",
            "Max share of layers kept out of INT8.",
            float,
            panel=_SEARCH,
        ),
        Flag("search_minutes", "--search-minutes", "Time limit of the INT8 search.", float, panel=_SEARCH),
    ],
    parts={"tolerances": TOLERANCES},
    defaults=_precision_defaults,
)

BUILD = Group(
    _build,
    [
        Flag("min_batch", "--min-batch", "Profile minimum batch.", int),
        Flag("opt_batch", "--opt-batch", "Profile optimum batch.", int),
        Flag("max_batch", "--max-batch", "Profile maximum batch.", int),
        Flag("workspace_mb", "--workspace-mb", "Builder workspace limit (MiB).", int),
        Flag("opt_level", "--opt-level", "Builder optimization level 0-5.", int),
        Flag("timing_cache", "--timing-cache", "Loaded when present, saved after.", Path),
        Flag(
            "hardware_compat",
            "--hardware-compat",
            "Engine runs on other GPUs of these generations.",
            Literal["ampere+", "same-cc"],
        ),
        Flag("version_compatible", "--version-compatible", "Engine runs on later TensorRT versions.", bool),
    ],
    panel="TensorRT build",
    defaults=_build_defaults,
)

BACKEND_OPTIONS = BackendGroup()

BENCH = Group(
    _bench,
    [
        Flag(
            "backends",
            "--backends",
            "Comma list of backends (see `info`); default: every one available here.",
            convert=backend_list,
        ),
        Flag(
            "precisions",
            "--precisions",
            f"Comma list: {', '.join(Precision.names())} (bf16: OpenVINO, only when named).",
            convert=_precisions,
        ),
        Flag("batch_sizes", "--batch-sizes", "Comma list of batch sizes.", convert=_batch_sizes),
        Flag(
            "budget_s",
            "--budget",
            "Seconds for the whole bench run; slices, then rounds, shrink to fit (never below --min-rounds).",
            float,
        ),
        Flag("duration_s", "--duration", "Seconds measured per runner and batch size, within --budget.", float),
        Flag("warmup_ms", "--warmup-ms", "Warm-up time per runner and batch size.", float),
        Flag("min_iterations", "--min-iterations", "Fewest timed calls per row.", int),
        Flag("rounds", "--rounds", "Interleaved rounds (fewer only to fit --budget).", int),
        Flag("min_rounds", "--min-rounds", "Rounds kept however short --budget is.", int),
        Flag(
            "pause_ms",
            "--pause-ms",
            "Idle time after each slice, for the last runner's pool to go quiet; default: measured at start.",
            float,
        ),
        Flag(
            "passive_pools",
            "--passive-pools",
            "Idle thread pools sleep (OMP_WAIT_POLICY=PASSIVE, no ONNX Runtime spinning); default: library defaults.",
            bool,
        ),
        Flag("threads", "--threads", "CPU threads for torch, ONNX Runtime and OpenVINO.", int, _threads),
    ],
    panel="Benchmark",
    parts={"backend_options": BACKEND_OPTIONS},
    defaults=_bench_defaults,
)


def _serve_options() -> type:
    from .serving.options import ServeOptions

    return ServeOptions


def _triton_repo_options() -> type:
    from .serving.options import TritonRepoOptions

    return TritonRepoOptions


def _batching(owner: Callable[[], type], max_batch_help: str, instances_help: str) -> Group:
    """The batching flags ``serve`` and ``triton-repo`` share, declared here once; each says in its own help what
    its command does with them, and its bundle's default batching fills what is not given."""
    return Group(
        lambda given: dataclasses.replace(owner()().batching, **given),
        [
            Flag("max_batch_size", "--max-batch-size", max_batch_help, int),
            Flag(
                "max_queue_delay_us", "--max-queue-delay-us", "How long Triton may hold a request to fill a batch.", int
            ),
            Flag("instances", "--instances", instances_help, int),
        ],
        panel="Batching",
        defaults=lambda: dataclasses.asdict(owner()().batching),
    )


SERVE = Group(
    lambda given: _serve_options()(**given),
    [
        Flag("precision", "--precision", "Which ONNX file.", Literal["fp32", "fp16", "int8"]),
        Flag("host", "--host", "Address to bind; loopback unless you mean otherwise."),
        Flag("port", "--port", "HTTP port.", int),
        Flag("grpc_port", "--grpc-port", "gRPC port; default: --port + 1.", int),
        Flag("metrics_port", "--metrics-port", "Prometheus metrics port; default: --port + 2.", int),
        Flag("threads", "--threads", "Threads per instance (ONNX Runtime, OpenVINO).", int, _threads),
        Flag("name", "--name", "Model name; default: <arch>_onnx_<precision>."),
        Flag("backend", "--backend", "CPU runner: onnxruntime or openvino (model <arch>_openvino_<precision>)."),
        Flag("restarts", "--restarts", "Restart a Triton server that dies, at most N times (default: exit 4).", int),
        Flag("http", "--http/--no-http", "Serve HTTP too; --no-http leaves gRPC alone (see README).", bool),
        Flag(
            "max_request_mb",
            "--max-request-mb",
            "Largest request (HTTP body, gRPC message), decompressed, in MiB; default: twice the largest batch in "
            "binary form, at least 8.",
            float,
        ),
    ],
    parts={
        "batching": _batching(
            _serve_options,
            "Largest batch Triton forms; 1 switches batching off.",
            "Model instances (ONNX Runtime sessions).",
        )
    },
    defaults=lambda: _fields(_serve_options()),
)

TRITON_REPO = Group(
    lambda given: _triton_repo_options()(**given),
    [
        Flag("name", "--name", "Model name prefix; default: the architecture."),
        Flag(
            "onnx_kind",
            "--onnx-kind",
            "Where ONNX models run: auto (GPU if the host has one), gpu or cpu.",
            Literal["auto", "gpu", "cpu"],
        ),
        Flag(
            "trt_accelerator",
            "--trt-accelerator",
            "Run ONNX models on GPUs through ONNX Runtime's TensorRT provider.",
            bool,
        ),
        Flag(
            "preprocess",
            "--preprocess",
            "Also write <model>_image ensembles: JPEG/PNG bytes in, logits and class names out (Python backend).",
            bool,
        ),
    ],
    parts={
        "batching": _batching(
            _triton_repo_options,
            "Largest batch; default: the engine profile's maximum, or 32 for ONNX.",
            "Model instances per device.",
        ),
        "backend_options": BACKEND_OPTIONS,
    },
    defaults=lambda: _fields(_triton_repo_options()),
)
