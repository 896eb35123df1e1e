"""shared.sealing: sealed state files round-trip; a wrong key, a flipped byte, a swapped name or folder, or a
plain file are refused; the key file and its errors."""

from __future__ import annotations

import base64
import io
import stat

import pytest
import torch

from shared.sealing import (HEADER_BYTES, MAGIC, NONCE_BYTES, SealError, counter_of, generate_state_key, is_sealed,
                            load_state_key, seal, unseal)

DATA = b"site head weights \x00\x01\x02" * 100


@pytest.fixture
def key(tmp_path):
    return generate_state_key(tmp_path / "state.key")


def test_round_trip(key):
    blob = seal(DATA, key, "model.pt")
    assert is_sealed(blob) and not is_sealed(DATA)
    assert DATA not in blob and b"site head weights" not in blob
    assert unseal(blob, key, "model.pt") == DATA
    assert unseal(seal(b"", key, "empty"), key, "empty") == b""
    assert seal(DATA, key, "model.pt") != blob  # a fresh nonce every time


def test_round_trip_of_a_torch_checkpoint(key):
    state = {"w": torch.randn(3, 4)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = seal(buffer.getvalue(), key, "model.pt")
    loaded = torch.load(io.BytesIO(unseal(blob, key, "model.pt")), weights_only=True)
    assert torch.equal(loaded["w"], state["w"])


def test_wrong_key_is_refused(key, tmp_path):
    other = generate_state_key(tmp_path / "other.key")
    with pytest.raises(SealError, match="model.pt: cannot unseal as 'model.pt': wrong state key"):
        unseal(seal(DATA, key, "model.pt"), other, "model.pt", source="model.pt")


@pytest.mark.parametrize("where", ["counter", "nonce", "ciphertext", "tag"])
def test_flipped_byte_is_refused(key, where):
    blob = bytearray(seal(DATA, key, "model.pt"))
    at = {"counter": HEADER_BYTES - 1, "nonce": HEADER_BYTES, "ciphertext": HEADER_BYTES + NONCE_BYTES + 7,
          "tag": len(blob) - 1}[where]
    blob[at] ^= 0x01
    with pytest.raises(SealError, match="the file was altered"):
        unseal(bytes(blob), key, "model.pt")


def test_altered_header_or_length_is_refused(key):
    blob = seal(DATA, key, "model.pt")
    for version in (1, 3):
        with pytest.raises(SealError, match=f"format version {version}, this code reads version 2"):
            unseal(MAGIC + bytes([version]) + blob[len(MAGIC) + 1:], key, "model.pt")
    with pytest.raises(SealError, match="truncated"):
        unseal(blob[:HEADER_BYTES + NONCE_BYTES + 3], key, "model.pt")
    with pytest.raises(SealError, match="altered"):
        unseal(blob[:-1], key, "model.pt")


def test_swapped_name_is_refused(key, tmp_path):
    head, alone = seal(b"head", key, "head.pt"), seal(b"alone", key, "alone.json")
    (tmp_path / "head.pt").write_bytes(alone)  # another sealed file put in its place
    with pytest.raises(SealError, match="head.pt: cannot unseal as 'head.pt'.*sealed as another file"):
        unseal((tmp_path / "head.pt").read_bytes(), key, "head.pt", source=tmp_path / "head.pt")
    assert unseal(head, key, "head.pt") == b"head"


def test_folder_and_counter_are_bound(key):
    blob = seal(DATA, key, "model.pt", folder="f1", counter=7)
    assert counter_of(blob) == 7 and unseal(blob, key, "model.pt", folder="f1") == DATA
    with pytest.raises(SealError, match="sealed as another file or in another folder"):
        unseal(blob, key, "model.pt", folder="f2")
    with pytest.raises(SealError, match="sealed as another file or in another folder"):
        unseal(blob, key, "model.pt")
    with pytest.raises(SealError, match="the file was altered"):  # a counter changed in the clear header
        unseal(blob[:HEADER_BYTES - 1] + b"\x08" + blob[HEADER_BYTES:], key, "model.pt", folder="f1")


def test_plain_file_is_refused(key, tmp_path):
    with pytest.raises(SealError, match=r"state/model.pt: not sealed"):
        unseal(DATA, key, "model.pt", source=tmp_path / "state" / "model.pt")


def test_state_key_file(tmp_path):
    path = tmp_path / "site" / "state.key"
    key = generate_state_key(path)
    assert len(key) == 32 and load_state_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert generate_state_key(tmp_path / "second.key") != key
    with pytest.raises(FileExistsError, match="state.key: a state key is already there"):
        generate_state_key(path)
    assert load_state_key(path) == key


def test_state_key_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.key: state key file not found"):
        load_state_key(tmp_path / "missing.key")
    (tmp_path / "short.key").write_bytes(base64.b64encode(b"x" * 16))
    with pytest.raises(ValueError, match="short.key: state key is 16 bytes, expected 32"):
        load_state_key(tmp_path / "short.key")
    (tmp_path / "junk.key").write_text("not base64 at all!")
    with pytest.raises(ValueError, match="junk.key: not a state key"):
        load_state_key(tmp_path / "junk.key")
    with pytest.raises(ValueError, match="must be 32 bytes"):
        seal(DATA, b"x" * 16, "model.pt")  # AES-128 keys are not accepted
