"""shared.signing: a signed encoder verifies; changed weights, another round or run, another key or no signature do not;
torch and numpy states digest alike; key files and their errors; a reply's digest and its check against a roster."""

from __future__ import annotations

import re
import stat

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.model import Forecaster, ModelArgs
from shared.signing import (Reply, Roster, SignatureError, encoder_digest, generate_signing_key, load_private_key,
                            load_public_key, roster_line, sign_encoder, sign_reply, verify_encoder)

ARGS = ModelArgs(lookback=48, horizon=12, patch_len=12, patch_stride=12, d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, lags=(1, 24))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in Forecaster(ARGS).encoder.state_dict().items()}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_signing_key(tmp_path_factory.mktemp("keys") / "coordinator")


def test_round_trip_with_key_objects_and_files(encoder, keys):
    private_path, public_path = keys
    signature = sign_encoder(load_private_key(private_path), encoder, 3)
    assert len(signature) == 64
    verify_encoder(load_public_key(public_path), encoder, 3, signature)
    verify_encoder(public_path, encoder, 3, signature)
    assert sign_encoder(private_path, encoder, 3) == signature  # Ed25519 is deterministic
    numpy_state = {k: v.numpy() for k, v in encoder.items()}
    verify_encoder(public_path, numpy_state, 3, signature)  # signed as tensors, checked as arrays


def test_tampered_encoder_is_refused(encoder, keys):
    signature = sign_encoder(keys[0], encoder, 3)
    key = sorted(encoder)[len(encoder) // 2]
    tampered = dict(encoder)
    tampered[key] = encoder[key].clone()
    flat = tampered[key].view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(np.inf, dtype=flat.dtype))  # the smallest possible change
    assert not torch.equal(tampered[key], encoder[key])
    with pytest.raises(SignatureError, match=f"does not come from the coordinator whose key is at {re.escape(str(keys[1]))}"):
        verify_encoder(keys[1], tampered, 3, signature)


def test_wrong_round_is_refused(encoder, keys):
    signature = sign_encoder(keys[0], encoder, 3)
    with pytest.raises(SignatureError, match="round 4: the encoder does not come from the coordinator"):
        verify_encoder(keys[1], encoder, 4, signature)  # a replayed round-3 encoder


def test_another_run_is_refused(encoder, keys):
    signature = sign_encoder(keys[0], encoder, 3, run_key="run-a")
    verify_encoder(keys[1], encoder, 3, signature, run_key="run-a")
    with pytest.raises(SignatureError, match="round 3: .* signed for another round or run"):
        verify_encoder(keys[1], encoder, 3, signature, run_key="run-b")  # the same round of another run
    with pytest.raises(SignatureError, match="does not verify"):
        verify_encoder(keys[1], encoder, 3, signature)  # no run


def test_signature_from_another_key_is_refused(encoder, keys, tmp_path):
    intruder, _ = generate_signing_key(tmp_path)
    signature = sign_encoder(intruder, encoder, 3)
    with pytest.raises(SignatureError, match=f"whose key is at {re.escape(str(keys[1]))}"):
        verify_encoder(keys[1], encoder, 3, signature)
    with pytest.raises(SignatureError, match=r"from the coordinator \("):  # a key object: no path to name
        verify_encoder(load_public_key(keys[1]), encoder, 3, signature)


@pytest.mark.parametrize("signature", [None, b""])
def test_missing_signature_is_refused(encoder, keys, signature):
    with pytest.raises(SignatureError, match=f"unsigned encoder: round 3 .* whose key is at {re.escape(str(keys[1]))}"):
        verify_encoder(keys[1], encoder, 3, signature)


def test_signature_of_the_wrong_type_is_refused(encoder, keys):
    signature = sign_encoder(keys[0], encoder, 3)
    with pytest.raises(SignatureError, match="must be bytes, got str"):
        verify_encoder(keys[1], encoder, 3, signature.hex())


def test_tensor_and_numpy_states_digest_alike(encoder):
    numpy_state = {k: v.numpy().copy() for k, v in encoder.items()}
    digest = encoder_digest(encoder, 5)
    assert encoder_digest(numpy_state, 5) == digest
    assert encoder_digest(dict(reversed(list(encoder.items()))), 5) == digest  # key order does not matter
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert encoder_digest({"w": a.t()}, 0) == encoder_digest({"w": a.t().contiguous().numpy()}, 0)
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    assert encoder_digest({"w": big_endian}, 0) == encoder_digest({"w": a}, 0)  # values, not byte order


def test_digest_covers_names_dtypes_shapes_round_and_run():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    digests = {
        encoder_digest({"w": a}, 0),
        encoder_digest({"w": a}, 1),
        encoder_digest({"w": a}, 0, "run"),
        encoder_digest({"v": a}, 0),
        encoder_digest({"w": a.reshape(3, 2)}, 0),  # same bytes, another shape
        encoder_digest({"w": a.astype(np.float64)}, 0),  # same values, another dtype
        encoder_digest({"w": a.view(np.int32)}, 0),  # same bytes, another dtype
        encoder_digest({"w": a[:1], "w2": a[1:]}, 0),  # same bytes, split differently
        encoder_digest({"w": a, "x": np.zeros(0, np.float32)}, 0),  # an extra (empty) tensor
    }
    assert len(digests) == 9


def test_bad_round_and_dtype_are_errors():
    with pytest.raises(ValueError, match="non-negative int"):
        encoder_digest({"w": np.zeros(2)}, -1)
    with pytest.raises(ValueError, match="'w': cannot sign dtype"):
        encoder_digest({"w": np.array(["a"])}, 0)


def test_key_files_modes_and_overwrite_guard(keys):
    private_path, public_path = keys
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert load_private_key(private_path).public_key() == load_public_key(public_path)
    before = private_path.read_bytes()
    with pytest.raises(FileExistsError, match="signing.key"):
        generate_signing_key(private_path.parent)
    assert private_path.read_bytes() == before
    assert not list(private_path.parent.glob(".*.tmp"))


def test_key_loading_errors_name_the_file(keys, tmp_path):
    private_path, public_path = keys
    with pytest.raises(FileNotFoundError, match="nothing.pub: signing public key file not found"):
        load_public_key(tmp_path / "nothing.pub")
    with pytest.raises(FileNotFoundError, match="nothing.key: signing key file not found"):
        load_private_key(tmp_path / "nothing.key")
    with pytest.raises(ValueError, match="signing.pub: holds a public key"):
        load_private_key(public_path)
    with pytest.raises(ValueError, match="signing.key: holds a private key"):
        load_public_key(private_path)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(ec_key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ValueError, match="ec.key: not an Ed25519 signing key"):
        load_private_key(tmp_path / "ec.key")
    with pytest.raises(ValueError, match="ec.pub: not an Ed25519 public key"):
        load_public_key(tmp_path / "ec.pub")
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(ValueError, match="junk: not a PEM private key"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(ValueError, match="junk: not a PEM public key"):
        load_public_key(tmp_path / "junk")
    (tmp_path / "locked.key").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ValueError, match="locked.key: the signing key is password-protected"):
        load_private_key(tmp_path / "locked.key")


def _reply(**changes):
    records = {"arrays": {"flat": np.arange(4, dtype=np.float32)}, "metrics": {"num-examples": 10, "val-mae": 0.5},
               "site": {"name": "a", "served": "federated"}}
    fields = {"run_key": "run", "server_round": 1, "phase": "train", "site": "a", "records": records} | changes
    return Reply(**fields)


def test_reply_digest_covers_every_field_and_record_value():
    base = _reply().records
    variants = [
        _reply(), _reply(run_key="other"), _reply(server_round=2), _reply(phase="evaluate"), _reply(site="b"),
        _reply(records={**base, "arrays": {"flat": np.arange(4, dtype=np.float64)}}),
        _reply(records={**base, "metrics": {"num-examples": 11, "val-mae": 0.5}}),
        _reply(records={**base, "metrics": {"num-examples": 10.0, "val-mae": 0.5}}),  # int and float differ
        _reply(records={**base, "metrics": {"num-examples": 10, "val-mae": 0.5, "extra": [1, 2]}}),
        _reply(records={**base, "site": {"name": "a", "served": "alone"}}),
        _reply(records={"arrays2": base["arrays"], "metrics": base["metrics"], "site": base["site"]}),
    ]
    assert len({r.digest() for r in variants}) == len(variants)
    as_torch = {**base, "arrays": {"flat": torch.arange(4, dtype=torch.float32)}}
    assert _reply(records=as_torch).digest() == _reply().digest()  # values, not the array type
    with pytest.raises(ValueError, match="reply value 'x': cannot sign a dict"):
        _reply(records={"m": {"x": {}}}).digest()


def test_a_reply_verifies_only_with_the_roster_key_of_its_site(keys, tmp_path):
    a_key, b_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "roster.txt").write_text(roster_line("a", a_key.public_key()) + roster_line("b", b_key.public_key()))
    roster = Roster.load(tmp_path / "roster.txt")
    assert sorted(roster.keys) == ["a", "b"]
    roster.verify(_reply(), sign_reply(a_key, _reply()))
    with pytest.raises(SignatureError, match="signed with the key of 'b' but names itself 'a'"):
        roster.verify(_reply(), sign_reply(b_key, _reply()))
    with pytest.raises(SignatureError, match="does not verify with the key .* lists for 'a'"):
        roster.verify(_reply(server_round=2), sign_reply(a_key, _reply()))
    with pytest.raises(SignatureError, match="unsigned reply"):
        roster.verify(_reply(), None)
    with pytest.raises(SignatureError, match="must be bytes, got str"):
        roster.verify(_reply(), "00")
    with pytest.raises(SignatureError, match="signed as 'c', a site not on"):
        roster.verify(_reply(site="c"), sign_reply(load_private_key(keys[0]), _reply(site="c")))
