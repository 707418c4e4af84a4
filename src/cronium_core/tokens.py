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

A running script shows the same token on every call, so a token that verified is remembered by
its exact text (a bounded LRU, :data:`VERIFIED_CACHE_SIZE` entries): the next call skips the
parsing and the HMAC (about 0.1 ms of CPU) but not the time checks, which run on every call
against the clock, so a remembered token still dies at its ``exp``. Only successes are
remembered: a refused token is checked in full every time, and cannot fill the cache (only
tokens signed by a configured key get in). The entry also notes the secret that verified it and
is dropped if that kid's secret changes or goes; changing the keys, issuer, audience, leeway or
clock of the instance empties the cache. Revocation is not a property of the token and is not
cached here: the runtime service checks the attempt on every call.

Neither the token nor a key ever goes into an exception, a log line or a ``repr``.
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
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
#: verified tokens remembered (a few hundred bytes each): far more than scripts run at once
VERIFIED_CACHE_SIZE = 10_000


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


@attrs.frozen
class _Verified:
    """A token that verified: its claims, its time claims as numbers, and the secret that
    verified it (compared by identity: the entry is void once that kid's secret changes)."""

    claims: ExecutionClaims
    secret: str
    exp: float
    nbf: float
    iat: float


def _forget_verified(instance: ExecutionTokens, attribute: attrs.Attribute[Any], value: Any) -> Any:
    # what verified under the old settings may not verify under the new ones
    instance._verified.clear()
    return value


def _time_claim(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    # bool is an int in Python, and pyjwt would also take "123": neither is a NumericDate
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name} is not a number")
    return float(value)


@attrs.define(
    eq=False,
    on_setattr=attrs.setters.pipe(attrs.setters.convert, attrs.setters.validate, _forget_verified),
)
class ExecutionTokens:
    """Mints and verifies execution tokens with a set of HS256 keys (``kid`` -> secret)."""

    keys: Mapping[str, str] = attrs.field(converter=_key_map, validator=_check_keys, repr=False)
    current_kid: str = attrs.field(validator=_check_current)
    issuer: str = attrs.field(default="cronium", kw_only=True)
    audience: str = attrs.field(default="cronium-runtime", kw_only=True)
    #: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``
    leeway: float = attrs.field(default=30.0, kw_only=True)
    clock: Clock = attrs.field(factory=SystemClock, kw_only=True)
    #: tokens that verified, by their exact text, least recently used first
    _verified: OrderedDict[str, _Verified] = attrs.field(
        init=False, factory=OrderedDict, repr=False, on_setattr=attrs.setters.NO_OP
    )

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
        known = self._verified.get(token)
        if known is not None:
            if self.keys.get(known.claims.kid) is known.secret and self._in_time(known):
                self._verified.move_to_end(token)
                return known.claims
            # out of its window (or its key changed): check it in full, which says why
            del self._verified[token]
        claims, verified = self._verify(token)
        self._verified[token] = verified
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _in_time(self, known: _Verified) -> bool:
        now = self.clock.now().timestamp()
        return (
            known.exp > now - self.leeway
            and known.nbf <= now + self.leeway
            and known.iat <= now + self.leeway
        )

    def _verify(self, token: str) -> tuple[ExecutionClaims, _Verified]:
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
        claims = self._claims(payload, kid)
        verified = _Verified(
            claims=claims,
            secret=self.keys[kid],
            exp=_time_claim(payload, "exp"),
            nbf=_time_claim(payload, "nbf"),
            iat=_time_claim(payload, "iat"),
        )
        return claims, verified

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
