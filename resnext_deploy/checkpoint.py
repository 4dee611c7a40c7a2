"""Safe checkpoint loading: tensors only, never pickled code.

``.pth``/``.pt``/``.bin`` go through ``torch.load(weights_only=True)``; ``.safetensors`` through
safetensors. A bare state dict or one wrapped under ``state_dict``/``model`` is accepted, with
``module.``/``model.``/``_orig_mod.`` prefixes stripped, so torchvision and timm files load as they are.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from .errors import BadInputError, one_line

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
PREFIXES = ("module.", "model.", "_orig_mod.")
SUPPORTED_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_SHOWN = 4


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict, or raise ``BadInputError``."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist; check the --checkpoint path")
    if path.stat().st_size == 0:
        raise BadInputError(f"checkpoint {path} is empty (0 bytes); re-download or re-save it")
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return _normalise(_unwrap(raw, path), path)


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
            raise BadInputError(
                f"checkpoint {path} holds pickled objects other than tensors (possibly code), which are never "
                f"loaded ({detail}); re-save it as a plain state_dict or as .safetensors"
            ) from None
        raise BadInputError(
            f"checkpoint {path} is truncated or not a weights-only PyTorch checkpoint ({detail}); "
            "re-download it or re-save it as a plain state_dict"
        ) from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        raise BadInputError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({one_line(exc, 200)}); "
            "re-download or re-save it"
        ) from None


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


def _normalise(state: dict, path: Path) -> dict[str, torch.Tensor]:
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
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BadInputError(
                f"checkpoint {path} has NaN or Inf values in {key!r}; the model cannot be exported faithfully"
            )
    return out


def infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The classifier's output count, read from ``fc.weight``."""
    weight = state.get("fc.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


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
            "pass the architecture (and --num-classes) the checkpoint was trained with"
        )
    filled = {k: state.get(k, v) for k, v in expected.items()}
    model.load_state_dict({k: t.to(expected[k].dtype) for k, t in filled.items()}, strict=True)
