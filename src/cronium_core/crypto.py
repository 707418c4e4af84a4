"""Encryption at rest of secrets (RELIABILITY §9.6 K1-K3): AES-256-GCM under a key ring.

A :class:`Cipher` holds keys by id and encrypts with the *current* one; it decrypts with
whichever key the ciphertext names, so that old rows stay readable while a rotation re-encrypts
them. Configured as ``CRONIUM_SECRET_KEYS="kid:base64key,kid:base64key"``: the first key is
current, the others only decrypt. :func:`generate_key` makes a key.

A ciphertext is text: ``v1.<kid>.<base64url(nonce || ciphertext || tag)>`` with a fresh random
96-bit nonce per encryption. Random nonces are safe for about 2**32 encryptions under one key
(NIST SP 800-38D); rotating to a new key starts that count again.

Every encryption is bound to a *context*, the associated data that names where the ciphertext
belongs (for a variable: table, row id, owner and key). Decrypting with another context fails
exactly like a tampered byte does, so a ciphertext copied to another row or another owner's
variable is useless there (K2). Every failure is one :class:`DecryptionFailed`: no plaintext,
no key material and no chained cryptography traceback.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CroniumError, ValidationError

__all__ = ["ENV_VAR", "Cipher", "DecryptionFailed", "generate_key", "parse_secret_keys"]

log = logging.getLogger("cronium.crypto")

#: the environment variable that holds the key ring
ENV_VAR = "CRONIUM_SECRET_KEYS"
VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PAYLOAD = re.compile(r"[A-Za-z0-9_-]+")


class DecryptionFailed(CroniumError):
    """A ciphertext that cannot be opened: malformed, under an unknown key, tampered with, or
    bound to another context. ``reason`` says which, never anything of the secret."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot decrypt a secret: {reason}")


def generate_key() -> str:
    """A new random 256-bit key, base64: the value part of ``kid:key``."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_secret_keys(spec: str) -> tuple[dict[str, bytes], str]:
    """``"new:BASE64,old:BASE64"`` -> (keys by id, the current id = the first one).

    Errors name the key id at most, never the key."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, encoded = item.partition(":")
        kid, encoded = kid.strip(), encoded.strip()
        if not sep or not _KID.fullmatch(kid):
            raise ValidationError(
                "secret_keys", "expected kid:base64key[,kid:base64key...], kid [A-Za-z0-9_-]{1,32}"
            )
        if kid in keys:
            raise ValidationError("secret_keys", f"key id {kid!r} is given twice")
        keys[kid] = _decode_key(kid, encoded)
    if not keys:
        raise ValidationError("secret_keys", "no key given")
    return keys, next(iter(keys))


def _decode_key(kid: str, encoded: str) -> bytes:
    # standard or URL-safe alphabet, padding optional
    text = encoded.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("secret_keys", f"key {kid!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ValidationError("secret_keys", f"key {kid!r} must be {KEY_BYTES} bytes")
    return key


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define(eq=False, repr=False)
class Cipher:
    """AES-256-GCM with a key ring: encrypts under ``current``, decrypts under any key held."""

    keys: Mapping[str, bytes]
    current: str
    _aead: dict[str, AESGCM] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValidationError("secret_keys", f"the current key {self.current!r} is not held")
        for kid, key in self.keys.items():
            if not _KID.fullmatch(kid):
                raise ValidationError("secret_keys", f"bad key id {kid!r}")
            if len(key) != KEY_BYTES:
                raise ValidationError("secret_keys", f"key {kid!r} must be {KEY_BYTES} bytes")
            self._aead[kid] = AESGCM(key)

    def __repr__(self) -> str:  # never the keys
        return f"Cipher(current={self.current!r}, key_ids={list(self.keys)!r})"

    @classmethod
    def from_spec(cls, spec: str) -> Cipher:
        keys, current = parse_secret_keys(spec)
        return cls(keys, current)

    @classmethod
    def from_env(cls, spec: str | None = None, environ: Mapping[str, str] | None = None) -> Cipher:
        """From ``spec``, else ``$CRONIUM_SECRET_KEYS``, else a key made up for this process
        (embedded use), with a warning: what it encrypts is unreadable after a restart."""
        if spec is None:
            spec = (os.environ if environ is None else environ).get(ENV_VAR) or None
        if spec is not None:
            return cls.from_spec(spec)
        log.warning(
            "%s is not set: secrets are encrypted with a key generated for this process and "
            "cannot be decrypted after a restart; set %s=kid:<base64 32-byte key>",
            ENV_VAR,
            ENV_VAR,
        )
        return cls({"gen": base64.b64decode(generate_key())}, "gen")

    def encrypt(self, plaintext: bytes, context: bytes) -> str:
        """``plaintext`` sealed under the current key and bound to ``context``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current].encrypt(nonce, plaintext, _aad(self.current, context))
        return f"{VERSION}.{self.current}.{_b64encode(nonce + sealed)}"

    def decrypt(self, token: str, context: bytes) -> bytes:
        """The plaintext of ``token`` if it was sealed by a held key for this very ``context``;
        else :class:`DecryptionFailed`."""
        kid, payload = self._split(token)
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionFailed(f"unknown key id {kid!r}")
        nonce, sealed = payload[:NONCE_BYTES], payload[NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, sealed, _aad(kid, context))
        except InvalidTag:
            raise DecryptionFailed(
                "authentication failed (tampered, moved to another row, or another key)"
            ) from None

    def key_id(self, token: str) -> str:
        """The id of the key that sealed ``token``."""
        return self._split(token)[0]

    def is_current(self, token: str) -> bool:
        return self.key_id(token) == self.current

    @staticmethod
    def _split(token: str) -> tuple[str, bytes]:
        version, _, rest = token.partition(".")
        kid, _, encoded = rest.partition(".")
        if version != VERSION or not _KID.fullmatch(kid) or not _PAYLOAD.fullmatch(encoded):
            raise DecryptionFailed("malformed ciphertext")
        try:
            payload = _b64decode(encoded)
        except (binascii.Error, ValueError):
            raise DecryptionFailed("malformed ciphertext") from None
        if len(payload) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionFailed("malformed ciphertext")
        return kid, payload


def _aad(kid: str, context: bytes) -> bytes:
    # the header is bound too: a ciphertext relabelled with another version or key id fails
    return f"cronium-secret/{VERSION}/{kid}\x00".encode() + context
