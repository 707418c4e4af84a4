"""The key ring and AES-GCM sealing of secrets (RELIABILITY §9.6 K1, K2): exact round trips,
clean failures on tampering, binding to a context, unique nonces, and the key configuration."""

from __future__ import annotations

import base64
import logging
import os
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronium_core.crypto import (
    ENV_VAR,
    NONCE_BYTES,
    Cipher,
    DecryptionFailed,
    generate_key,
    parse_secret_keys,
)
from cronium_core.errors import ValidationError

NEW = generate_key()
OLD = generate_key()
CONTEXT = b'["variables","row-1","alice","token"]'


def ring(spec: str = f"new:{NEW},old:{OLD}") -> Cipher:
    return Cipher.from_spec(spec)


def _payload(token: str) -> bytes:
    encoded = token.split(".", 2)[2]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def _with_payload(token: str, payload: bytes) -> str:
    head = token.rsplit(".", 1)[0]
    return head + "." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


@given(st.binary(max_size=2000), st.binary(max_size=200))
def test_round_trip_is_exact(plaintext: bytes, context: bytes) -> None:
    cipher = ring()
    token = cipher.encrypt(plaintext, context)
    assert cipher.decrypt(token, context) == plaintext
    assert cipher.key_id(token) == "new" and cipher.is_current(token)
    if len(plaintext) >= 8:
        assert plaintext not in token.encode()


def test_every_flipped_byte_fails_cleanly() -> None:
    cipher = ring()
    canary = "canary-K1-" + os.urandom(8).hex()
    token = cipher.encrypt(canary.encode(), CONTEXT)
    payload = _payload(token)
    for index in range(len(payload)):  # the nonce, the ciphertext and the tag
        flipped = bytearray(payload)
        flipped[index] ^= 0x01
        with pytest.raises(DecryptionFailed) as caught:
            cipher.decrypt(_with_payload(token, bytes(flipped)), CONTEXT)
        error = caught.value
        assert "authentication failed" in str(error)
        # no plaintext, no ciphertext, no key, and no cryptography traceback chained to it
        shown = "".join(traceback.format_exception(error))
        assert canary not in shown and token not in shown and NEW not in shown
        assert error.__cause__ is None and error.__suppress_context__
        assert "InvalidTag" not in shown


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated
        lambda t: t[: len(t) // 2],
        lambda t: "v2" + t[2:],  # unknown format version
        lambda t: t.replace(".", ":", 1),
        lambda t: t.split(".", 1)[1],  # no version
        lambda t: "v1.new.",
        lambda t: "v1.new.AAAA",  # shorter than nonce + tag
        lambda t: "",
        lambda t: t + "!!",
    ],
)
def test_malformed_ciphertexts(mangle: object) -> None:
    cipher = ring()
    token = cipher.encrypt(b"some secret value", CONTEXT)
    assert callable(mangle)
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(mangle(token), CONTEXT)


def test_bound_to_its_context() -> None:
    cipher = ring()
    token = cipher.encrypt(b"s3cret-value", CONTEXT)
    for other in (
        b'["variables","row-2","alice","token"]',  # another row
        b'["variables","row-1","bob","token"]',  # another owner
        b'["variables","row-1","alice","other"]',  # another key
        b'["servers","row-1","alice","token"]',  # another table
        b"",
    ):
        with pytest.raises(DecryptionFailed, match="authentication failed"):
            cipher.decrypt(token, other)


def test_the_key_id_is_authenticated_too() -> None:
    # the same key under two ids: relabelling a ciphertext's key id still fails
    cipher = Cipher.from_spec(f"a:{NEW},b:{NEW}")
    token = cipher.encrypt(b"s3cret-value", CONTEXT)
    relabelled = token.replace("v1.a.", "v1.b.", 1)
    assert cipher.key_id(relabelled) == "b"
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(relabelled, CONTEXT)


def test_old_keys_decrypt_and_unknown_keys_fail() -> None:
    old_only = Cipher.from_spec(f"old:{OLD}")
    sealed_by_old = old_only.encrypt(b"before rotation", CONTEXT)
    both = ring()
    assert both.decrypt(sealed_by_old, CONTEXT) == b"before rotation"
    assert not both.is_current(sealed_by_old)
    new_only = Cipher.from_spec(f"new:{NEW}")
    with pytest.raises(DecryptionFailed, match="unknown key id 'old'"):
        new_only.decrypt(sealed_by_old, CONTEXT)
    # a key with the right id but the wrong bytes
    impostor = Cipher.from_spec(f"old:{generate_key()}")
    with pytest.raises(DecryptionFailed, match="authentication failed"):
        impostor.decrypt(sealed_by_old, CONTEXT)


def test_nonces_are_unique() -> None:
    # K2 asks for 1M; 100k keeps the suite fast: with 96-bit random nonces a repeat among
    # 100k would mean a broken random source, not bad luck (p < 1e-19)
    cipher = ring()
    nonces = {_payload(cipher.encrypt(b"x", CONTEXT))[:NONCE_BYTES] for _ in range(100_000)}
    assert len(nonces) == 100_000


def test_same_plaintext_encrypts_differently() -> None:
    cipher = ring()
    assert cipher.encrypt(b"same", CONTEXT) != cipher.encrypt(b"same", CONTEXT)


def test_parse_keys() -> None:
    raw = os.urandom(32)
    urlsafe_unpadded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    keys, current = parse_secret_keys(f" k2:{urlsafe_unpadded} , k1:{NEW} ,")
    assert current == "k2" and keys["k2"] == raw and list(keys) == ["k2", "k1"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "no key given"),
        (" , ", "no key given"),
        (NEW, "expected kid:base64key"),
        (f"bad id:{NEW}", "expected kid:base64key"),
        (f"a.b:{NEW}", "expected kid:base64key"),
        (f"k:{NEW},k:{OLD}", "given twice"),
        ("k:not base64!", "not valid base64"),
        (f"k:{base64.b64encode(os.urandom(16)).decode()}", "must be 32 bytes"),
    ],
)
def test_bad_key_specs(spec: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        Cipher.from_spec(spec)
    if ":" in spec:  # the message never carries key material
        for part in spec.split(","):
            secret = part.partition(":")[2].strip()
            if secret:
                assert secret not in str(caught.value)


def test_from_env(caplog: pytest.LogCaptureFixture) -> None:
    cipher = Cipher.from_env(environ={ENV_VAR: f"prod2:{NEW},prod1:{OLD}"})
    assert cipher.current == "prod2" and set(cipher.keys) == {"prod2", "prod1"}
    assert Cipher.from_env(f"x:{NEW}", environ={ENV_VAR: f"y:{OLD}"}).current == "x"
    caplog.set_level(logging.WARNING, logger="cronium.crypto")
    generated = Cipher.from_env(environ={})
    assert "cannot be decrypted after a restart" in caplog.text
    assert generated.decrypt(generated.encrypt(b"embedded", CONTEXT), CONTEXT) == b"embedded"
    # another process (or a restart) makes another key: what the first sealed is lost
    with pytest.raises(DecryptionFailed):
        Cipher.from_env(environ={}).decrypt(generated.encrypt(b"embedded", CONTEXT), CONTEXT)


def test_repr_shows_no_key() -> None:
    cipher = ring()
    assert repr(cipher) == "Cipher(current='new', key_ids=['new', 'old'])"
    assert NEW not in repr(cipher)


def test_bad_rings() -> None:
    with pytest.raises(ValidationError, match="current key"):
        Cipher({"a": os.urandom(32)}, "b")
    with pytest.raises(ValidationError, match="32 bytes"):
        Cipher({"a": os.urandom(31)}, "a")
    with pytest.raises(ValidationError, match="bad key id"):
        Cipher({"a.b": os.urandom(32)}, "a.b")
