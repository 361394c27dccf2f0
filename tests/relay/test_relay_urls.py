"""Relay URLs as people type them: one canonical form for the signer and the checker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgate.config import ConfigError, load_config
from p2pgate.identity import Identity
from p2pgate.identity.deviceid import DeviceID
from p2pgate.relay.access_tokens import issue_token, token_expiry
from p2pgate.relay.auth import (
    AuthRefused,
    RelayID,
    check_relay_proof,
    login_message,
    relay_hello,
    relay_url_for,
    verify_login,
)
from p2pgate.relay.config import load_relay_config
from p2pgate.relay.refusals import RefusalNotes, refusal_advice
from p2pgate.relay.relay_key import RelayKey
from p2pgate.urls import canonical_relay_url, relay_base_url, relay_url_id

ACCEPTED = [
    ("ws://relay.example:8443", "ws://relay.example:8443"),
    ("ws://relay.example:8443/", "ws://relay.example:8443"),
    ("http://relay.example:8443", "ws://relay.example:8443"),
    ("HTTP://Relay.Example:8443/", "ws://relay.example:8443"),
    ("https://relay.example", "wss://relay.example"),
    ("https://relay.example:443/", "wss://relay.example"),
    ("wss://relay.example:443", "wss://relay.example"),
    ("WSS://relay.example", "wss://relay.example"),
    ("ws://relay.example:80", "ws://relay.example"),
    ("http://relay.example:80/", "ws://relay.example"),
    ("wss://relay.example:8443", "wss://relay.example:8443"),
    ("http://127.0.0.1:8443", "ws://127.0.0.1:8443"),
    ("ws://[::1]:8443/", "ws://[::1]:8443"),
    ("https://[2001:DB8:0:0::1]", "wss://[2001:db8::1]"),
    ("wss://relay.example.:443", "wss://relay.example"),
    ("ws://relay_1.lan:9000", "ws://relay_1.lan:9000"),
]

REFUSED = [
    "", " ws://relay.example", "relay.example:8443", "relay.example", "ftp://relay.example",
    "file:///etc/passwd", "tcp://relay.example:1", "ws://", "http://", "ws://:8443",
    "ws://relay.example/v1", "https://relay.example/relay/", "ws://relay.example?x=1",
    "ws://relay.example#top", "ws://relay.example?", "ws://user:pw@relay.example",
    "ws://relay.example:0", "ws://relay.example:99999", "ws://relay.example:port",
    "ws://rel ay.example", "ws://relay..example", "ws://[::1", "ws://réseau.example",
]


@pytest.mark.parametrize(("typed", "canonical"), ACCEPTED)
def test_every_accepted_form_becomes_one_canonical_url(typed, canonical):
    assert canonical_relay_url(typed) == canonical
    assert canonical_relay_url(canonical) == canonical  # idempotent


@pytest.mark.parametrize("typed", REFUSED)
def test_anything_else_is_refused(typed):
    with pytest.raises(ValueError, match="relay URL"):
        canonical_relay_url(typed)


def test_a_login_signed_for_the_typed_form_verifies_at_the_canonical_one():
    """The bug: a client given http://HOST:PORT signed that, the relay checked ws://."""
    ident = Identity.generate()
    now = 1_000_000.0
    signed_for = canonical_relay_url("http://127.0.0.1:8443/")
    key = RelayKey.generate().public_raw
    message = login_message(ident.cert_der, ident.sign, signed_for, key, "nonce", now, None)
    assert verify_login(message, canonical_relay_url("ws://127.0.0.1:8443"), key, "nonce",
                        now, 60) == ident.device_id
    raw = login_message(ident.cert_der, ident.sign, "http://127.0.0.1:8443/", key, "nonce",
                        now, None)
    with pytest.raises(AuthRefused, match="wrong_url"):
        verify_login(raw, "ws://127.0.0.1:8443", key, "nonce", now, 60)


# -- configuration ---------------------------------------------------------------------


def test_node_config_keeps_relays_canonical():
    config = load_config(None, {"relays": ["http://relay.example:80/", "https://r2.example"]})
    assert config.relays == ("ws://relay.example", "wss://r2.example")


@pytest.mark.parametrize("bad", ["ftp://relay.example", "relay.example:8443",
                                 "ws://relay.example/path", "http://"])
def test_a_bad_relay_flag_is_one_line_naming_the_flag(bad):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"relays": [bad]})
    message = str(err.value)
    assert message.startswith("flags: --relay: not a relay URL")
    assert "\n" not in message


def test_a_bad_relay_in_config_toml_names_the_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('relays = ["ftp://relay.example"]\n')
    with pytest.raises(ConfigError, match=r"config.toml: relays: not a relay URL"):
        load_config(path)
    path.write_text('[relay_tokens]\n"relay.example" = "t"\n')
    with pytest.raises(ConfigError, match=r"config.toml: relay_tokens: not a relay URL"):
        load_config(path)


def test_relay_tokens_table_is_keyed_by_canonical_url_and_never_shown(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[relay_tokens]\n"https://relay.example:443/" = "SECRET.TOKEN.X"\n')
    config = load_config(path)
    assert config.relay_tokens == {"wss://relay.example": "SECRET.TOKEN.X"}
    assert "SECRET" not in repr(config)
    path.write_text('[relay_tokens]\n"wss://relay.example" = 5\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "relay_tokens" in str(err.value)


def test_node_refuses_a_bad_relay_flag_at_start_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "P2PGATE_DB_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "p2pgate", "--data-dir", str(tmp_path / "n"), "node",
         "--relay", "ftp://relay.example:8443", "--api", "127.0.0.1:0", "--listen",
         "127.0.0.1:0", "--no-mdns"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("p2pgate: error: flags: --relay: not a relay URL "
                                    "'ftp://relay.example:8443'")
    assert result.stderr.count("\n") == 1


def test_relay_public_url_is_canonical(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('public_url = "https://relay.example:443/"\n')
    assert load_relay_config(path).public_url == "wss://relay.example"
    path.write_text('public_url = "wss://relay.example/relay"\n')
    with pytest.raises(ConfigError, match="public_url: not a relay URL"):
        load_relay_config(path)


# -- refusals: once per reason, with the fix ---------------------------------------------


def test_each_refusal_reason_is_news_once_until_a_login_succeeds():
    notes = RefusalNotes()
    assert notes.refused("token_missing")
    assert not notes.refused("token_missing")
    assert notes.refused("token_expired")
    assert notes.last == "token_expired"
    notes.logged_in()
    assert notes.last is None
    assert notes.refused("token_missing")


@pytest.mark.parametrize("reason", ["token_missing", "token_expired", "token_wrong_audience",
                                    "token_wrong_device", "token_unknown_key"])
def test_token_refusals_tell_the_user_to_ask_the_operator(reason):
    device = Identity.generate().device_id
    advice = refusal_advice(reason, "wss://relay.example", device)
    assert f"p2pgate relay token --device {device}" in advice
    assert "ask the relay operator" in advice
    assert "relay-token set wss://relay.example" in advice


def test_other_refusals_name_their_fix():
    device = Identity.generate().device_id
    assert "public_url" in refusal_advice("bad_signature", "ws://r", device)
    assert str(device) in refusal_advice("not_allowed", "ws://r", device)
    assert "clock" in refusal_advice("clock", "ws://r", device)


def test_token_expiry_is_read_without_verifying():
    device = Identity.generate().device_id
    token = issue_token(Ed25519PrivateKey.generate(), device, "fleet", 3600, 1_000_000)
    assert token_expiry(token) == 1_003_600
    assert token_expiry("not-a-token") is None
    assert token_expiry("a.b.c") is None


# -- ?id=RELAYID: kept by the canonical URL, never part of what is signed ---------------


def test_a_relay_url_keeps_its_pinned_id_in_canonical_spelling():
    relay_id = RelayKey.generate().relay_id
    typed = f"HTTP://Relay.Example:80/?id={str(relay_id).replace('-', '').lower()}"
    assert canonical_relay_url(typed) == f"ws://relay.example?id={relay_id}"
    assert relay_base_url(typed) == "ws://relay.example"
    assert relay_url_id(typed) == str(relay_id)
    assert RelayID.parse(relay_url_id(typed)) == relay_id
    assert relay_url_id("wss://relay.example") is None
    assert canonical_relay_url(canonical_relay_url(typed)) == canonical_relay_url(typed)


def test_a_relay_id_is_not_a_device_id_and_a_typo_in_it_is_refused():
    relay_id = RelayKey.generate().relay_id
    assert relay_id != DeviceID(relay_id.digest)
    typo = str(relay_id)
    typo = typo[:3] + ("A" if typo[3] != "A" else "B") + typo[4:]
    for bad in (f"ws://r?id={typo}", "ws://r?id=short", f"ws://r?id={relay_id}&x=1",
                f"ws://r?id={relay_id}&id={relay_id}", "ws://r?x=1", "ws://r?id="):
        with pytest.raises(ValueError, match="relay URL"):
            canonical_relay_url(bad)


def test_node_config_keeps_the_pin_and_tokens_match_the_url_without_it(tmp_path):
    relay_id = RelayKey.generate().relay_id
    config = load_config(None, {"relays": [f"http://relay.example:8443/?id={relay_id}"],
                                "relay_tokens": {f"ws://relay.example:8443?id={relay_id}": "T"}})
    assert config.relays == (f"ws://relay.example:8443?id={relay_id}",)
    assert config.relay_tokens == {"ws://relay.example:8443": "T"}


def test_the_relay_checks_against_its_public_url_or_the_address_reached_never_host():
    public = "wss://relay.example"
    assert relay_url_for(public, True, ("10.0.0.5", 8443), "evil.example") == public
    assert relay_url_for(None, False, ("10.0.0.5", 8443), "10.9.9.9:1") == "ws://10.0.0.5:8443"
    assert relay_url_for(None, False, ("10.0.0.5", 8443), None) == "ws://10.0.0.5:8443"
    assert relay_url_for(None, True, ("::ffff:10.0.0.5", 443, 0, 0), "[::1]") == \
        "wss://10.0.0.5"
    assert relay_url_for(None, False, ("::1", 80, 0, 0), "[::1]:80") == "ws://[::1]"
    for host in ("relay.example:8443", "localhost", "relay.example"):
        with pytest.raises(AuthRefused, match="public_url_unset"):
            relay_url_for(None, False, ("10.0.0.5", 8443), host)


def test_the_relays_proof_answers_our_challenge_with_the_pinned_key():
    key, other = RelayKey.generate(), RelayKey.generate()
    hello = relay_hello("nonce", key.public_raw, key.sign, "c" * 32)
    assert check_relay_proof(hello, "c" * 32, key.relay_id) == key.public_raw
    assert check_relay_proof(hello, "c" * 32, None) == key.public_raw
    cases = {
        "wrong_relay_key": [(hello, "c" * 32, other.relay_id)],
        "bad_relay_proof": [(hello, "d" * 32, None),  # a proof for another challenge
                            ({**hello, "nonce": "other"}, "c" * 32, None),
                            ({**hello, "relay_key": relay_hello("n", other.public_raw,
                                                                other.sign, None)["relay_key"]},
                             "c" * 32, None),
                            ({**hello, "proof": "!!"}, "c" * 32, None),
                            ({**hello, "relay_key": 42}, "c" * 32, None)],
        "no_relay_proof": [(relay_hello("nonce", key.public_raw, key.sign, None), "c" * 32,
                            None), ({"t": "hello", "nonce": "n"}, "c" * 32, None)],
    }
    for reason, args in cases.items():
        for hello_, challenge, pinned in args:
            with pytest.raises(AuthRefused) as err:
                check_relay_proof(hello_, challenge, pinned)
            assert err.value.reason == reason, hello_
    for bad in ("short", "x" * 200, "no spaces allowed here!!"):
        with pytest.raises(AuthRefused, match="malformed"):
            relay_hello("nonce", key.public_raw, key.sign, bad)


def test_a_login_names_the_relays_key_so_another_relay_cannot_use_it():
    ident, key, other = Identity.generate(), RelayKey.generate(), RelayKey.generate()
    url, now = "ws://10.0.0.5:8443", 1_000_000.0
    message = login_message(ident.cert_der, ident.sign, url, other.public_raw, "n", now, None)
    with pytest.raises(AuthRefused, match="wrong_key"):
        verify_login(message, url, key.public_raw, "n", now, 60)
    assert verify_login(message, url, other.public_raw, "n", now, 60) == ident.device_id
