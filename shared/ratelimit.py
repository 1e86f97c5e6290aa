"""A rate limit per bearer token, kept in Redis (a token bucket), that fails open.

Each token has a bucket of `burst` requests refilled at `rate` per second; a request takes
one. The bucket lives in Redis so that every instance of a service shares it, and it is
updated by one Lua script so that two instances never both take the last request. The
token itself never reaches Redis: the key is a digest of it.

Redis only ever slows a caller down: when it does not answer (or answers in error), the
request is allowed, so no decision depends on Redis.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

KEY_PREFIX = "e2c:ratelimit:"

# KEYS[1] the bucket; ARGV: rate per second, burst, now (seconds, float).
# Returns {allowed (0/1), milliseconds until one request is available}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) / rate * 1000)
end
return {allowed, wait}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_seconds: int  # whole seconds to wait before the next try (0 when allowed)


ALLOWED = Verdict(True, 0)


class RateLimiter:
    """`rate` requests per second per token, bursts of `burst`."""

    def __init__(self, client: aioredis.Redis, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self.client = client
        self.rate = rate
        self.burst = burst
        self._script = client.register_script(_TAKE)
        self._failing = False  # logged once when Redis goes away, once when it is back

    async def take(self, token: str) -> Verdict:
        """One request of `token`: allowed, or refused with the seconds to wait."""
        try:
            allowed, wait_ms = await self._script(
                keys=[bucket_key(token)], args=[self.rate, self.burst, time.time()]
            )
        except Exception as error:  # Redis away or failing: never block a caller on it
            if not self._failing:
                log.warning("rate limit not applied while Redis fails (%s)",
                            type(error).__name__)
            self._failing = True
            return ALLOWED
        if self._failing:
            log.info("rate limit applied again: Redis answers")
            self._failing = False
        if int(allowed) == 1:
            return ALLOWED
        return Verdict(False, max(1, math.ceil(int(wait_ms) / 1000)))


def bucket_key(token: str) -> str:
    return KEY_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]
