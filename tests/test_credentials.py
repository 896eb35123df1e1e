"""server.credentials: CA, SuperLink certificate, SuperNode auth keys, encoder signing key, reply keys and the
roster, overwrite guard, a real TLS handshake."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from server.credentials import generate, main
from shared.signing import (Reply, Roster, SignatureError, load_private_key, load_public_key, sign_encoder,
                            sign_reply, verify_encoder)

ADDRESSES = ["127.0.0.1", "localhost", "fl.example.org"]
ORGS = ["hospital-a", "hospital-b"]


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("creds") / "out", ADDRESSES, ORGS, days=30)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("other") / "out", ["localhost"], ["x"], days=30)


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verifies(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        return True
    except Exception:
        return False


def test_server_certificate_signed_by_ca_with_typed_sans(creds, other):
    ca, server = _cert(creds["ca/ca.crt"]), _cert(creds["superlink/server.pem"])
    assert _verifies(ca, server) and server.issuer == ca.subject
    assert not _verifies(_cert(other["ca/ca.crt"]), server)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    key = serialization.load_pem_private_key(creds["superlink/server.key"].read_bytes(), None)
    assert key.public_key() == server.public_key()
    ca_pem = creds["ca/ca.crt"].read_bytes()
    assert all(creds[p].read_bytes() == ca_pem for p in ["superlink/ca.crt", *(f"orgs/{o}/ca.crt" for o in ORGS)])


def test_ca_is_a_ca(creds):
    ca = _cert(creds["ca/ca.crt"])
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is True and bc.critical
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert _verifies(ca, ca)
    key = serialization.load_pem_private_key(creds["ca/ca.key"].read_bytes(), None)
    assert key.public_key() == ca.public_key()


def test_private_keys_are_owner_only(creds):
    for rel in ["ca/ca.key", "superlink/server.key", "coordinator/signing.key", *(f"orgs/{o}/auth_key" for o in ORGS),
                *(f"orgs/{o}/reply.key" for o in ORGS)]:
        assert stat.S_IMODE(creds[rel].stat().st_mode) == 0o600, rel
    assert not list(creds["ca/ca.key"].parent.glob(".*.tmp"))  # no temporary file left behind


def test_org_keys_are_openssh_p384_and_match(creds):
    from flwr.cli.supernode.register import try_load_public_key  # what `flwr supernode register` runs

    for org in ORGS:
        key = serialization.load_ssh_private_key(creds[f"orgs/{org}/auth_key"].read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
        line = creds[f"orgs/{org}/auth_key.pub"].read_text()
        assert line.startswith("ecdsa-sha2-nistp384 ") and line.split()[2] == org
        assert serialization.load_ssh_public_key(line.encode()) == key.public_key()
        assert try_load_public_key(creds[f"orgs/{org}/auth_key.pub"])
    a, b = (creds[f"orgs/{o}/auth_key.pub"].read_text().split()[1] for o in ORGS)
    assert a != b


def test_signing_key_pair_reaches_every_org(creds, other):
    pub = creds["coordinator/signing.pub"].read_bytes()
    assert all(creds[f"orgs/{o}/signing.pub"].read_bytes() == pub for o in ORGS)
    assert [rel for rel in creds if rel.endswith("signing.key")] == ["coordinator/signing.key"]  # never to an org
    encoder = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    signature = sign_encoder(load_private_key(creds["coordinator/signing.key"]), encoder, 1)
    for org in ORGS:
        verify_encoder(creds[f"orgs/{org}/signing.pub"], encoder, 1, signature)
    with pytest.raises(SignatureError, match="does not come from the coordinator"):
        verify_encoder(other["orgs/x/signing.pub"], encoder, 1, signature)  # another federation's key
    assert load_public_key(other["coordinator/signing.pub"]) != load_public_key(creds["coordinator/signing.pub"])


def test_the_roster_lists_each_organizations_reply_key(creds, other):
    roster = Roster.load(creds["coordinator/roster.txt"])
    assert sorted(roster.keys) == sorted(ORGS)
    reply = Reply("run", 1, "train", ORGS[0], {"metrics": {"num-examples": 3}})
    roster.verify(reply, sign_reply(creds[f"orgs/{ORGS[0]}/reply.key"], reply))
    with pytest.raises(SignatureError, match=f"signed with the key of '{ORGS[1]}'"):
        roster.verify(reply, sign_reply(creds[f"orgs/{ORGS[1]}/reply.key"], reply))
    with pytest.raises(SignatureError, match="does not verify"):  # another federation's organization
        roster.verify(reply, sign_reply(other["orgs/x/reply.key"], reply))
    assert [rel for rel in creds if rel.endswith("reply.key")] == [f"orgs/{o}/reply.key" for o in ORGS]


def test_readme_names_files_and_commands(creds):
    text = creds["README.txt"].read_text()
    for part in ["--ssl-ca-certfile superlink/ca.crt", "--ssl-certfile superlink/server.pem",
                 "--ssl-keyfile superlink/server.key", "--enable-supernode-auth", "--root-certificates ca.crt",
                 "--auth-supernode-private-key auth_key", "--superlink fl.example.org:", "ca/ca.key is SECRET",
                 "coordinator/signing.key is SECRET", "orgs/<org>/signing.pub is public", "sign-key", "verify-key",
                 "orgs/<org>/reply.key is", "reply-key='/path/to/reply.key'", "roster='", "/v1/fleet/",
                 *(f"orgs/{o}/auth_key.pub fedts --name {o}" for o in ORGS)]:
        assert part in text, part


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["--out", str(out), "--superlink-address", "localhost", "--org", "a"]
    assert main(args) == 0
    before = (out / "ca/ca.key").read_bytes()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and (out / "ca/ca.key").read_bytes() == before
    assert main([*args, "--force"]) == 0
    assert (out / "ca/ca.key").read_bytes() != before
    assert stat.S_IMODE((out / "ca/ca.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("org", ["../evil", "a/b", "", ".hidden", "has space", "x" * 65])
def test_bad_org_name(tmp_path, org):
    with pytest.raises(ValueError, match="--org"):
        generate(tmp_path / "c", ["localhost"], [org])
    assert not (tmp_path / "c").exists()


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="twice"):
        generate(tmp_path / "c", ["localhost"], ["a", "A"])
    with pytest.raises(ValueError, match="without port"):
        generate(tmp_path / "c", ["fl.example.org:9100"], ["a"])
    assert main(["--out", str(tmp_path / "c"), "--superlink-address", "localhost", "--org", "a/b"]) == 2
    assert "error: --org 'a/b'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def _handshake(creds, cafile, hostname):
    """One TLS handshake on loopback: server with server.pem/server.key, client trusting only `cafile`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(creds["superlink/server.pem"], creds["superlink/server.key"])
    client_ctx = ssl.create_default_context(cafile=str(cafile))  # CERT_REQUIRED, check_hostname on
    assert client_ctx.check_hostname
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def serve():
            try:
                conn, _ = listener.accept()
                conn.settimeout(5)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                    return tls.recv(2)
        finally:
            thread.join(timeout=5)


def test_tls_handshake_trusts_only_this_ca(creds, other):
    assert _handshake(creds, creds["ca/ca.crt"], "localhost") == b"ok"
    assert _handshake(creds, creds["ca/ca.crt"], "127.0.0.1") == b"ok"  # IP SAN
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(creds, other["ca/ca.crt"], "localhost")  # a different CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(creds, creds["ca/ca.crt"], "not-listed.example.org")  # a name not in the certificate
