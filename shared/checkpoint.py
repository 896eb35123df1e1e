"""Atomic private files, sealed when given a state key (shared.sealing), model checkpoints that carry their
own arguments, and named encoder transfer."""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.model import Forecaster, ModelArgs
from shared.sealing import VERSIONS, SealError, counter_of, is_sealed, seal, unseal


def _private_folder(folder: Path) -> None:
    """Create `folder` and its missing parents, each private (0700)."""
    for missing in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)


def _replace(path: Path, write) -> None:
    """Call `write(file)` on a new private (0600) file beside `path`, then rename it over `path`."""
    _private_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Versions:
    """A folder's record of its sealed files (the file VERSIONS, itself sealed)."""

    folder: str  # random id every sealed file of the folder is bound to
    latest: int = 0  # the counter of the folder's latest sealed write
    files: dict[str, int] = field(default_factory=dict)  # file name -> counter it was last written with


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` while its sealed files and their record are read or written."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_versions(folder: Path, key: bytes, source: str | Path) -> Versions | None:
    """The folder's record, None if it has none; errors name `source`."""
    path = folder / VERSIONS
    if not path.exists():
        return None
    return Versions(**json.loads(unseal(path.read_bytes(), key, VERSIONS, source=source)))


def _write_versions(folder: Path, key: bytes, versions: Versions) -> None:
    sealed = seal(json.dumps(asdict(versions)).encode(), key, VERSIONS, counter=versions.latest)
    _replace(folder / VERSIONS, lambda f: f.write(sealed))


def write_atomic(path: str | Path, write, key: bytes | None = None) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    A crash leaves either the old file or the new one, never a torn one. The file is private (0600;
    `write` may widen it with os.fchmod, as for a public key) and missing folders are made private (0700).
    With a state `key`, what `write` writes is sealed (shared.sealing) under the file's name, its
    folder's id and the folder's next write counter, which the folder's VERSIONS record then holds as
    the file's current one; `read_file` reads it back.
    """
    path = Path(path)
    if key is None:
        _replace(path, write)
        return
    buffer = io.BytesIO()
    write(buffer)
    _private_folder(path.parent)
    with _locked(path.parent):
        versions = _read_versions(path.parent, key, path.parent / VERSIONS)
        if versions is None:  # recorded first, so a crash cannot leave files bound to an unknown id
            versions = Versions(os.urandom(16).hex())
            _write_versions(path.parent, key, versions)
        counter = versions.latest + 1
        sealed = seal(buffer.getvalue(), key, path.name, versions.folder, counter)
        _replace(path, lambda f: f.write(sealed))
        _write_versions(path.parent, key, Versions(versions.folder, counter, {**versions.files, path.name: counter}))


def read_file(path: str | Path, key: bytes | None = None) -> bytes:
    """The bytes `write_atomic(path, ..., key)` wrote; SealError naming the file if it is sealed and no key is
    given, or if it does not unseal with `key` (a plain file, another key, altered, another file's or
    another folder's, or older than the folder's record says).

    A sealed file may be one write newer than the record: a crash can fall between writing the two.
    """
    path = Path(path)
    if key is None:
        blob = path.read_bytes()
        if is_sealed(blob):
            raise SealError(f"{path}: sealed with a site's state key; give that key to read it (the site's node "
                            "config state-key; python -m client.forecast --state-key)")
        return blob
    with _locked(path.parent):
        blob = path.read_bytes()
        versions = _read_versions(path.parent, key, f"{path} ({VERSIONS} beside it)")
    if versions is None and is_sealed(blob):
        raise SealError(f"{path}: {VERSIONS} is missing beside it; it records which copy of each sealed file is "
                        "current, and without it none can be read")
    data = unseal(blob, key, path.name, versions.folder if versions else "", source=path)
    counter, recorded = counter_of(blob), versions.files.get(path.name, 0)
    if not recorded <= counter <= versions.latest + 1:
        raise SealError(f"{path}: holds write {counter} of its folder, but {VERSIONS} records write {recorded}: "
                        "an older copy of the file or of the record was put back")
    return data


def write_json(path: str | Path, obj: Any, key: bytes | None = None) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()), key)


def read_json(path: str | Path, key: bytes | None = None) -> Any:
    """The JSON value `write_json` wrote; ValueError naming the file if it is not JSON."""
    text = read_file(path, key)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_torch(path: str | Path, key: bytes | None = None) -> Any:
    """A `torch.save`d object (tensors and plain containers only), unsealed with `key` if given; ValueError
    naming the file if it is not one."""
    blob = read_file(path, key)
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (RuntimeError, UnpicklingError, EOFError, ...)
        raise ValueError(f"{path}: not a readable torch file ({exc})") from None


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming `source` and the arrays of `state` holding NaN or infinite values."""
    bad = [name for name, tensor in state.items() if not torch.isfinite(torch.as_tensor(tensor)).all()]
    if bad:
        raise ValueError(f"{source}: {len(bad)} array(s) hold NaN or infinite values: {bad[:5]}")


def save_model(path: str | Path, model: Forecaster, meta: dict | None = None, key: bytes | None = None) -> None:
    """Checkpoint: model arguments, full state dict and free-form metadata (seeds, sizes, round)."""
    payload = {"model_args": model.args.to_dict(), "state_dict": model.state_dict(), "meta": meta or {}}
    write_atomic(path, lambda f: torch.save(payload, f), key)


def load_model(path: str | Path, key: bytes | None = None) -> tuple[Forecaster, dict]:
    """Rebuild a Forecaster from a checkpoint written by `save_model`; returns (model, meta)."""
    payload = load_torch(path, key)
    try:
        model = Forecaster(ModelArgs.from_dict(payload["model_args"]))
        model.load_state_dict(payload["state_dict"])
        return model, dict(payload["meta"])
    except (LookupError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a model checkpoint ({exc!r})") from None


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
