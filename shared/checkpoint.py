"""Atomic files, sealed when given a state key (shared.sealing), model checkpoints that carry their own
arguments, and named encoder transfer."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.model import Forecaster, ModelArgs
from shared.sealing import SealError, is_sealed, seal, unseal


def write_atomic(path: str | Path, write, key: bytes | None = None) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    A crash leaves either the old file or the new one, never a torn one. The file gets the
    permissions an ordinary new file would (0666 less the umask); `write` may narrow them first.
    With a state `key`, what `write` writes is sealed under the file's name (read it with `read_file`).
    """
    path = Path(path)
    if key is not None:
        buffer = io.BytesIO()
        write(buffer)
        sealed = seal(buffer.getvalue(), key, path.name)
        write = lambda f: f.write(sealed)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: str | Path, key: bytes | None = None) -> bytes:
    """The bytes `write_atomic(path, ..., key)` wrote; SealError naming the file if it is sealed and no key is
    given, or if it does not unseal with `key` (a plain file, another key, altered)."""
    path = Path(path)
    blob = path.read_bytes()
    if key is not None:
        return unseal(blob, key, path.name, source=path)
    if is_sealed(blob):
        raise SealError(f"{path}: sealed with a site's state key; give that key to read it (the site's node "
                        "config state-key; python -m client.forecast --state-key)")
    return blob


def write_json(path: str | Path, obj: Any, key: bytes | None = None) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()), key)


def read_json(path: str | Path, key: bytes | None = None) -> Any:
    return json.loads(read_file(path, key))


def load_torch(path: str | Path, key: bytes | None = None) -> Any:
    """A `torch.save`d object (tensors and plain containers only), unsealed with `key` if given."""
    return torch.load(io.BytesIO(read_file(path, key)), map_location="cpu", weights_only=True)


def save_model(path: str | Path, model: Forecaster, meta: dict | None = None, key: bytes | None = None) -> None:
    """Checkpoint: model arguments, full state dict and free-form metadata (seeds, sizes, round)."""
    payload = {"model_args": model.args.to_dict(), "state_dict": model.state_dict(), "meta": meta or {}}
    write_atomic(path, lambda f: torch.save(payload, f), key)


def load_model(path: str | Path, key: bytes | None = None) -> tuple[Forecaster, dict]:
    """Rebuild a Forecaster from a checkpoint written by `save_model`; returns (model, meta)."""
    try:
        payload = load_torch(path, key)
    except (FileNotFoundError, SealError):
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable model checkpoint ({exc})") from exc
    model = Forecaster(ModelArgs.from_dict(payload["model_args"]))
    model.load_state_dict(payload["state_dict"])
    return model, payload["meta"]


def save_module(path: str | Path, module: nn.Module) -> None:
    write_atomic(path, lambda f: torch.save(module.state_dict(), f))


def load_module(path: str | Path, module: nn.Module) -> None:
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_encoder(model: Forecaster, state: dict[str, torch.Tensor]) -> list[str]:
    """Load an encoder state into `model.encoder`; every key and shape must match.

    Returns the loaded keys. Raises ValueError naming what is missing, unexpected or of the wrong
    shape, so a mismatched encoder never half-loads.
    """
    own = model.encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"encoder does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}"
        )
    model.encoder.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return sorted(state)
