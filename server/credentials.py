"""Federation credentials: a CA, the SuperLink's TLS certificate, one SuperNode auth key and one reply signing
key per organization, the coordinator's encoder signing key and its roster of organizations.

    python -m server.credentials --out DIR --superlink-address fl.example.org [--superlink-address ...]
        --org hospital-a [--org ...] [--days 365] [--force]

Writes DIR/ca/, DIR/superlink/, DIR/coordinator/, DIR/orgs/<org>/ and DIR/README.txt (who keeps what,
the Flower commands).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.checkpoint import write_atomic
from shared.signing import new_signing_key, roster_line

ORG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DNS_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")
PORT = 9100  # example Fleet/Control port in README.txt
PEM, PKCS8, NO_PW = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()


def _san(address: str) -> x509.GeneralName:
    """IP entry for an IP address, DNS entry for a host name; anything else (host:port, URL) is an error."""
    try:
        return x509.IPAddress(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        if not DNS_NAME.fullmatch(address) or len(address) > 253:
            raise ValueError(f"--superlink-address {address!r}: give an IP address or a host name, without port or scheme") from None
        return x509.DNSName(address.lower().rstrip("."))


def _check_orgs(orgs: list[str]) -> None:
    if not orgs:
        raise ValueError("give at least one --org")
    for org in orgs:
        if not ORG_NAME.fullmatch(org):
            raise ValueError(f"--org {org!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                             "(it names the organization's folder)")
    lower = [o.lower() for o in orgs]
    if dup := sorted({o for o in lower if lower.count(o) > 1}):
        raise ValueError(f"--org given twice (names are compared without case): {', '.join(dup)}")


def _cert(subject: str, key, issuer: x509.Certificate | None, issuer_key, days: int, extensions) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key, hashes.SHA384())


def _key_usage(**on) -> x509.KeyUsage:
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def generate(out_dir: str | Path, addresses: list[str], orgs: list[str], days: int = 365, *,
             force: bool = False) -> dict[str, Path]:
    """Write every credential file under `out_dir`; returns {path relative to out_dir: absolute path}.

    Refuses a non-empty `out_dir` unless `force` (which replaces this set's files, and so the CA).
    """
    out = Path(out_dir).resolve()
    sans = list(dict.fromkeys(_san(a) for a in addresses))
    if not sans:
        raise ValueError("give at least one --superlink-address")
    _check_orgs(orgs)
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty: pass --force to replace its credentials (and the CA)")

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = _cert("fedts federation CA", ca_key, None, ca_key, days, [
        (x509.BasicConstraints(ca=True, path_length=0), True), (_key_usage(key_cert_sign=True, crl_sign=True), True)])
    server = _cert(str(sans[0].value), server_key, ca, ca_key, days, [
        (x509.BasicConstraints(ca=False, path_length=None), True), (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False), (x509.SubjectAlternativeName(sans), False)])
    ca_pem = ca.public_bytes(PEM)
    signing_key, signing_pub = new_signing_key()
    files: dict[str, tuple[bytes, int]] = {
        "ca/ca.key": (ca_key.private_bytes(PEM, PKCS8, NO_PW), 0o600), "ca/ca.crt": (ca_pem, 0o644),
        "superlink/server.key": (server_key.private_bytes(PEM, PKCS8, NO_PW), 0o600),
        "superlink/server.pem": (server.public_bytes(PEM), 0o644), "superlink/ca.crt": (ca_pem, 0o644),
        "coordinator/signing.key": (signing_key, 0o600), "coordinator/signing.pub": (signing_pub, 0o644)}
    roster = ["# the organizations whose replies count (run config roster): site name, Ed25519 public key\n"]
    for org in orgs:
        reply_key = Ed25519PrivateKey.generate()
        files[f"orgs/{org}/reply.key"] = (reply_key.private_bytes(PEM, PKCS8, NO_PW), 0o600)
        roster.append(roster_line(org, reply_key.public_key()))
        key = ec.generate_private_key(ec.SECP384R1())
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        files[f"orgs/{org}/auth_key"] = (key.private_bytes(PEM, serialization.PrivateFormat.OpenSSH, NO_PW), 0o600)
        files[f"orgs/{org}/auth_key.pub"] = (pub + f" {org}\n".encode(), 0o644)
        files[f"orgs/{org}/ca.crt"] = (ca_pem, 0o644)
        files[f"orgs/{org}/signing.pub"] = (signing_pub, 0o644)
    files["coordinator/roster.txt"] = ("".join(roster).encode(), 0o644)
    files["README.txt"] = (_readme(out, sans, orgs, server.not_valid_after_utc).encode(), 0o644)

    written = {}
    for rel, (data, mode) in files.items():
        path = out / rel
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

        def write(f, data=data, mode=mode):
            os.fchmod(f.fileno(), mode)  # before any byte is written, and before the rename makes it visible
            f.write(data)
        write_atomic(path, write)
        written[rel] = path
    return written


def _readme(out: Path, sans: list, orgs: list[str], until: dt.datetime) -> str:
    names = [str(s.value) for s in sans]
    dns = [s.value for s in sans if isinstance(s, x509.DNSName) and s.value != "localhost"]
    ips = [str(s.value) for s in sans if isinstance(s, x509.IPAddress) and not s.value.is_loopback]
    host = (dns + ips + names)[0]  # the address remote SuperNodes most likely use
    host = f"[{host}]" if ":" in host else host
    org_lines = "\n".join(f"  flwr supernode register {out}/orgs/{o}/auth_key.pub fedts --name {o}" for o in orgs)
    return f"""Federation credentials (python -m server.credentials), valid until {until:%Y-%m-%d}.
SuperLink certificate names: {', '.join(names)}. Organizations: {', '.join(orgs)}.

WHO KEEPS WHAT (secret files: never copy them anywhere else, never commit them)
- Coordinator: ca/ca.key is SECRET. It can sign certificates any SuperNode will trust: keep it with the
  coordinator only, ideally offline (move it to offline storage now). ca/ca.crt is public.
- Coordinator: coordinator/signing.key is SECRET. The ServerApp signs every encoder it sends with it
  (run config sign-key): keep it where the ServerApp runs, with the coordinator only; whoever holds it can
  send encoders the sites accept. coordinator/signing.pub is its public half.
- Coordinator: coordinator/roster.txt lists each organization's reply key (public). With run config
  roster='/path/to/coordinator/roster.txt' the ServerApp counts only replies signed by a listed site: a SuperNode
  whose auth key someone else registered gets nothing aggregated. Keep it where no one else can edit it.
- SuperLink host: superlink/server.key is SECRET (on the SuperLink host only); superlink/server.pem and
  superlink/ca.crt are public.
- Each organization <org>: orgs/<org>/auth_key is SECRET (with that organization only: it is the SuperNode's
  identity); hand it over on a secure channel, then delete the coordinator's copy. orgs/<org>/ca.crt is public;
  orgs/<org>/auth_key.pub stays with the coordinator, who registers it. orgs/<org>/signing.pub is public (a copy
  of coordinator/signing.pub): the site refuses any encoder it does not verify (verify-key), so hand it over on
  a channel that cannot be tampered with, and keep it where no one else can replace it. orgs/<org>/reply.key is
  SECRET (with that organization only): the site signs its replies with it (node config reply-key); the roster
  names it <org>, so the site's name (its data's site, or node config site-name) must be <org>.

1. SuperLink host, from the folder holding superlink/ (--host 0.0.0.0: reachable from other machines;
   --database: registrations survive a restart):
  flower-superlink --host 0.0.0.0 --port {PORT} --ssl-ca-certfile superlink/ca.crt \\
    --ssl-certfile superlink/server.pem --ssl-keyfile superlink/server.key \\
    --enable-supernode-auth --database superlink.db

2. Coordinator: a SuperLink connection in ~/.flwr/config.toml ($FLWR_HOME/config.toml if set;
   root-certificates must be an absolute path):
  [superlink.fedts]
  address = "{host}:{PORT}"
  root-certificates = "{out}/ca/ca.crt"
   then, with the SuperLink running, register each organization's public key:
{org_lines}

3. Each organization, from its folder orgs/<org>/ (paths: the site's own data file, a folder for its
   private state, this folder's signing.pub, the only key whose encoders the site accepts, and its reply.key):
  flower-supernode --superlink {host}:{PORT} --root-certificates ca.crt --auth-supernode-private-key auth_key \\
    --node-config "data-path='/path/to/series.csv' state-dir='/path/to/state' site-name='<org>' \\
      verify-key='/path/to/signing.pub' reply-key='/path/to/reply.key'"
   An unregistered key is refused ("Failed to activate SuperNode", exit code 305). Several SuperNodes on one
   machine: give each its own --port (its local Runtime API, default 9094). From the project folder,
   `./dev python -m client.supernode --poll 0.5` with the same arguments instead of flower-supernode picks up
   each round's message within 0.5 s instead of Flower's 3 s idle wait, and starts its ClientApp within
   0.1 s instead of 1 s (docs/studies.md: Round overhead).

4. Coordinator, from the project folder:
  flwr run . fedts --stream --run-config "sign-key='{out}/coordinator/signing.key' roster='{out}/coordinator/roster.txt'"

The SuperLink serves its Control API (where `flwr supernode register` and `flwr run` go; no login in
open-source Flower 1.41) on the same address as the Fleet API the SuperNodes use. Let the sites reach
that address only through a filter that passes /v1/fleet/ alone (docs/deployment.md: Control API), and
run with the roster, so a stranger who registers a key of its own still gets nothing aggregated.
"""


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m server.credentials", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to create (refused if not empty, unless --force)")
    p.add_argument("--superlink-address", action="append", default=[], required=True, dest="addresses",
                   help="IP address or host name the SuperNodes use to reach the SuperLink (repeatable)")
    p.add_argument("--org", action="append", default=[], required=True, dest="orgs",
                   help="organization name, one SuperNode key each (repeatable)")
    p.add_argument("--days", type=int, default=365, help="certificate validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="replace the credentials in a non-empty --out")
    args = p.parse_args(argv)
    try:
        files = generate(args.out, args.addresses, args.orgs, args.days, force=args.force)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {Path(args.out).resolve()}; read README.txt there first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
