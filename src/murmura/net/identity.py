"""A peer's identity (its keys) and the peers file (everyone else's public half).

A peer has two key pairs, kept apart because they do different jobs:

* an **Ed25519** signing key: it signs every envelope (:mod:`murmura.net.wire`), so a message
  is tied to its sender whatever the transport;
* an **ECDSA P-256** key and a self-signed X.509 certificate for mutual TLS (a key type
  gRPC's BoringSSL accepts), identified by the certificate's SHA-256 **fingerprint**.

:func:`generate` (what ``murmura keygen`` calls) writes an identity directory:

=================  ======  =====================================================
file               mode    content
=================  ======  =====================================================
``ed25519.key``    0600    the Ed25519 private key, PKCS#8 PEM
``tls.key``        0600    the TLS private key, PKCS#8 PEM
``tls.crt``        0644    the self-signed certificate, PEM
``peer.toml``      0644    this peer's entry for the peers file, without address
=================  ======  =====================================================

Private keys are created with mode 0600 (never world-readable, not even for an instant) and
:meth:`Identity.load` refuses key files that group or others can read.

The **peers file** is TOML, one ``[[peer]]`` table per peer::

    [[peer]]
    id = "alice"                       # node id: A-Z a-z 0-9 _ . -, up to 64
    address = "10.0.0.5:7000"          # host:port ([v6]:port for IPv6)
    fingerprint = "3f9a..."            # SHA-256 of the certificate (DER), 64 hex digits
    ed25519 = "d75a..."                # Ed25519 public key, 64 hex digits
    certificate = "alice.crt"          # the PEM, or a path relative to the peers file

The certificate itself is listed because gRPC's Python API has no certificate-verification
callback: pinning works by making each peer's own certificate the only trust anchor for it,
and the fingerprint is checked against it at load time and against the TLS client's
certificate on every stream. :func:`load_peers` refuses, naming the peer and the field,
duplicate ids, addresses, fingerprints or keys, malformed keys, and a fingerprint that does
not match its certificate.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> alice = generate("alice", d / "alice")
>>> sorted(p.name for p in (d / "alice").iterdir())
['ed25519.key', 'peer.toml', 'tls.crt', 'tls.key']
>>> oct((d / "alice" / "tls.key").stat().st_mode & 0o777)
'0o600'
>>> Identity.load(d / "alice").fingerprint == alice.fingerprint
True
>>> path = write_peers(d / "peers.toml", [(alice, "127.0.0.1:7000")])
>>> peers = load_peers(path)
>>> peers["alice"].address, peers.by_fingerprint(alice.fingerprint).id
('127.0.0.1:7000', 'alice')
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from murmura.net.wire import check_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Every certificate names this one DNS name and clients expect it (ssl_target_name_override):
# who a peer is comes from its pinned certificate, never from a host name.
TLS_NAME = "murmura-peer"
CERT_DAYS = 3650
FILES = {"signing": "ed25519.key", "tls_key": "tls.key", "tls_cert": "tls.crt",
         "entry": "peer.toml"}


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of a PEM certificate's DER bytes, as 64 lowercase hex digits."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def public_hex(key: Ed25519PublicKey) -> str:
    """An Ed25519 public key as the 64 hex digits of its raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def _self_signed(node_id: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "murmura peer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
        # not a CA: a listed peer's key must not be able to issue certificates others accept
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    # the mode is given to open(): the file never exists with looser permissions
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if private:
        os.chmod(path, 0o600)  # an overwritten file keeps its old mode otherwise


def _read_private(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; create the identity with murmura keygen "
                                f"(murmura.net.identity.generate)")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise PermissionError(f"{path}: private key readable by group or others; "
                              f"run chmod 600 {path}")
    return path.read_bytes()


@dataclass(frozen=True)
class Identity:
    """One peer's private keys and certificate."""

    node_id: str
    signing_key: Ed25519PrivateKey
    tls_key_pem: bytes
    tls_cert_pem: bytes

    @classmethod
    def create(cls, node_id: str) -> Identity:
        """Fresh keys, in memory only (see :func:`generate` to write them)."""
        key_pem, cert_pem = _self_signed(check_id(node_id))
        return cls(node_id, Ed25519PrivateKey.generate(), key_pem, cert_pem)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.tls_cert_pem)

    def entry(self, address: str | None = None) -> dict[str, str]:
        """This peer's table for a peers file (the certificate inline)."""
        out = {"id": self.node_id}
        if address is not None:
            out["address"] = address
        return {**out, "fingerprint": self.fingerprint, "ed25519": public_hex(self.public_key),
                "certificate": self.tls_cert_pem.decode("ascii")}

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the identity directory (private keys 0600); refuses to replace existing
        keys unless ``overwrite``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not overwrite:
            existing = [n for n in FILES.values() if (directory / n).exists()]
            if existing:
                raise FileExistsError(f"{directory}: {', '.join(existing)} already exist; "
                                      f"refusing to replace keys (pass overwrite=True)")
        signing = self.signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        _write(directory / FILES["signing"], signing, True, overwrite)
        _write(directory / FILES["tls_key"], self.tls_key_pem, True, overwrite)
        _write(directory / FILES["tls_cert"], self.tls_cert_pem, False, overwrite)
        entry = tomli_w.dumps({"peer": [self.entry()]}).encode()
        _write(directory / FILES["entry"], entry, False, overwrite)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Identity:
        """Read an identity directory written by :func:`generate`."""
        directory = Path(directory)
        signing = serialization.load_pem_private_key(
            _read_private(directory / FILES["signing"]), password=None)
        if not isinstance(signing, Ed25519PrivateKey):
            raise ValueError(f"{directory / FILES['signing']}: not an Ed25519 private key")
        tls_key = _read_private(directory / FILES["tls_key"])
        cert = (directory / FILES["tls_cert"]).read_bytes()
        common = x509.load_pem_x509_certificate(cert).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
        if not common:
            raise ValueError(f"{directory / FILES['tls_cert']}: no common name (node id)")
        return cls(check_id(str(common[0].value)), signing, tls_key, cert)


def generate(node_id: str, directory: str | Path, overwrite: bool = False) -> Identity:
    """Create a peer's keys and certificate and write them to ``directory``: what
    ``murmura keygen`` does."""
    identity = Identity.create(node_id)
    identity.save(directory, overwrite=overwrite)
    return identity


class PeersError(ValueError):
    """A peers file that cannot be used; the message names the peer and the field."""


@dataclass(frozen=True)
class Peer:
    """One line of the peers file, checked."""

    id: str
    host: str
    port: int
    fingerprint: str
    public_key: Ed25519PublicKey
    cert_pem: bytes

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Peers(Mapping[str, Peer]):
    """The checked peers file: node id -> :class:`Peer`, and fingerprint -> peer."""

    def __init__(self, peers: Iterable[Peer]) -> None:
        self._by_id = {p.id: p for p in peers}
        self._by_fp = {p.fingerprint: p for p in self._by_id.values()}

    def __getitem__(self, node_id: str) -> Peer:
        return self._by_id[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def by_fingerprint(self, fp: str) -> Peer | None:
        """The peer whose certificate has this fingerprint, or ``None``."""
        return self._by_fp.get(fp)

    def trust_pem(self) -> bytes:
        """Every listed certificate, concatenated: a server's client-certificate roots."""
        return b"".join(p.cert_pem for p in self._by_id.values())


_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS = ("id", "address", "fingerprint", "ed25519", "certificate")


def parse_address(value: object) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); :class:`ValueError` otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f"{value!r} is not host:port (or [ipv6]:port)")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} outside 1..65535")
    return host, int(port)


def _peer(entry: object, index: int, base: Path) -> Peer:
    if not isinstance(entry, dict):
        raise PeersError(f"peer #{index}: not a table")
    label = f"peer #{index} ({entry.get('id')!r})"

    def bad(field: str, why: str) -> PeersError:
        return PeersError(f"{label}, field {field!r}: {why}")

    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field (the fields are {', '.join(_FIELDS)})")
    missing = [f for f in _FIELDS if f not in entry]
    if missing:
        raise bad(missing[0], "missing")
    try:
        node_id = check_id(entry["id"])
    except ValueError as e:
        raise bad("id", str(e)) from None
    try:
        host, port = parse_address(entry["address"])
    except ValueError as e:
        raise bad("address", str(e)) from None
    fp = str(entry["fingerprint"]).lower().replace(":", "")
    if not _HEX64.match(fp):
        raise bad("fingerprint", "not 64 hex digits (a SHA-256)")
    key_hex = str(entry["ed25519"]).lower()
    if not _HEX64.match(key_hex):
        raise bad("ed25519", "not 64 hex digits (a raw 32-byte Ed25519 public key)")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
    except ValueError as e:
        raise bad("ed25519", f"not an Ed25519 public key ({e})") from None
    cert = entry["certificate"]
    if not isinstance(cert, str):
        raise bad("certificate", "not a string (a PEM or a path)")
    if not cert.lstrip().startswith("-----BEGIN"):
        path = base / cert
        try:
            cert = path.read_text()
        except OSError as e:
            raise bad("certificate", f"cannot read {path}: {e.strerror}") from None
    try:
        actual = fingerprint(cert.encode("ascii"))
    except ValueError as e:
        raise bad("certificate", f"not a PEM X.509 certificate ({e})") from None
    if actual != fp:
        raise bad("fingerprint", f"{fp} does not match the certificate's {actual}")
    return Peer(node_id, host, port, fp, public_key, cert.encode("ascii"))


def load_peers(path: str | Path) -> Peers:
    """Read and check a peers file; :class:`PeersError` names the peer and field at fault."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PeersError(f"{path}: {e}") from None
    try:
        return peers_from(data, base=path.parent)
    except PeersError as e:
        raise PeersError(f"{path}: {e}") from None


def peers_from(data: Mapping[str, object], base: Path = Path(".")) -> Peers:
    """Check a parsed peers file (``{"peer": [...]}``); relative paths are from ``base``."""
    extra = sorted(set(data) - {"peer"})
    if extra:
        raise PeersError(f"unknown top-level key {extra[0]!r} (only [[peer]] tables)")
    entries = data.get("peer")
    if not isinstance(entries, list) or not entries:
        raise PeersError("no [[peer]] tables")
    peers = [_peer(e, i, base) for i, e in enumerate(entries)]
    for field, key in (("id", lambda p: p.id), ("address", lambda p: (p.host.lower(), p.port)),
                       ("fingerprint", lambda p: p.fingerprint),
                       ("ed25519", lambda p: public_hex(p.public_key))):
        seen: dict[object, int] = {}
        for i, p in enumerate(peers):
            k = key(p)
            if k in seen:
                raise PeersError(f"peer #{i} ({p.id!r}), field {field!r}: the same as "
                                 f"peer #{seen[k]} ({peers[seen[k]].id!r})")
            seen[k] = i
    return Peers(peers)


def write_peers(path: str | Path, peers: Iterable[tuple[Identity, str]]) -> Path:
    """Write a peers file listing ``(identity, address)`` pairs, certificates inline."""
    path = Path(path)
    path.write_text(tomli_w.dumps({"peer": [ident.entry(addr) for ident, addr in peers]}))
    return path


__all__ = ["TLS_NAME", "Identity", "Peer", "Peers", "PeersError", "fingerprint", "generate",
           "load_peers", "parse_address", "peers_from", "public_hex", "write_peers"]
