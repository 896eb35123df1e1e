"""Ed25519 signatures both ways: the coordinator signs the encoder it sends, each site signs its replies.

An encoder signature covers a canonical digest of the encoder (every tensor's name, dtype, shape and
bytes), the server round and the run key, so a changed weight, an encoder replayed from another round
or run, or another signer is refused at the site.

A reply signature covers the site's name, the run key, the round, the phase and every record the reply
carries (arrays by name, dtype, shape and bytes; metrics and config values by type and value). The
coordinator keeps a `Roster` of organizations (site name -> Ed25519 public key) and admits a reply only
if it is signed, for this round and run, by the roster key of the site it names.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.checkpoint import write_atomic

DOMAIN = b"fedts-encoder-v2"
REPLY_DOMAIN = b"fedts-reply-v1"
PRIVATE_NAME, PUBLIC_NAME = "signing.key", "signing.pub"
SIGNATURE = "signature"  # the reply's ConfigRecord holding "site" (the signer's name) and "signature"


class SignatureError(ValueError):
    """An encoder or a reply without a valid signature from its claimed signer."""


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


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _round(server_round: int) -> bytes:
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ValueError(f"server round must be a non-negative int, got {server_round!r}")
    return server_round.to_bytes(8, "big")


def _array_bytes(key: str, value) -> bytes:
    """An array's dtype, shape and bytes, each length-prefixed."""
    array = _array(key, value)
    return (_field(array.dtype.name.encode()) + array.ndim.to_bytes(8, "big")
            + b"".join(n.to_bytes(8, "big") for n in array.shape) + _field(array.tobytes()))


def encoder_digest(state: Mapping[str, torch.Tensor | np.ndarray], server_round: int, run_key: str = "") -> bytes:
    """SHA-256 over the domain tag, the round, the run key and, in sorted key order, each tensor's key, dtype,
    shape and bytes.

    A torch state and a numpy state with the same values give the same digest.
    """
    h = hashlib.sha256(DOMAIN)
    h.update(_round(server_round) + _field(run_key.encode()))
    h.update(len(state).to_bytes(8, "big"))
    for key in sorted(state):
        h.update(_field(key.encode()) + _array_bytes(key, state[key]))
    return h.digest()


def sign_encoder(private_key: Ed25519PrivateKey | str | Path, state: Mapping[str, torch.Tensor | np.ndarray],
                 server_round: int, *, run_key: str = "") -> bytes:
    """The coordinator's signature (64 bytes) over `state` as sent in `server_round` of run `run_key`; the key or
    its PEM file."""
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    return key.sign(encoder_digest(state, server_round, run_key))


def _signature_bytes(signature, what: str) -> bytes | None:
    """`signature` as bytes; None if missing or empty; SignatureError if not bytes."""
    if signature is None or signature == b"":
        return None
    if not isinstance(signature, (bytes, bytearray, memoryview)):
        raise SignatureError(f"{what} must be bytes, got {type(signature).__name__}")
    return bytes(signature)


def verify_encoder(public_key: Ed25519PublicKey | str | Path, state: Mapping[str, torch.Tensor | np.ndarray],
                   server_round: int, signature: bytes | None, *, run_key: str = "") -> None:
    """Raise SignatureError unless `signature` is the coordinator's over `state` for `server_round` of run `run_key`.

    `public_key` is the key or the path of its PEM file; given a path, errors name it.
    """
    path = None if isinstance(public_key, Ed25519PublicKey) else Path(public_key)
    key = public_key if path is None else load_public_key(path)
    coordinator = "the coordinator" if path is None else f"the coordinator whose key is at {path}"
    signature = _signature_bytes(signature, f"encoder signature for round {server_round}")
    if signature is None:
        raise SignatureError(f"unsigned encoder: round {server_round} came without a signature; this site accepts "
                             f"only encoders signed by {coordinator}")
    try:
        key.verify(signature, encoder_digest(state, server_round, run_key))
    except InvalidSignature:
        raise SignatureError(f"encoder signature does not verify for round {server_round}: the encoder does not come "
                             f"from {coordinator} (weights changed after signing, signed for another round or "
                             "run, or signed by another key)") from None


def _value(key: str, value) -> bytes:
    """A record value, tagged with its type: an array (anything with `.numpy()`, or a numpy array), a bool,
    int, float, str, bytes, or a list of those."""
    if isinstance(value, (torch.Tensor, np.ndarray)) or hasattr(value, "numpy"):
        return b"a" + _array_bytes(key, value if isinstance(value, (torch.Tensor, np.ndarray)) else value.numpy())
    if isinstance(value, (bool, np.bool_)):
        return b"b" + bytes([bool(value)])
    if isinstance(value, (int, np.integer)):
        return b"i" + _field(str(int(value)).encode())
    if isinstance(value, (float, np.floating)):
        return b"f" + struct.pack(">d", float(value))
    if isinstance(value, str):
        return b"s" + _field(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return b"y" + _field(bytes(value))
    if isinstance(value, list):
        return b"l" + len(value).to_bytes(8, "big") + b"".join(_value(key, v) for v in value)
    raise ValueError(f"reply value {key!r}: cannot sign a {type(value).__name__}")


def reply_records(content: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every record of a reply's content (a Flower RecordDict, or any mapping of mappings) but its signature."""
    return {name: dict(record) for name, record in content.items() if name != SIGNATURE}


@dataclass(frozen=True)
class Reply:
    """What a site's reply says, as its signature covers it.

    Args:
        run_key: the run the server sent it in (message config `run-key`).
        server_round: the round it answers.
        phase: "train" or "evaluate".
        site: the site that signs it, by its roster name.
        records: every record of the reply but the signature (reply_records).
    """

    run_key: str
    server_round: int
    phase: str
    site: str
    records: Mapping[str, Mapping[str, Any]]

    def digest(self) -> bytes:
        """SHA-256 over the domain tag, run key, round, phase, site and, in sorted order, each record's name and
        its entries' keys and tagged values."""
        h = hashlib.sha256(REPLY_DOMAIN)
        h.update(_field(self.run_key.encode()) + _round(self.server_round) + _field(self.phase.encode())
                 + _field(self.site.encode()) + len(self.records).to_bytes(8, "big"))
        for name in sorted(self.records):
            record = self.records[name]
            h.update(_field(name.encode()) + len(record).to_bytes(8, "big"))
            for key in sorted(record):
                h.update(_field(key.encode()) + _value(key, record[key]))
        return h.digest()


def sign_reply(private_key: Ed25519PrivateKey | str | Path, reply: Reply) -> bytes:
    """The site's signature (64 bytes) over `reply`; the key of its organization or its PEM file."""
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    return key.sign(reply.digest())


class Roster:
    """The organizations the coordinator admits: site name -> Ed25519 public key, from a roster file.

    One site a line, `NAME ssh-ed25519 KEY` (the public key in OpenSSH format, as `python -m
    server.credentials` writes it); blank lines and lines starting with # are ignored.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], path: str | Path = "the roster"):
        self.keys, self.path = dict(keys), str(path)

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        """The roster in `path`; ValueError naming the file and line for anything that is not a listed site."""
        text = _read(path, "roster").decode("utf-8", errors="replace")
        keys: dict[str, Ed25519PublicKey] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 3:
                raise ValueError(f"{path}:{number}: expected 'NAME ssh-ed25519 KEY', got {line.strip()[:60]!r}")
            name = parts[0]
            try:
                key = serialization.load_ssh_public_key(f"{parts[1]} {parts[2]}".encode())
            except (ValueError, UnsupportedAlgorithm):
                raise ValueError(f"{path}:{number}: {name}: not an OpenSSH public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path}:{number}: {name}: not an Ed25519 key (holds a {type(key).__name__})")
            if name in keys:
                raise ValueError(f"{path}:{number}: {name} is listed twice")
            if other := next((n for n, k in keys.items() if k == key), None):
                raise ValueError(f"{path}:{number}: {name} has the same key as {other}: one key per organization")
            keys[name] = key
        if not keys:
            raise ValueError(f"{path}: the roster lists no site")
        return cls(keys, path)

    def verify(self, reply: Reply, signature: bytes | None) -> None:
        """Raise SignatureError, with the reason, unless `signature` is over `reply` by the key listed for `reply.site`."""
        signature = _signature_bytes(signature, f"the reply signature of {reply.site or 'a site'}")
        if signature is None or not reply.site:
            raise SignatureError(f"unsigned reply: {self.path} admits only replies signed by a site it lists")
        if reply.site not in self.keys:
            raise SignatureError(f"signed as {reply.site!r}, a site not on {self.path}")
        digest = reply.digest()
        if _verifies(self.keys[reply.site], signature, digest):
            return
        if signer := next((name for name, key in self.keys.items() if _verifies(key, signature, digest)), None):
            raise SignatureError(f"signed with the key of {signer!r} but names itself {reply.site!r}")
        raise SignatureError(f"the signature does not verify with the key {self.path} lists for {reply.site!r}: "
                             f"signed by a key not on the roster, for another round or run, or changed after "
                             f"signing")


def _verifies(key: Ed25519PublicKey, signature: bytes, digest: bytes) -> bool:
    try:
        key.verify(signature, digest)
    except InvalidSignature:
        return False
    return True


def roster_line(name: str, public_key: Ed25519PublicKey) -> str:
    """One roster line: the site's name and its public key in OpenSSH format."""
    ssh = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{name} {ssh}\n"


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} file not found") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from an unencrypted PEM file (the coordinator's `signing.key`, a site's reply key)."""
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
        raise ValueError(f"{path}: holds a public key; signing needs a private key (the coordinator's "
                         f"{PRIVATE_NAME}, or a site's reply key)") from None
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
