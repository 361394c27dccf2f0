import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from p2pgate.identity import Identity, IdentityError
from p2pgate.identity.deviceid import DeviceID
from p2pgate.identity.files import SecretFileError
from p2pgate.identity.paths import DataDir


def test_certificate_is_exactly_what_design_says():
    ident = Identity.generate()
    cert = ident.certificate
    assert isinstance(cert.public_key(), Ed25519PublicKey)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["p2pgate"]
    assert cert.issuer == cert.subject
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
    assert cert.not_valid_before_utc == dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert cert.not_valid_after_utc == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    cert.verify_directly_issued_by(cert)
    assert ident.device_id == DeviceID.from_certificate(ident.cert_der)


def test_two_identities_differ():
    assert Identity.generate().device_id != Identity.generate().device_id


def test_save_and_load_with_private_key_mode_0600(tmp_path):
    data_dir = DataDir(tmp_path / "node")
    ident = Identity.generate()
    ident.save(data_dir)
    assert stat.S_IMODE(data_dir.device_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.root.stat().st_mode) == 0o700
    assert Identity.load(data_dir).device_id == ident.device_id


def test_load_refuses_a_key_others_can_read(tmp_path):
    data_dir = DataDir(tmp_path)
    Identity.generate().save(data_dir)
    data_dir.device_key.chmod(0o640)
    with pytest.raises(SecretFileError, match="chmod 600"):
        Identity.load(data_dir)


def test_load_refuses_a_certificate_of_another_key(tmp_path):
    data_dir = DataDir(tmp_path)
    Identity.generate().save(data_dir)
    data_dir.device_cert.write_bytes(Identity.generate().cert_pem)
    with pytest.raises(IdentityError, match="does not belong"):
        Identity.load(data_dir)


def test_missing_identity_says_to_run_init(tmp_path):
    with pytest.raises(SecretFileError, match="p2pgate init"):
        Identity.load(DataDir(tmp_path))


def test_repr_shows_no_secret():
    ident = Identity.generate()
    assert "PRIVATE" not in repr(ident)
    assert repr(ident) == f"Identity({ident.device_id.short})"
