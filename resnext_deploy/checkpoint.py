"""Safe checkpoint loading: tensors only, never pickled code.

``.pth``/``.pt``/``.bin`` go through ``torch.load(weights_only=True)``; ``.safetensors`` through
safetensors. A bare state dict or one wrapped under ``state_dict``/``model`` is accepted, with
``module.``/``model.``/``_orig_mod.`` prefixes stripped, so torchvision and timm files load as they are.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
import shlex
from pathlib import Path

import torch
from torch import nn

from .archs import ARCHS, CLASSIFIER_PREFIXES, LIBRARY_ARCHS, KeyProfile, candidates, key_profile
from .errors import BadInputError, one_line

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
PREFIXES = ("module.", "model.", "_orig_mod.")
SUPPORTED_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_SHOWN = 4


# Float weights load as they are; any other dtype is a different model, not a storage format.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
COUNTER_SUFFIX = "num_batches_tracked"  # BatchNorm's step counter: an integer buffer by design
SLACK_BYTES = 1 << 20  # room for small extra buffers beyond the architecture's own state


def read_state_dict(path: str | Path, arch: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict, or raise ``BadInputError``.

    Every tensor is checked against its storage before any arithmetic touches it, so a tiny file
    cannot expand into gigabytes; with ``arch`` the total size is also capped at what that
    architecture needs.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist; check the --checkpoint path")
    if path.stat().st_size == 0:
        raise BadInputError(f"checkpoint {path} is empty (0 bytes); re-download or re-save it")
    raw: object
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return _normalise(_unwrap(raw, path), path, arch)


def _read_safetensors(path: Path) -> dict[str, object]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BadInputError(f"checkpoint {path} is not a valid safetensors file ({one_line(exc, 200)})") from None


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "global" in detail.lower():  # the weights-only unpickler met a class or function reference
            raise BadInputError(pickled_message(path, detail)) from None
        raise BadInputError(
            f"checkpoint {path} is truncated or not a weights-only PyTorch checkpoint ({detail}); "
            "re-download it or re-save it as a plain state_dict"
        ) from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        raise BadInputError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({one_line(exc, 200)}); "
            "re-download or re-save it"
        ) from None


# Globals of a training checkpoint's extras (a dict holding the state dict beside its arguments), not of a model.
_EXTRAS_MODULES = ("argparse", "builtins", "collections", "numpy", "omegaconf", "pathlib", "datetime", "typing")


def pickled_message(path: Path, detail: str) -> str:
    """Why a pickle is refused, and the one line that re-saves it as a state dict: whole, never cut.

    Unpickling runs whatever code the file names, so it is never done here; the user, trusting the file,
    can do it once with the line given and pass the state dict it writes. A file naming a function rather
    than a class gets no such line: unpickling it would call that function.
    """
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    refused = found.group(1) if found else "a Python object"
    head = f"checkpoint {path} holds pickled objects other than tensors (possibly code), which are never loaded"
    if not refused.rsplit(".", 1)[-1][:1].isupper():
        return (
            f"{head}: it names the function {refused}, which unpickling would call; do not load this file, "
            "re-save the weights as a state_dict (or .safetensors) from the code that trained them"
        )
    target = path.with_name(f"{path.stem}_state_dict.pth")
    loaded = f"torch.load({json.dumps(str(path))}, weights_only=False)"
    is_model = not refused.startswith(_EXTRAS_MODULES)
    weights = f"{loaded}.state_dict()" if is_model else f"{loaded}[{json.dumps('state_dict')}]"
    line = shlex.join(["python", "-c", f"import torch; torch.save({weights}, {json.dumps(str(target))})"])
    what = f"a whole model ({refused})" if is_model else f"Python objects beside the weights ({refused})"
    key = "" if is_model else " (with the key your file keeps the weights under)"
    return (
        f"{head}: {what}, and unpickling runs code the file names. Only if you trust the file, re-save its "
        f"weights once{key}: {line} then pass --checkpoint {target}"
    )


def _unpickler_detail(exc: BaseException) -> str:
    """torch's weights-only refusal buries the reason after 'WeightsUnpickler error:' or in a 'GLOBAL' line."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    refused = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), None)
    return refused[:200] if refused else one_line(ValueError(text), 200)


def _unwrap(raw: object, path: Path) -> dict:
    if isinstance(raw, dict):
        for key in WRAPPER_KEYS:
            inner = raw.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            return raw
    raise BadInputError(
        f"checkpoint {path} is not a state dict of tensors (found {type(raw).__name__}); save model.state_dict()"
    )


def _check_layout(key: str, value: torch.Tensor, path: Path) -> None:
    """Refuse views that claim more elements than their storage holds (stride tricks) and odd layouts."""
    if value.layout != torch.strided or value.is_quantized:
        raise BadInputError(
            f"checkpoint {path} stores {key!r} as a {value.layout} tensor; only dense tensors are loaded, "
            "re-save it with plain tensors"
        )
    shape, strides = value.shape, value.stride()
    if any(size > 1 and stride == 0 for size, stride in zip(shape, strides, strict=True)):
        raise BadInputError(
            f"checkpoint {path} stores {key!r} as a broadcast view (stride 0) of shape {tuple(shape)}; "
            "the file is malformed or hostile, re-save it from the model"
        )
    if value.numel() == 0:
        return
    storage = value.untyped_storage().nbytes()
    reach = value.storage_offset() + sum((size - 1) * stride for size, stride in zip(shape, strides, strict=True))
    if value.numel() * value.element_size() > storage or (reach + 1) * value.element_size() > storage:
        raise BadInputError(
            f"checkpoint {path} stores {key!r} as shape {tuple(shape)} over only {storage} bytes of data; "
            "the file is malformed or hostile, re-save it from the model"
        )


def _check_dtype(key: str, value: torch.Tensor, path: Path) -> None:
    if value.dtype in FLOAT_DTYPES or (key.endswith(COUNTER_SUFFIX) and value.dtype in (torch.int64, torch.int32)):
        return
    raise BadInputError(
        f"checkpoint {path} stores {key!r} as {value.dtype}; only float32/float16/bfloat16/float64 weights are "
        "loaded, because casting other types changes the model; convert the weights yourself and save again"
    )


def _check_total(state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """The checkpoint may not hold more than the architecture's own state (plus slack)."""
    from .models import create_model

    with torch.device("meta"):
        needed = create_model(arch, infer_num_classes(state)).state_dict()
    limit = sum(t.numel() * 8 for t in needed.values()) + SLACK_BYTES  # float64 weights are the largest allowed
    held = sum(t.numel() * t.element_size() for t in state.values())
    if held > limit:
        raise BadInputError(
            f"checkpoint {path} does not fit --arch {arch}: it holds {held} bytes of tensors, more than the "
            f"architecture can use ({limit}); pass the architecture the checkpoint was trained with: "
            f"{suggest_arch(state)}"
        )


def _normalise(state: dict, path: Path, arch: str | None = None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        out[name] = value
    for key, value in out.items():
        _check_layout(key, value, path)
        _check_dtype(key, value, path)
    if arch is not None:
        _check_total(out, path, arch)
    for key, value in out.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BadInputError(
                f"checkpoint {path} has NaN or Inf values in {key!r}; the model cannot be exported faithfully"
            )
    return out


def infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The classifier's output count, read from its weight (``fc``, timm's ``head.fc`` or ``last_linear``)."""
    for prefix in CLASSIFIER_PREFIXES:
        weight = state.get(f"{prefix}weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    return None


@functools.cache
def _builtin_profiles() -> dict[str, KeyProfile]:
    from .models import create_model

    with torch.device("meta"):
        return {
            name: key_profile({k: tuple(t.shape) for k, t in create_model(name).state_dict().items()}) for name in ARCHS
        }


def suggest_arch(state: dict[str, torch.Tensor]) -> str:
    """The architectures whose keys fit ``state``'s, in words, for every "pass the architecture" message."""
    profiles = {**_builtin_profiles(), **{name: arch.profile for name, arch in LIBRARY_ARCHS.items()}}
    return candidates(key_profile({k: tuple(v.shape) for k, v in state.items()}), profiles)


def _listing(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {label} ({shown}{more})"


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, arch: str) -> None:
    """Load ``state`` into ``model`` strictly, or raise one line naming missing, unexpected and misshaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [
            _listing(label, keys)
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshaped))
            if keys
        ]
        raise BadInputError(
            f"checkpoint {source} does not fit --arch {arch}: {'; '.join(parts)}; "
            f"pass the architecture (and --num-classes) the checkpoint was trained with: {suggest_arch(state)}"
        )
    filled = {k: state.get(k, v) for k, v in expected.items()}
    model.load_state_dict({k: t.to(expected[k].dtype) for k, t in filled.items()}, strict=True)
