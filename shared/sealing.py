"""Encryption at rest of a site's state files with a key only the site holds (AES-256-GCM).

A sealed file is MAGIC, the format version, an 8-byte write counter, a random 96-bit nonce, then the
ciphertext with its tag. The header, the file's name and its folder's random id are authenticated too
(associated data), so without the key a sealed file can be neither read, nor altered, nor passed off as
another file, nor moved into another state folder. shared.checkpoint keeps, in each folder, a sealed
record of the counter each file was last written with (VERSIONS), and refuses a copy older than that.

Not protected: deleting a file (the site then behaves as if it never wrote it), and putting a whole
folder back as it was at an earlier moment (a backup restore looks just like that). Give every site its
own key: a folder sealed with one site's key is unreadable to every other site.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC, VERSION = b"fedts-sealed", 2
KEY_BYTES, COUNTER_BYTES, NONCE_BYTES, TAG_BYTES = 32, 8, 12, 16
HEADER_BYTES = len(MAGIC) + 1 + COUNTER_BYTES
VERSIONS = "versions.sealed"  # a folder's record of its sealed files' counters (shared.checkpoint)


class SealError(ValueError):
    """A file that cannot be unsealed: wrong key, altered, another file's content, or not sealed at all."""


def generate_state_key(path: str | Path) -> bytes:
    """Write a new random key (base64, file mode 0600) to `path` and return it; refuses to replace a key.

    The file is created exclusively, so a key that appears meanwhile is not replaced either.
    """
    path = Path(path)
    key = os.urandom(KEY_BYTES)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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


def _bound(header: bytes, name: str, folder: str) -> bytes:
    """The associated data: the header, then the file's name and folder id, unambiguously joined."""
    return header + json.dumps([name, folder]).encode()


def is_sealed(blob: bytes) -> bool:
    """Whether `blob` starts like a sealed file (any version)."""
    return blob.startswith(MAGIC)


def seal(data: bytes, key: bytes, name: str, folder: str = "", counter: int = 0) -> bytes:
    """`data` encrypted under `key`, bound to `name` (the file's name, e.g. "model.pt"), to `folder` (its
    folder's id) and to `counter` (its write counter)."""
    header = MAGIC + bytes([VERSION]) + counter.to_bytes(COUNTER_BYTES, "big")
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + _aead(key).encrypt(nonce, data, _bound(header, name, folder))


def counter_of(blob: bytes) -> int:
    """The write counter in a sealed file's header (authenticated only once `unseal` accepts the file)."""
    return int.from_bytes(blob[len(MAGIC) + 1:HEADER_BYTES], "big")


def unseal(blob: bytes, key: bytes, name: str, folder: str = "", source: str | Path | None = None) -> bytes:
    """The data `seal(data, key, name, folder, ...)` encrypted; SealError if that is not what `blob` is.

    `source` (e.g. the file's path) is named in the error.
    """
    where = f"{source}: " if source is not None else ""
    if not is_sealed(blob):
        raise SealError(f"{where}not sealed: expected a file sealed with the site's state key, found a plain one")
    if len(blob) > len(MAGIC) and blob[len(MAGIC)] != VERSION:
        raise SealError(f"{where}sealed with format version {blob[len(MAGIC)]}, this code reads version {VERSION}: "
                        "move the state folder away to start the site afresh")
    if len(blob) < HEADER_BYTES + NONCE_BYTES + TAG_BYTES:
        raise SealError(f"{where}sealed file is truncated")
    header, nonce = blob[:HEADER_BYTES], blob[HEADER_BYTES:HEADER_BYTES + NONCE_BYTES]
    try:
        return _aead(key).decrypt(nonce, blob[HEADER_BYTES + NONCE_BYTES:], _bound(header, name, folder))
    except InvalidTag:
        raise SealError(f"{where}cannot unseal as {name!r}: wrong state key, the file was altered, or it was sealed "
                        "as another file or in another folder") from None
