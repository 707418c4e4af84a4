"""Execution tokens: minting, verification, key rotation, and the RFC 8725 negative matrix
(RELIABILITY A1) at the token level. ``test_runtime_api`` runs the same matrix over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cronium_core import FakeClock, Job
from cronium_core.errors import InvalidToken, ValidationError
from cronium_core.tokens import ExecutionTokens, generate_key

KEY = "k" * 40
OTHER_KEY = "o" * 40


# -- forging tokens by hand, independently of the library under test ---------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


def forge(
    header: dict[str, Any],
    claims: dict[str, Any],
    key: str | None,
    digest: Callable[..., Any] = hashlib.sha256,
) -> str:
    """A JWS in compact form, HMAC-signed with ``key`` (no signature when ``key`` is None)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = b""
    if key is not None:
        signature = hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def rs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


@attrs.frozen(kw_only=True)
class Forge:
    """What a forger of a token for a real running attempt would start from."""

    claims: dict[str, Any]  #: the claims a genuine token of that attempt carries
    kid: str
    key: str  #: the configured secret for ``kid``
    other_key: str  #: another configured secret (a different kid)
    now: int

    @property
    def header(self) -> dict[str, Any]:
        return {"alg": "HS256", "typ": "JWT", "kid": self.kid}

    def good(self) -> str:
        return forge(self.header, self.claims, self.key)

    def with_header(self, **changes: Any) -> str:
        return forge({**self.header, **changes}, self.claims, self.key)

    def with_claims(self, **changes: Any) -> str:
        return forge(self.header, {**self.claims, **changes}, self.key)

    def without_claim(self, name: str) -> str:
        return forge(self.header, {k: v for k, v in self.claims.items() if k != name}, self.key)


def _tampered(f: Forge) -> str:
    head, _, signature = f.good().split(".")
    return f"{head}.{segment({**f.claims, 'att': f.claims['att'] + 1})}.{signature}"


def _header_not_json(f: Forge) -> str:
    signing_input = f"{b64(b'not json')}.{segment(f.claims)}"
    sig = hmac.new(f.key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


#: every way a token must be refused; each differs from a genuine token in one respect only
BAD_TOKENS: list[tuple[str, Callable[[Forge], str]]] = [
    ("garbage", lambda f: "not-a-jwt"),
    ("two segments", lambda f: ".".join(f.good().split(".")[:2])),
    ("bad base64", lambda f: "a!b.c!d.e!f"),
    ("header not json", _header_not_json),
    ("api token format", lambda f: "crn_" + "A" * 40),
    ("wrong signature", lambda f: forge(f.header, f.claims, "x" * 40)),
    ("key of another kid", lambda f: forge(f.header, f.claims, f.other_key)),
    ("empty signature", lambda f: f.good().rsplit(".", 1)[0] + "."),
    ("alg none", lambda f: forge({**f.header, "alg": "none"}, f.claims, None)),
    ("alg None", lambda f: forge({**f.header, "alg": "None"}, f.claims, None)),
    ("alg none signed", lambda f: forge({**f.header, "alg": "none"}, f.claims, f.key)),
    ("alg missing", lambda f: forge({"typ": "JWT", "kid": f.kid}, f.claims, f.key)),
    ("HS384", lambda f: forge({**f.header, "alg": "HS384"}, f.claims, f.key, hashlib.sha384)),
    ("HS512", lambda f: forge({**f.header, "alg": "HS512"}, f.claims, f.key, hashlib.sha512)),
    ("RS256", lambda f: rs256({**f.header, "alg": "RS256"}, f.claims)),
    ("RS256 header, HMAC body", lambda f: f.with_header(alg="RS256")),
    ("ES256 header", lambda f: f.with_header(alg="ES256")),
    ("unknown kid", lambda f: f.with_header(kid="nope")),
    ("kid missing", lambda f: forge({"alg": "HS256", "typ": "JWT"}, f.claims, f.key)),
    ("kid not a string", lambda f: f.with_header(kid=1)),
    ("jku header", lambda f: f.with_header(jku="http://127.0.0.1:1/jwks.json")),
    ("x5u header", lambda f: f.with_header(x5u="http://127.0.0.1:1/cert.pem")),
    ("jwk header", lambda f: f.with_header(jwk={"kty": "oct", "k": b64(b"x" * 32)})),
    ("x5c header", lambda f: f.with_header(x5c=["MIIB"])),
    ("crit header", lambda f: f.with_header(crit=["exp"])),
    ("typ not JWT", lambda f: f.with_header(typ="session")),
    ("tampered payload", _tampered),
    ("missing exp", lambda f: f.without_claim("exp")),
    ("missing aud", lambda f: f.without_claim("aud")),
    ("missing jti", lambda f: f.without_claim("jti")),
    ("missing sub", lambda f: f.without_claim("sub")),
    ("missing iss", lambda f: f.without_claim("iss")),
    ("missing nbf", lambda f: f.without_claim("nbf")),
    ("missing iat", lambda f: f.without_claim("iat")),
    ("missing att", lambda f: f.without_claim("att")),
    ("wrong aud", lambda f: f.with_claims(aud="cronium-web")),
    ("aud list", lambda f: f.with_claims(aud=["cronium-runtime", "cronium-web"])),
    ("wrong iss", lambda f: f.with_claims(iss="someone-else")),
    ("user session token", lambda f: f.with_claims(aud="cronium-web", typ="session")),
    ("expired beyond leeway", lambda f: f.with_claims(exp=f.now - 31)),
    ("nbf in the future", lambda f: f.with_claims(nbf=f.now + 60)),
    ("iat in the future", lambda f: f.with_claims(iat=f.now + 60)),
    ("exp as text", lambda f: f.with_claims(exp=str(f.now + 600))),
    ("exp as bool", lambda f: f.with_claims(exp=True)),
    ("exp huge", lambda f: f.with_claims(exp=1e300)),
    ("sub not text", lambda f: f.with_claims(sub=12)),
    ("empty jti", lambda f: f.with_claims(jti="")),
    ("att zero", lambda f: f.with_claims(att=0)),
    ("att as bool", lambda f: f.with_claims(att=True)),
]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> ExecutionTokens:
    return ExecutionTokens({"k1": KEY, "k2": OTHER_KEY}, "k1", clock=clock)


def running_job(clock: FakeClock, **changes: Any) -> Job:
    values: dict[str, Any] = dict(
        id="job-1", event_id="ev-1", status="running", trigger="manual", attempt=1,
        lease_id="lease-1", timeout=120.0, run_after=clock.now(), created_at=clock.now(),
    )  # fmt: skip
    values.update(changes)
    return Job(**values)


def forger(tokens: ExecutionTokens, job: Job) -> Forge:
    genuine = jwt.decode(tokens.mint(job), options={"verify_signature": False})
    return Forge(
        claims=genuine,
        kid="k1",
        key=KEY,
        other_key=OTHER_KEY,
        now=int(tokens.clock.now().timestamp()),
    )


# -- minting and verifying -------------------------------------------------------------


def test_mint_then_verify(tokens: ExecutionTokens, clock: FakeClock) -> None:
    job = running_job(clock, attempt=2)
    token = tokens.mint(job, grace=30)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    claims = tokens.verify(token)
    assert claims.execution_id == "job-1" and claims.lease_id == "lease-1"
    assert claims.attempt == 2 and claims.kid == "k1"
    assert claims.issued_at == claims.not_before == clock.now()
    assert claims.expires_at == clock.now() + timedelta(seconds=120 + 30)
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iss"] == "cronium" and raw["aud"] == "cronium-runtime"


def test_expiry_is_timeout_plus_grace_plus_leeway(
    tokens: ExecutionTokens, clock: FakeClock
) -> None:
    token = tokens.mint(running_job(clock, timeout=100.0), grace=60)
    clock.advance(160 + 29)
    assert tokens.verify(token).execution_id == "job-1"  # inside the 30 s leeway
    clock.advance(2)
    with pytest.raises(InvalidToken) as exc:
        tokens.verify(token)
    assert exc.value.reason == "expired"


def test_leeway_tolerates_small_skew(tokens: ExecutionTokens, clock: FakeClock) -> None:
    f = forger(tokens, running_job(clock))
    assert tokens.verify(f.with_claims(exp=f.now - 10)).execution_id == "job-1"
    assert tokens.verify(f.with_claims(nbf=f.now + 20, iat=f.now + 20)).attempt == 1


def test_only_a_claimed_job_gets_a_token(tokens: ExecutionTokens, clock: FakeClock) -> None:
    with pytest.raises(ValidationError):
        tokens.mint(running_job(clock, status="queued", lease_id=None))


def test_a_forged_genuine_token_verifies(tokens: ExecutionTokens, clock: FakeClock) -> None:
    # the control for the matrix below: the forger reproduces a genuine token exactly
    f = forger(tokens, running_job(clock))
    assert tokens.verify(f.good()) == tokens.verify(tokens.mint(running_job(clock)))


@pytest.mark.parametrize(("case", "make"), BAD_TOKENS, ids=[c for c, _ in BAD_TOKENS])
def test_negative_matrix(
    tokens: ExecutionTokens, clock: FakeClock, case: str, make: Callable[[Forge], str]
) -> None:
    token = make(forger(tokens, running_job(clock)))
    with pytest.raises(InvalidToken) as exc:
        tokens.verify(token)
    assert token not in str(exc.value) and token not in exc.value.reason


def test_refuses_non_strings_and_huge_tokens(tokens: ExecutionTokens) -> None:
    for bad in ("", "a" * 5000, None, b"abc"):
        with pytest.raises(InvalidToken):
            tokens.verify(bad)  # type: ignore[arg-type]


# -- keys --------------------------------------------------------------------------------


def test_key_rotation(clock: FakeClock) -> None:
    job = running_job(clock)
    old = ExecutionTokens({"k1": KEY}, "k1", clock=clock)
    old_token = old.mint(job)
    rotated = ExecutionTokens({"k1": KEY, "k2": OTHER_KEY}, "k2", clock=clock)
    new_token = rotated.mint(job)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert rotated.verify(old_token).kid == "k1"
    assert rotated.verify(new_token).kid == "k2"
    with pytest.raises(InvalidToken):
        old.verify(new_token)  # k2 unknown there
    retired = ExecutionTokens({"k2": OTHER_KEY}, "k2", clock=clock)
    with pytest.raises(InvalidToken):
        retired.verify(old_token)
    assert retired.verify(new_token).execution_id == job.id


def test_issuer_and_audience_are_configurable(clock: FakeClock) -> None:
    a = ExecutionTokens({"k1": KEY}, "k1", issuer="a", audience="x", clock=clock)
    b = ExecutionTokens({"k1": KEY}, "k1", issuer="b", audience="x", clock=clock)
    token = a.mint(running_job(clock))
    assert a.verify(token).execution_id == "job-1"
    with pytest.raises(InvalidToken):
        b.verify(token)


@pytest.mark.parametrize(
    ("keys", "current"),
    [({}, "k1"), ({"k1": "short"}, "k1"), ({"k1": KEY}, "k2"), ({"": KEY}, "")],
)
def test_bad_key_configuration(keys: dict[str, str], current: str) -> None:
    with pytest.raises(ValidationError):
        ExecutionTokens(keys, current)


def test_generate_key_and_repr() -> None:
    keys = {generate_key() for _ in range(10)}
    assert len(keys) == 10
    assert all(len(k.encode()) >= 48 for k in keys)
    key = next(iter(keys))
    tokens = ExecutionTokens({"k": key}, "k")
    assert key not in repr(tokens)


# -- verified tokens are remembered, never past their time -------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token pyjwt is asked to verify (the real pyjwt still does it)."""
    seen: list[str] = []
    real = jwt.decode

    def spy(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", spy)
    return seen


def test_a_verified_token_is_remembered(
    tokens: ExecutionTokens, clock: FakeClock, decodes: list[str]
) -> None:
    token = tokens.mint(running_job(clock))
    first = tokens.verify(token)
    for _ in range(3):
        assert tokens.verify(token) == first
    assert decodes == [token]  # the signature was checked once


def test_a_remembered_token_still_dies_at_its_expiry(
    tokens: ExecutionTokens, clock: FakeClock, decodes: list[str]
) -> None:
    token = tokens.mint(running_job(clock, timeout=100.0), grace=60)
    tokens.verify(token)
    clock.advance(160 + 29)
    assert tokens.verify(token).execution_id == "job-1"  # inside the leeway, from memory
    assert len(decodes) == 1
    clock.advance(2)
    for _ in range(2):
        with pytest.raises(InvalidToken) as exc:
            tokens.verify(token)
        assert exc.value.reason == "expired"
    assert token not in tokens._verified


def test_a_remembered_token_is_refused_before_its_start(
    tokens: ExecutionTokens, clock: FakeClock
) -> None:
    token = tokens.mint(running_job(clock))
    tokens.verify(token)
    clock.advance(-31)  # the clock was set back: the token is not valid yet
    with pytest.raises(InvalidToken) as exc:
        tokens.verify(token)
    assert exc.value.reason == "not yet valid"


def test_refused_tokens_are_never_remembered(tokens: ExecutionTokens, clock: FakeClock) -> None:
    f = forger(tokens, running_job(clock))
    genuine = f.good()
    tokens.verify(genuine)
    # a changed copy of a remembered token is a different text: checked in full, refused
    for make in [_tampered, *(make for _, make in BAD_TOKENS)]:
        token = make(f)
        for _ in range(2):
            with pytest.raises(InvalidToken):
                tokens.verify(token)
    assert list(tokens._verified) == [genuine]


def test_changed_keys_or_claims_forget_remembered_tokens(clock: FakeClock) -> None:
    tokens = ExecutionTokens({"k1": KEY, "k2": OTHER_KEY}, "k1", clock=clock)
    token = tokens.mint(running_job(clock))
    tokens.verify(token)
    tokens.keys = {"k2": OTHER_KEY}  # k1 retired
    with pytest.raises(InvalidToken):
        tokens.verify(token)
    # a kid's secret changed in place: the remembered entry no longer counts
    tokens = ExecutionTokens({"k1": KEY}, "k1", clock=clock)
    token = tokens.mint(running_job(clock))
    tokens.verify(token)
    tokens.keys["k1"] = "z" * 40  # type: ignore[index]
    with pytest.raises(InvalidToken):
        tokens.verify(token)
    # issuer and audience too
    for change in ({"issuer": "someone-else"}, {"audience": "cronium-web"}):
        tokens = ExecutionTokens({"k1": KEY}, "k1", clock=clock)
        token = tokens.mint(running_job(clock))
        tokens.verify(token)
        for name, value in change.items():
            setattr(tokens, name, value)
        with pytest.raises(InvalidToken):
            tokens.verify(token)


def test_remembered_tokens_are_bounded(
    tokens: ExecutionTokens, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cronium_core.tokens.VERIFIED_CACHE_SIZE", 2)
    a, b, c = (tokens.mint(running_job(clock, id=f"job-{n}")) for n in "abc")
    for token in (a, b, a, c):  # b is the least recently used when c comes
        tokens.verify(token)
    assert set(tokens._verified) == {a, c}
    assert tokens.verify(b).execution_id == "job-b"  # verified again in full
