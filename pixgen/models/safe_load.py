"""Load and save checkpoints without running code from the file.

``.safetensors`` files hold only tensors. Other files go through
``torch.load(weights_only=True)``, whose unpickler refuses every global that is not
allow-listed. Lightning-era ``.ckpt`` files (taming's VQGANs) pickle their callback
state keyed by ``pytorch_lightning...ModelCheckpoint``; we allow-list that name, for
one load only, as an inert placeholder class, so neither Lightning nor any code from
the file is needed. ``weights_only=False`` is never used.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixgen.errors import CheckpointError
from pixgen.fileio import atomic_path

if TYPE_CHECKING:
    import torch

# Fully-qualified names of Lightning classes found in old checkpoints' callback state.
LIGHTNING_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
)
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+?)[.,]?(?:\s|$)")


class _Placeholder:
    """Inert stand-in for a pickled class: it only stores the state it is given."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder(full_name: str) -> type:
    """Return a placeholder class whose module and qualname match ``full_name``."""
    module, _, qualname = full_name.rpartition(".")
    return type(qualname, (_Placeholder,), {"__module__": module, "__qualname__": qualname})


_PLACEHOLDERS = tuple(_placeholder(name) for name in LIGHTNING_GLOBALS)


def load_state_dict(path: Path, fmt: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors safely (safetensors, or torch.load with weights_only=True).

    ``fmt`` ("safetensors" or "pickle") overrides the format the file's suffix implies.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist or is not a file.")
    if (fmt or ("safetensors" if path.suffix.lower() == ".safetensors" else "pickle")) == "safetensors":
        obj = _load_safetensors(path)
    else:
        obj = _load_pickle(path)
    return _tensors_only(obj, path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        reason = _first_line(exc)
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({reason}).") from exc


def _load_pickle(path: Path) -> Any:
    """torch.load with weights_only=True, allow-listing the Lightning placeholders."""
    import torch

    try:
        with _allow(torch, _PLACEHOLDERS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_IN_MESSAGE.search(str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path.name} contains code or objects{what} that pixgen will not unpickle; "
            "only tensors and plain containers are loaded."
        ) from exc
    except Exception as exc:  # the unpickler fails on garbage in many ways (IndexError, ...)
        reason = _first_line(exc)
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint ({reason}).") from exc


def _allow(torch: Any, classes: tuple[type, ...]) -> contextlib.AbstractContextManager:
    """Allow-list classes for one torch.load only (never process-wide)."""
    return torch.serialization.safe_globals(list(classes))


def _tensors_only(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap a ``{"state_dict": ...}`` checkpoint and keep only its tensor values."""
    import torch

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state dict.")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name} contains no tensors.")
    return tensors


def save_safetensors(
    state: dict[str, torch.Tensor],
    path: Path,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors to a safetensors file atomically, optionally casting floats to dtype."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = _prepare_for_save(state, dtype)
    try:
        with atomic_path(path) as temp:
            save_file(tensors, temp, metadata=metadata)
            _sort_header(Path(temp))
    except OSError as exc:
        raise CheckpointError(f"Cannot write {path}: {exc.strerror or exc}.") from exc


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, so the same tensors and metadata give the same bytes.

    safetensors keeps metadata in a hash map whose order changes from process to process, which
    would make the sha256 of a retrained model differ from the registered one. Data offsets are
    relative to the end of the header, and the format allows space padding, so the data is untouched.
    """
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + size :])


def _prepare_for_save(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Return CPU, contiguous, unshared tensors, casting floating ones to dtype if given."""
    out = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.nbytes:
            t = t.clone()  # safetensors refuses tensors that share or only partly use storage
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _first_line(exc: BaseException) -> str:
    """Return the first non-empty line of an exception's message, shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
