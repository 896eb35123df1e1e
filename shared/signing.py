"""Ed25519 signatures over the encoder the coordinator sends, so a site trains only on the coordinator's weights.

The signature covers a canonical digest of the encoder (every tensor's name, dtype, shape and bytes)
and the server round, so a changed weight, a replayed older encoder or another signer is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.checkpoint import write_atomic

DOMAIN = b"fedts-encoder-v1"
PRIVATE_NAME, PUBLIC_NAME = "signing.key", "signing.pub"


class SignatureError(ValueError):
    """An encoder without a valid signature from the coordinator."""


def _array(key: str, value) -> np.ndarray:
    """`value` as a little-endian, C-contiguous numpy array (a torch tensor via its CPU copy)."""
    if isinstance(value, torch.Tensor):
        try:
            value = value.detach().cpu().numpy()
        except TypeError as exc:  # e.g. bfloat16, which numpy lacks
            raise ValueError(f"encoder tensor {key!r}: cannot sign dtype {value.dtype} ({exc})") from None
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":
        raise ValueError(f"encoder tensor {key!r}: cannot sign dtype {array.dtype} (numbers only)")
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))


def encoder_digest(state: Mapping[str, torch.Tensor | np.ndarray], server_round: int) -> bytes:
    """SHA-256 over the domain tag, the round and, in sorted key order, each tensor's key, dtype, shape and bytes.

    A torch state and a numpy state with the same values give the same digest.
    """
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ValueError(f"server round must be a non-negative int, got {server_round!r}")
    h = hashlib.sha256(DOMAIN)
    h.update(server_round.to_bytes(8, "big"))
    h.update(len(state).to_bytes(8, "big"))
    for key in sorted(state):
        array = _array(key, state[key])
        for field in (key.encode(), array.dtype.name.encode()):
            h.update(len(field).to_bytes(8, "big") + field)
        h.update(array.ndim.to_bytes(8, "big") + b"".join(n.to_bytes(8, "big") for n in array.shape))
        h.update(array.nbytes.to_bytes(8, "big"))
        h.update(array.tobytes())
    return h.digest()


def sign_encoder(private_key: Ed25519PrivateKey | str | Path, state: Mapping[str, torch.Tensor | np.ndarray],
                 server_round: int) -> bytes:
    """The coordinator's signature (64 bytes) over `state` as sent in `server_round`; the key or its PEM file."""
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    return key.sign(encoder_digest(state, server_round))


def verify_encoder(public_key: Ed25519PublicKey | str | Path, state: Mapping[str, torch.Tensor | np.ndarray],
                   server_round: int, signature: bytes | None) -> None:
    """Raise SignatureError unless `signature` is the coordinator's over `state` for `server_round`.

    `public_key` is the key or the path of its PEM file; given a path, errors name it.
    """
    path = None if isinstance(public_key, Ed25519PublicKey) else Path(public_key)
    key = public_key if path is None else load_public_key(path)
    coordinator = "the coordinator" if path is None else f"the coordinator whose key is at {path}"
    if signature is None or signature == b"":
        raise SignatureError(f"unsigned encoder: round {server_round} came without a signature; this site accepts "
                             f"only encoders signed by {coordinator}")
    if not isinstance(signature, (bytes, bytearray, memoryview)):
        raise SignatureError(f"encoder signature for round {server_round} must be bytes, got "
                             f"{type(signature).__name__}")
    try:
        key.verify(bytes(signature), encoder_digest(state, server_round))
    except InvalidSignature:
        raise SignatureError(f"encoder signature does not verify for round {server_round}: the encoder does not come "
                             f"from {coordinator} (weights changed after signing, signed for another round, "
                             "or signed by another key)") from None


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} file not found") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The coordinator's Ed25519 private key from an unencrypted PEM file (`signing.key`)."""
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{path}: the signing key is password-protected; give an unencrypted PEM key") from None
    except ValueError:
        try:
            serialization.load_pem_public_key(data)
        except ValueError:
            raise ValueError(f"{path}: not a PEM private key") from None
        raise ValueError(f"{path}: holds a public key; signing needs the coordinator's private key "
                         f"({PRIVATE_NAME})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 signing key (holds a {type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The coordinator's Ed25519 public key from a SubjectPublicKeyInfo PEM file (`signing.pub`)."""
    data = _read(path, "signing public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        if b"PRIVATE KEY-----" in data:
            raise ValueError(f"{path}: holds a private key; sites need only the coordinator's public key "
                             f"({PUBLIC_NAME}), and the private key must stay with the coordinator") from None
        raise ValueError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key (holds a {type(key).__name__})")
    return key


def new_signing_key() -> tuple[bytes, bytes]:
    """A fresh key pair as (PKCS8 PEM private key, SubjectPublicKeyInfo PEM public key)."""
    key = Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    return (key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))


def generate_signing_key(directory: str | Path) -> tuple[Path, Path]:
    """Write `signing.key` (mode 0600) and `signing.pub` in `directory`; returns their paths.

    Refuses to replace an existing key: sites holding its public key would refuse every encoder.
    """
    directory = Path(directory)
    paths = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if existing := [str(p) for p in paths if p.exists()]:
        raise FileExistsError(f"{', '.join(existing)}: a signing key is already there; delete it to make a new one "
                              "(then give every site the new public key)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, data, mode in zip(paths, new_signing_key(), (0o600, 0o644)):
        def write(f, data=data, mode=mode):
            os.fchmod(f.fileno(), mode)  # before any byte is written
            f.write(data)
        write_atomic(path, write)
    return paths
