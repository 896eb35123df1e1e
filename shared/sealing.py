"""Encryption at rest of a site's state files with a key only the site holds (AES-256-GCM).

A sealed file is MAGIC + version, a random 96-bit nonce, then the ciphertext with its tag. The header and
the file's name are authenticated too, so a sealed file cannot be altered, nor passed off as another file.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC, VERSION = b"fedts-sealed", 1
HEADER = MAGIC + bytes([VERSION])
KEY_BYTES, NONCE_BYTES, TAG_BYTES = 32, 12, 16


class SealError(ValueError):
    """A file that cannot be unsealed: wrong key, altered, another file's content, or not sealed at all."""


def generate_state_key(path: str | Path) -> bytes:
    """Write a new random key (base64, file mode 0600) to `path` and return it; refuses to replace a key.

    The file is created exclusively, so a key that appears meanwhile is not replaced either.
    """
    path = Path(path)
    key = os.urandom(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path}: a state key is already there; replacing it would make every file sealed "
                              "with it unreadable") from None
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def load_state_key(path: str | Path) -> bytes:
    """The 32-byte key stored (base64) in `path`."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: state key file not found") from None
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ValueError(f"{path}: not a state key (expected {KEY_BYTES} bytes in base64)") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: state key is {len(key)} bytes, expected {KEY_BYTES} (base64)")
    return key


def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"state key must be {KEY_BYTES} bytes (AES-256)")
    return AESGCM(key)


def is_sealed(blob: bytes) -> bool:
    """Whether `blob` starts like a sealed file (any version)."""
    return blob.startswith(MAGIC)


def seal(data: bytes, key: bytes, name: str) -> bytes:
    """`data` encrypted under `key` and bound to `name` (the file's name, e.g. "model.pt")."""
    nonce = os.urandom(NONCE_BYTES)
    return HEADER + nonce + _aead(key).encrypt(nonce, data, HEADER + name.encode())


def unseal(blob: bytes, key: bytes, name: str, source: str | Path | None = None) -> bytes:
    """The data `seal(data, key, name)` encrypted; SealError if that is not what `blob` is.

    `source` (e.g. the file's path) is named in the error.
    """
    where = f"{source}: " if source is not None else ""
    if not is_sealed(blob):
        raise SealError(f"{where}not sealed: expected a file sealed with the site's state key, found a plain one")
    if len(blob) < len(HEADER) + NONCE_BYTES + TAG_BYTES:
        raise SealError(f"{where}sealed file is truncated")
    if blob[len(MAGIC)] != VERSION:
        raise SealError(f"{where}sealed with format version {blob[len(MAGIC)]}, this code reads version {VERSION}")
    nonce, body = blob[len(HEADER):len(HEADER) + NONCE_BYTES], blob[len(HEADER) + NONCE_BYTES:]
    try:
        return _aead(key).decrypt(nonce, body, HEADER + name.encode())
    except InvalidTag:
        raise SealError(f"{where}cannot unseal as {name!r}: wrong state key, the file was altered, or it was sealed "
                        "as another file") from None
