"""Identities: one key pair and self-signed certificate per party and per analyst.

Trust is pinned, not delegated: nobody signs anyone else's certificate. The consortium
file pins each party's certificate by its SHA-256 fingerprint, and each party's policy
pins the analysts (and reviewers) it serves. Every TLS context made here trusts exactly
the certificates it is given, needs TLS 1.3 and a certificate from the peer, and the
caller still compares the peer's fingerprint with the one it expected (:func:`peer_name`),
so a certificate pinned for one party is never accepted as another's.

Keys are Ed25519, written 0600 and never leave the machine that made them; requests are
signed with them (:func:`sign`, :func:`verify`) so a party can show who asked.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from .errors import PPAError
from .expr import canonical_json

DEFAULT_VALIDITY_DAYS = 730
"""How long a new certificate is valid: rotate keys at least this often."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS handshake may take before the connection is dropped."""


class IdentityError(PPAError):
    """A key or certificate is missing, unreadable, expired or not the one pinned."""


def fingerprint(certificate: x509.Certificate | bytes) -> str:
    """``sha256:<64 hex>`` of a certificate (its DER bytes)."""
    der = certificate if isinstance(certificate, bytes) else \
        certificate.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as :func:`fingerprint` writes it (accepts colons and upper case)."""
    if not isinstance(text, str):
        raise IdentityError(f"a fingerprint must be text, not {type(text).__name__}")
    body = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(body) != 64 or any(c not in "0123456789abcdef" for c in body):
        raise IdentityError(f"malformed fingerprint {text[:80]!r}",
                            hint="write it as printed by `ppa identity show`: sha256:<64 hex>")
    return "sha256:" + body


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_identity(folder: str | Path, name: str, *, days: int = DEFAULT_VALIDITY_DAYS,
                    not_before: datetime.datetime | None = None) -> Identity:
    """Make a key pair and a self-signed certificate ``folder/name.key`` (0600) and
    ``folder/name.crt``; refuse to overwrite either."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise IdentityError(f"unusable identity name {name!r}",
                            hint="use 1 to 64 letters, digits, '-', '_' or '.'")
    if not 0 < days <= 36500:
        raise IdentityError(f"validity of {days} days is out of range (1 to 36500)")
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: owner only
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    for path in (key_path, cert_path):
        if path.exists():
            raise IdentityError(f"{path} exists; not overwriting it",
                                hint="choose another folder, or remove the old files first")
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, None))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity.load(cert_path, key_path)


def load_certificate(path: str | Path) -> x509.Certificate:
    """Read a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"certificate {path} not found") from None
    except ValueError:
        raise IdentityError(f"{path} is not a PEM certificate") from None


def certificate_name(cert: x509.Certificate) -> str:
    """The certificate's common name."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def describe(cert: x509.Certificate) -> dict[str, str]:
    """Name, fingerprint and validity of a certificate, for people."""
    return {"name": certificate_name(cert), "fingerprint": fingerprint(cert),
            "valid_from": cert.not_valid_before_utc.isoformat(),
            "valid_until": cert.not_valid_after_utc.isoformat()}


@dataclass(frozen=True)
class Pin:
    """A certificate trusted for one name (a party or an analyst)."""

    name: str
    certificate: x509.Certificate
    fingerprint: str

    @classmethod
    def load(cls, name: str, path: str | Path, expected: str | None) -> Pin:
        """The certificate at ``path``, which must have the ``expected`` fingerprint."""
        cert = load_certificate(path)
        actual = fingerprint(cert)
        if expected is None:
            raise IdentityError(f"no fingerprint pinned for {name}'s certificate {path}",
                                hint=f"add fingerprint = \"{actual}\" after checking it "
                                     f"with {name} by another channel")
        if normalise_fingerprint(expected) != actual:
            raise IdentityError(f"{path} is not the certificate pinned for {name} "
                                f"(fingerprint {actual}, pinned {expected})",
                                hint="get the certificate again, or the new fingerprint if "
                                     "the key was rotated")
        return cls(name, cert, actual)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def public_key(self) -> ed25519.Ed25519PublicKey:
        key = self.certificate.public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise IdentityError(f"{self.name}'s certificate does not hold an Ed25519 key",
                                hint="make identities with `ppa identity new`")
        return key


@dataclass(frozen=True)
class Identity:
    """Our own key and certificate (a party's or an analyst's)."""

    name: str
    cert_path: Path
    key_path: Path
    key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate

    @classmethod
    def load(cls, cert_path: str | Path, key_path: str | Path | None = None) -> Identity:
        """Read ``NAME.crt`` and its key (default: the same path with ``.key``)."""
        cert_path = Path(cert_path)
        key_path = Path(key_path) if key_path else cert_path.with_suffix(".key")
        cert = load_certificate(cert_path)
        try:
            mode = key_path.stat().st_mode
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except FileNotFoundError:
            raise IdentityError(f"private key {key_path} not found") from None
        except (ValueError, TypeError):
            raise IdentityError(f"{key_path} is not an unencrypted PEM private key") from None
        if mode & 0o077:
            raise IdentityError(f"private key {key_path} is readable by others "
                                f"(mode {mode & 0o777:o})", hint=f"chmod 600 {key_path}")
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError(f"{key_path} is not an Ed25519 key",
                                hint="make identities with `ppa identity new`")
        public = cert.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey) or \
                public.public_bytes_raw() != key.public_key().public_bytes_raw():
            raise IdentityError(f"{key_path} does not belong to {cert_path}")
        return cls(certificate_name(cert), cert_path, key_path, key, cert)

    @classmethod
    def from_prefix(cls, prefix: str | Path) -> Identity:
        """``prefix.crt`` and ``prefix.key`` (e.g. ``keys/alice``)."""
        prefix = Path(prefix).expanduser()
        return cls.load(prefix.with_name(prefix.name + ".crt"),
                        prefix.with_name(prefix.name + ".key"))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def check_valid(self, now: datetime.datetime | None = None) -> None:
        """Refuse a certificate that is not yet or no longer valid."""
        now = now or datetime.datetime.now(datetime.UTC)
        if not self.certificate.not_valid_before_utc <= now <= \
                self.certificate.not_valid_after_utc:
            raise IdentityError(f"certificate {self.cert_path} is not valid now "
                                f"(valid {self.certificate.not_valid_before_utc:%Y-%m-%d} to "
                                f"{self.certificate.not_valid_after_utc:%Y-%m-%d})",
                                hint="make a new identity (`ppa identity new`) and send "
                                     "its fingerprint to the other parties")


# -- TLS ------------------------------------------------------------------------------


def _context(purpose: int, identity: Identity, trusted: Iterable[Pin]) -> ssl.SSLContext:
    pins = list(trusted)
    if not pins:
        raise IdentityError("no peer certificates to trust")
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # peers are named by pinned fingerprint, not host name
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(identity.cert_path, identity.key_path)
    context.load_verify_locations(cadata="".join(pin.pem for pin in pins))
    return context


def server_context(identity: Identity, trusted: Iterable[Pin]) -> ssl.SSLContext:
    """TLS server side that accepts only clients holding one of the ``trusted`` certs."""
    return _context(ssl.PROTOCOL_TLS_SERVER, identity, trusted)


def client_context(identity: Identity, trusted: Iterable[Pin]) -> ssl.SSLContext:
    """TLS client side that accepts only servers holding one of the ``trusted`` certs."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, identity, trusted)


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The fingerprint of the certificate the peer proved it holds, if any."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return fingerprint(der) if der else None


def peer_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
              pins: Mapping[str, Pin]) -> str | None:
    """The name whose pinned certificate the peer holds, or None."""
    seen = peer_fingerprint(ssl_object)
    return next((name for name, pin in pins.items() if pin.fingerprint == seen), None)


# -- Signed requests --------------------------------------------------------------------

SIGNATURE_FIELD = "sig"


def sign(body: Mapping, identity: Identity) -> dict:
    """``body`` with an Ed25519 signature over its canonical JSON (without the field)."""
    unsigned = {k: v for k, v in body.items() if k != SIGNATURE_FIELD}
    signature = identity.key.sign(canonical_json(unsigned).encode())
    return {**unsigned, SIGNATURE_FIELD: base64.b64encode(signature).decode()}


def verify(body: Mapping, pin: Pin) -> None:
    """Check the signature :func:`sign` added, with ``pin``'s key."""
    text = body.get(SIGNATURE_FIELD)
    try:
        signature = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except ValueError:
        signature = b""
    unsigned = {k: v for k, v in body.items() if k != SIGNATURE_FIELD}
    try:
        pin.public_key().verify(signature, canonical_json(unsigned).encode())
    except (InvalidSignature, ValueError, TypeError):  # not signed, or not even JSON
        raise IdentityError(f"request is not signed by {pin.name}") from None
