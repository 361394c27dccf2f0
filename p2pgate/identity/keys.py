"""A device's identity: an Ed25519 key and a self-signed certificate.

The certificate is deliberately bland: constant CN `p2pgate` (never the device
name), no CA bits, validity 2000-01-01 to 9999-12-31 (phone clocks are wrong;
trust comes from pinning the certificate's hash, not from dates or issuers).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from p2pgate.errors import LocalProtocolError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.identity.files import read_secret, write_file, write_secret
from p2pgate.identity.paths import DataDir

__all__ = ["Identity", "IdentityError", "make_certificate"]

CERT_CN = "p2pgate"
NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


class IdentityError(LocalProtocolError):
    """The identity files are missing, damaged or do not belong together."""


def make_certificate(key: Ed25519PrivateKey) -> x509.Certificate:
    """A self-signed, non-CA leaf certificate for `key`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_CN)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, algorithm=None)
    )


@dataclass(frozen=True)
class Identity:
    """This device's key pair and certificate."""

    private_key: Ed25519PrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls) -> Identity:
        """A new identity: a fresh Ed25519 key and its certificate (nothing is written)."""
        key = Ed25519PrivateKey.generate()
        return cls(key, make_certificate(key))

    @classmethod
    def load(cls, data_dir: DataDir) -> Identity:
        """Read the identity from `data_dir`; raises IdentityError if missing or damaged."""
        try:
            key = serialization.load_pem_private_key(read_secret(data_dir.device_key), None)
            cert = x509.load_pem_x509_certificate(data_dir.device_cert.read_bytes())
        except FileNotFoundError:
            raise IdentityError(
                f"no device identity in {data_dir.root} (run `p2pgate init`)"
            ) from None
        except ValueError as exc:
            raise IdentityError(f"damaged identity files in {data_dir.root}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{data_dir.device_key} is not an Ed25519 key")
        if cert.public_key() != key.public_key():
            raise IdentityError(f"{data_dir.device_cert} does not belong to {data_dir.device_key}")
        return cls(key, cert)

    def save(self, data_dir: DataDir) -> None:
        """Write the key (mode 0600) and certificate into `data_dir`, creating it if needed."""
        data_dir.create()
        write_secret(data_dir.device_key, self.key_pem)
        write_file(data_dir.device_cert, self.cert_pem)

    @cached_property
    def cert_der(self) -> bytes:
        """The certificate in DER form, the bytes our device ID is the hash of."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        """The certificate in PEM form."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (a secret: store it with mode 0600)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @cached_property
    def device_id(self) -> DeviceID:
        """This device's ID, derived from the certificate."""
        return DeviceID.from_certificate(self.cert_der)

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key."""
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        """Sign `data` with the device key (a 64-byte Ed25519 signature)."""
        return self.private_key.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.device_id.short})"
