"""Execution tokens: the JWT a running script shows the runtime API (ARCHITECTURE §9).

One token is valid for one attempt of one job:

- ``sub`` is the job (execution) id, so the token opens that execution's routes only;
- ``jti`` is the attempt's ``lease_id``, fresh per claim and cleared when the job ends, so the
  runtime service revokes the token the moment its attempt is over (re-claimed, finished,
  reaped) by comparing ``jti`` with the job row — not at ``exp``;
- ``exp`` is the job's timeout plus a grace, a backstop for a lost revocation.

Verification follows RFC 8725: the algorithm is pinned to HS256 (``none``, the other HMAC
sizes and every asymmetric algorithm are refused before any key is touched), the key is chosen
by ``kid`` among the configured keys only, headers that point elsewhere for a key (``jku``,
``x5u``, ``jwk``, ``x5c``) or that demand extensions (``crit``) are refused, and ``iss``,
``aud``, ``sub``, ``jti``, ``att``, ``iat``, ``nbf`` and ``exp`` are all required.

Key rotation: tokens are minted with ``current_kid``; any configured kid verifies. Add the new
key, make it current, and drop the old one once the longest job timeout has passed.

Neither the token nor a key ever goes into an exception, a log line or a ``repr``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import jwt

from .clock import Clock, SystemClock
from .errors import InvalidToken, ValidationError
from .jobs import Job

__all__ = ["ALGORITHM", "ExecutionClaims", "ExecutionTokens", "generate_key"]

#: the only algorithm minted or accepted
ALGORITHM = "HS256"
#: HMAC keys shorter than the hash output weaken it (RFC 7518 §3.2)
MIN_KEY_BYTES = 32
#: header parameters that fetch or embed a key, or demand extensions we do not implement
REFUSED_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit"})
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "att", "iat", "nbf", "exp")
#: far above any token we mint; refuses junk before it is parsed
MAX_TOKEN_CHARS = 4096


def generate_key() -> str:
    """A fresh random signing key (384 bits, URL-safe text)."""
    return secrets.token_urlsafe(48)


@attrs.frozen(kw_only=True)
class ExecutionClaims:
    """What a verified token says. ``lease_id`` (the ``jti``) names the attempt."""

    execution_id: str
    lease_id: str
    attempt: int
    kid: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime


def _key_map(keys: Mapping[str, str]) -> dict[str, str]:
    return dict(keys)  # a copy: the caller's mapping may change, ours must not


def _check_keys(
    instance: ExecutionTokens, _: attrs.Attribute[Mapping[str, str]], keys: Mapping[str, str]
) -> None:
    if not keys:
        raise ValidationError("keys", "at least one signing key is needed")
    for kid, secret in keys.items():
        if not isinstance(kid, str) or not kid:
            raise ValidationError("keys", "key ids must be non-empty strings")
        if not isinstance(secret, str) or len(secret.encode()) < MIN_KEY_BYTES:
            raise ValidationError(f"keys.{kid}", f"must be at least {MIN_KEY_BYTES} bytes")


def _check_current(instance: ExecutionTokens, _: attrs.Attribute[str], kid: str) -> None:
    if kid not in instance.keys:
        raise ValidationError("current_kid", "must name one of the configured keys")


def _time_claim(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    # bool is an int in Python, and pyjwt would also take "123": neither is a NumericDate
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name} is not a number")
    return float(value)


@attrs.define(eq=False)
class ExecutionTokens:
    """Mints and verifies execution tokens with a set of HS256 keys (``kid`` -> secret)."""

    keys: Mapping[str, str] = attrs.field(converter=_key_map, validator=_check_keys, repr=False)
    current_kid: str = attrs.field(validator=_check_current)
    issuer: str = attrs.field(default="cronium", kw_only=True)
    audience: str = attrs.field(default="cronium-runtime", kw_only=True)
    #: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``
    leeway: float = attrs.field(default=30.0, kw_only=True)
    clock: Clock = attrs.field(factory=SystemClock, kw_only=True)

    def mint(self, job: Job, *, grace: float = 60.0) -> str:
        """A token for the job's current attempt, valid until its timeout plus ``grace``."""
        if not job.lease_id:
            raise ValidationError("job", "has no lease: only a claimed, running job gets a token")
        now = math.floor(self.clock.now().timestamp())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": job.id,
            "jti": job.lease_id,
            "att": job.attempt,
            "iat": now,
            "nbf": now,
            "exp": now + math.ceil(job.timeout + grace),
        }
        headers = {"kid": self.current_kid, "typ": "JWT"}
        return jwt.encode(claims, self.keys[self.current_kid], ALGORITHM, headers=headers)

    def verify(self, token: str) -> ExecutionClaims:
        """The claims of a token this service minted and that is still in its time window.
        Raises :class:`InvalidToken` for anything else; the reason says why, for the log."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm not allowed")
        if REFUSED_HEADERS & header.keys():
            raise InvalidToken("header parameter not allowed")
        if header.get("typ", "JWT") != "JWT":
            raise InvalidToken("not a JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self.keys:
            raise InvalidToken("unknown key id")
        try:
            payload = jwt.decode(
                token,
                self.keys[kid],
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "strict_aud": True,
                    # times are checked below against our clock (pyjwt reads the wall clock)
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"claim {exc.claim} missing") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed token") from None
        return self._claims(payload, kid)

    def _claims(self, payload: Mapping[str, Any], kid: str) -> ExecutionClaims:
        exp = _time_claim(payload, "exp")
        nbf = _time_claim(payload, "nbf")
        iat = _time_claim(payload, "iat")
        now = self.clock.now().timestamp()
        if exp <= now - self.leeway:
            raise InvalidToken("expired")
        if nbf > now + self.leeway:
            raise InvalidToken("not yet valid")
        if iat > now + self.leeway:
            raise InvalidToken("issued in the future")
        sub, jti, att = payload["sub"], payload["jti"], payload["att"]
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
            raise InvalidToken("malformed claims")
        if isinstance(att, bool) or not isinstance(att, int) or att < 1:
            raise InvalidToken("malformed claims")
        try:
            times = [datetime.fromtimestamp(t, UTC) for t in (iat, nbf, exp)]
        except (OverflowError, ValueError, OSError):
            raise InvalidToken("time claim out of range") from None
        return ExecutionClaims(
            execution_id=sub,
            lease_id=jti,
            attempt=att,
            kid=kid,
            issued_at=times[0],
            not_before=times[1],
            expires_at=times[2],
        )
