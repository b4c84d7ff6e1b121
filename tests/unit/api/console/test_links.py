"""One-time sign-in links without services: the codes, what Redis is given (key, value, TTL)
and that a code is taken once. The Redis here is a dict with Redis's semantics for the three
commands used; tests/integration/api/console/test_links.py runs the same against Redis."""

from __future__ import annotations

import re

from api.console import links
from api.tokens import Principal, digest
from pipeline.settings import ApiSettings

PRINCIPAL = Principal("night-nurse", "staff", ("fr-lyon-12",))
TOKEN_SHA = digest("vl_" + "x" * 43)


class DictRedis:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}

    def set(self, key: str, value: bytes, ex: int) -> None:
        self.values[key] = value
        self.ttls[key] = ex

    async def getdel(self, key: str) -> bytes | None:
        self.ttls.pop(key, None)
        return self.values.pop(key, None)


def test_codes_are_random_url_safe_and_what_the_route_accepts() -> None:
    codes = {links.new_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert len(code) == 43  # 256 bits
        assert re.fullmatch(links.CODE, code)
    assert not re.fullmatch(links.CODE, "short")
    assert not re.fullmatch(links.CODE, "a" * 30 + "/../x")


def test_redis_holds_the_codes_hash_never_the_code() -> None:
    code = links.new_code()
    key = links.redis_key(code)
    assert key.startswith("veilleuse:console:link:")
    assert code not in key
    assert links.redis_key(code) == key
    assert links.redis_key(links.new_code()) != key


def test_the_value_is_the_tokens_digest_and_principal_never_the_token() -> None:
    raw = links.encode(TOKEN_SHA, PRINCIPAL)
    assert b"vl_" not in raw
    assert links.decode(raw) == (TOKEN_SHA, PRINCIPAL)


def test_store_sets_the_ttl_from_the_setting() -> None:
    redis = DictRedis()
    ttl_s = ApiSettings().console_link_ttl_s
    assert ttl_s == 900  # 15 minutes unless configured
    code = links.store(redis, TOKEN_SHA, PRINCIPAL, ttl_s)
    assert redis.ttls == {links.redis_key(code): 900}
    assert links.ttl_of(0.2) == 1  # never 0, which Redis refuses
    assert links.ttl_of(89.6) == 90


async def test_a_code_is_taken_once() -> None:
    redis = DictRedis()
    code = links.store(redis, TOKEN_SHA, PRINCIPAL, 60)
    other = links.store(redis, TOKEN_SHA, PRINCIPAL, 60)
    assert await links.take(redis, code) == (TOKEN_SHA, PRINCIPAL)
    assert await links.take(redis, code) is None
    assert await links.take(redis, links.new_code()) is None
    assert await links.take(redis, other) == (TOKEN_SHA, PRINCIPAL)  # its own, untouched


def test_the_url_is_under_the_public_address() -> None:
    assert links.public_url(ApiSettings()) == "http://127.0.0.1:18080"
    public = ApiSettings(public_url="https://veilleuse.example/")
    assert links.public_url(public) == "https://veilleuse.example/"
    assert (
        links.url_of(links.public_url(public), "abc")
        == "https://veilleuse.example/console/sign-in/link/abc"
    )
