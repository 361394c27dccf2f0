import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay.access_tokens import (
    MAX_TTL,
    TokenRefused,
    issue_token,
    key_id,
    verify_token,
)

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
DEV = DeviceID(b"\x01" * 32)
NOW = 1_800_000_000.0


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_valid_token_round_trip():
    token = issue_token(KEY, DEV, "fleet", 3600, NOW)
    checked = verify_token(token, KEYS, "fleet", DEV, NOW + 10)
    assert checked.device_id == DEV
    assert checked.expires_at == int(NOW) + 3600


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: verify_token(t, KEYS, "other-fleet", DEV, NOW), "wrong_audience"),
        (lambda t: verify_token(t, KEYS, "fleet", DeviceID(b"\x02" * 32), NOW), "wrong_device"),
        (lambda t: verify_token(t, KEYS, "fleet", DEV, NOW + 3600 + 61), "expired"),
        (lambda t: verify_token(t, {}, "fleet", DEV, NOW), "unknown_key"),
        (lambda t: verify_token(t[:-3] + ("AAA" if t[-3:] != "AAA" else "BBB"), KEYS, "fleet",
                                DEV, NOW), "bad_signature"),
        (lambda t: verify_token("garbage", KEYS, "fleet", DEV, NOW), "malformed"),
        (lambda t: verify_token("a.b.c", KEYS, "fleet", DEV, NOW), "malformed"),
    ],
)
def test_refusals_carry_their_reason(mutate, reason):
    token = issue_token(KEY, DEV, "fleet", 3600, NOW)
    with pytest.raises(TokenRefused) as err:
        mutate(token)
    assert err.value.reason == reason


def test_alg_must_be_exactly_eddsa():
    kid = key_id(KEY.public_key())
    claims = b64({"sub": str(DEV), "aud": "fleet", "iat": int(NOW), "exp": int(NOW) + 60})
    for alg in ("none", "HS256", "eddsa", None):
        head = b64({"alg": alg, "kid": kid})
        forged = f"{head}.{claims}." + base64.urlsafe_b64encode(
            KEY.sign(f"{head}.{claims}".encode())).rstrip(b"=").decode()
        with pytest.raises(TokenRefused) as err:
            verify_token(forged, KEYS, "fleet", DEV, NOW)
        assert err.value.reason == "bad_alg"


def test_lifetime_above_30_days_refused_both_ways():
    with pytest.raises(ValueError, match="30 days"):
        issue_token(KEY, DEV, "fleet", MAX_TTL + 1, NOW)
    kid = key_id(KEY.public_key())
    head = b64({"alg": "EdDSA", "kid": kid})
    for iat in (int(NOW), int(NOW) + 10 * MAX_TTL):
        claims = b64({"sub": str(DEV), "aud": "fleet", "iat": iat, "exp": iat + MAX_TTL + 100})
        sig = base64.urlsafe_b64encode(KEY.sign(f"{head}.{claims}".encode())).rstrip(b"=")
        with pytest.raises(TokenRefused) as err:
            verify_token(f"{head}.{claims}.{sig.decode()}", KEYS, "fleet", DEV, NOW)
        assert err.value.reason == "too_long"
