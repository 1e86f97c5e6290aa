"""The per-token rate limit against a real Redis: bursts, a bucket shared by instances,
refill, tokens kept out of Redis, and failing open when Redis does not answer."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from deploy.harness import free_port
from shared.ratelimit import RateLimiter

pytestmark = pytest.mark.infra


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis_server)
    yield connection
    await connection.aclose()


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def test_a_burst_is_allowed_then_the_next_request_waits(client: aioredis.Redis) -> None:
    limiter = RateLimiter(client, rate=0.5, burst=5)
    token = new_token()

    verdicts = [await limiter.take(token) for _ in range(6)]

    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert verdicts[-1].retry_after_seconds == 2  # one request every 2 s at 0.5/s


async def test_instances_share_one_bucket_per_token(redis_server: str) -> None:
    first, second = aioredis.from_url(redis_server), aioredis.from_url(redis_server)
    try:
        limiters = [RateLimiter(first, rate=0.1, burst=4), RateLimiter(second, rate=0.1,
                                                                        burst=4)]
        token, other = new_token(), new_token()
        verdicts = await asyncio.gather(*(limiters[i % 2].take(token) for i in range(10)))
        assert sum(v.allowed for v in verdicts) == 4
        assert (await limiters[0].take(other)).allowed  # another token has its own bucket
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_bucket_refills_at_the_rate(client: aioredis.Redis) -> None:
    limiter = RateLimiter(client, rate=20, burst=1)
    token = new_token()
    assert (await limiter.take(token)).allowed
    refused = await limiter.take(token)
    assert not refused.allowed and refused.retry_after_seconds == 1

    deadline = time.monotonic() + 5
    while not (await limiter.take(token)).allowed:
        assert time.monotonic() < deadline, "the bucket never refilled"


async def test_the_token_never_reaches_redis(client: aioredis.Redis) -> None:
    token = new_token()
    await RateLimiter(client, rate=1, burst=2).take(token)

    keys = [key async for key in client.scan_iter(match="e2c:ratelimit:*")]
    assert keys
    for key in keys:
        assert token.encode() not in key
        assert token.encode() not in b"".join(await client.hvals(key))


async def test_without_redis_every_request_is_allowed() -> None:
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5,
                             socket_timeout=0.5)
    try:
        limiter = RateLimiter(down, rate=1, burst=1)
        verdicts = [await limiter.take(new_token()) for _ in range(3)]
        verdicts += [await limiter.take("same") for _ in range(3)]
    finally:
        await down.aclose()
    assert all(v.allowed for v in verdicts)
