"""Counters in Redis, shared by every gateway process: each operation is one Lua script.

The scripts mirror :class:`gateway.risk.counters.MemoryCounterStore` exactly. All keys of one
card carry the card key as a hash tag (``{...}``), so a script touches one cluster slot. Keys
expire with their window: daily counters at the end of the local day plus a day of grace (so a
reversal the morning after still finds them), velocity and travel after their windows, the
profile after ``profile_ttl_days`` without approvals.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.risk.counters import Profile, ReserveOutcome, ReserveRequest, StoreError
from gateway.risk.resp import Arg, LuaScript, RedisClient, RedisError, RespValue

# KEYS: 1 day amount, 2 day count, 3 velocity zset, 4 travel hash, 5 profile hash, 6 countries set
# ARGV: see RedisCounterStore.reserve
RESERVE = LuaScript("""
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local country = ARGV[12]
local attempts = 0
local vkeep = tonumber(ARGV[16])
if vkeep > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - vkeep)
  redis.call('ZADD', KEYS[3], now, ARGV[11])
  redis.call('PEXPIRE', KEYS[3], vkeep)
  attempts = redis.call('ZCOUNT', KEYS[3], '(' .. (now - tonumber(ARGV[9])), '+inf')
end
local travel_country = ''
local travel_at = 0
local twin = tonumber(ARGV[13])
if twin >= 0 then
  local seen = redis.call('HGETALL', KEYS[4])
  for i = 1, #seen, 2 do
    local c = seen[i]
    local t = tonumber(seen[i + 1])
    if t <= now - twin then
      redis.call('HDEL', KEYS[4], c)
    elseif c ~= country and (travel_country == '' or t > travel_at) then
      travel_country = c
      travel_at = t
    end
  end
  if now > tonumber(redis.call('HGET', KEYS[4], country) or '0') then
    redis.call('HSET', KEYS[4], country, now)
  end
  if twin > 0 then redis.call('PEXPIRE', KEYS[4], twin) end
end
local day_amount = tonumber(redis.call('GET', KEYS[1]) or '0')
local day_count = tonumber(redis.call('GET', KEYS[2]) or '0')
local amount_limit = tonumber(ARGV[4])
local count_limit = tonumber(ARGV[6])
local vel_count = tonumber(ARGV[8])
local amount_exceeded = amount_limit >= 0 and day_amount + amount > amount_limit
local count_exceeded = count_limit >= 0 and day_count + 1 > count_limit
local vel_exceeded = vel_count >= 0 and attempts > vel_count
local blocked = (amount_exceeded and ARGV[5] == '1') or (count_exceeded and ARGV[7] == '1')
  or (vel_exceeded and ARGV[10] == '1') or (travel_country ~= '' and ARGV[14] == '1')
local reserved = 0
if ARGV[3] == '1' and not blocked then
  redis.call('INCRBY', KEYS[1], amount)
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[15])
  redis.call('EXPIRE', KEYS[2], ARGV[15])
  reserved = 1
end
local prof = redis.call('HMGET', KEYS[5], 'n', 'mean', 'var')
return {reserved, attempts, day_amount, day_count, amount_exceeded and 1 or 0,
  count_exceeded and 1 or 0, vel_exceeded and 1 or 0, travel_country, now - travel_at,
  prof[1] or '0', prof[2] or '0', prof[3] or '0', redis.call('SISMEMBER', KEYS[6], country)}
""")

# KEYS: 1 day amount, 2 day count; ARGV: 1 amount, 2 count
RELEASE = LuaScript("""
for i = 1, 2 do
  local by = tonumber(ARGV[i])
  if by > 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('DECRBY', KEYS[i], by)
    if left < 0 then redis.call('INCRBY', KEYS[i], -left) end
  end
end
return 1
""")

# KEYS: 1 day amount; ARGV: 1 amount, 2 limit, 3 blocks, 4 ttl seconds
ADD_WITHIN = LuaScript("""
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if ARGV[3] == '1' and before + amount > tonumber(ARGV[2]) then return {0, before} end
redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, before}
""")

# KEYS: one sorted set per structuring pattern; ARGV: 1 now ms, 2 window ms, 3.. a member per key
MARK = LuaScript("""
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  redis.call('ZADD', KEYS[i], now, ARGV[i + 2])
  redis.call('PEXPIRE', KEYS[i], window)
  out[i] = redis.call('ZCARD', KEYS[i])
end
return out
""")

# KEYS: 1 profile hash, 2 countries set; ARGV: 1 amount, 2 samples, 3 country, 4 ttl seconds
APPROVE = LuaScript("""
local prof = redis.call('HMGET', KEYS[1], 'n', 'mean', 'var')
local n = math.min(tonumber(prof[1] or '0') + 1, tonumber(ARGV[2]))
local mean = tonumber(prof[2] or '0')
local var = tonumber(prof[3] or '0')
local a = 1.0 / n
local diff = tonumber(ARGV[1]) - mean
local incr = a * diff
mean = mean + incr
var = (1.0 - a) * (var + diff * incr)
redis.call('HSET', KEYS[1], 'n', n, 'mean', string.format('%.17g', mean),
  'var', string.format('%.17g', var))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
""")


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _flag(value: bool) -> int:
    return 1 if value else 0


def _text(value: RespValue) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _int(value: RespValue) -> int:
    if isinstance(value, int):
        return value
    return int(_text(value))


class RedisCounterStore:
    """Counter store on Redis; two stores (processes) on one prefix share limits exactly."""

    def __init__(self, client: RedisClient, *, prefix: str = "payswitch:risk:") -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, pool_size: int = 16, timeout: float = 0.5
    ) -> RedisCounterStore:
        return cls(RedisClient(url, pool_size=pool_size, timeout=timeout), prefix=prefix)

    def _key(self, card_key: str, suffix: str) -> str:
        return f"{self.prefix}{{{card_key}}}:{suffix}"

    def _day_keys(self, card_key: str, currency: str, day: str) -> tuple[str, str]:
        return self._key(card_key, f"amt:{currency}:{day}"), self._key(card_key, f"cnt:{day}")

    async def _script(
        self, script: LuaScript, keys: tuple[str, ...], args: tuple[Arg, ...]
    ) -> RespValue:
        try:
            return await self.client.run_script(script, keys, args)
        except RedisError as exc:
            raise StoreError(str(exc)) from None

    async def reserve(self, req: ReserveRequest) -> ReserveOutcome:
        amount_key, count_key = self._day_keys(req.card_key, req.currency, req.day)
        keys = (
            amount_key,
            count_key,
            self._key(req.card_key, "vel"),
            self._key(req.card_key, "trv"),
            self._key(req.card_key, "prf"),
            self._key(req.card_key, "cty"),
        )
        args: tuple[Arg, ...] = (
            req.now_ms,  # 1
            req.amount,  # 2
            _flag(req.reserve),  # 3
            _limit(req.daily_amount_limit),  # 4
            _flag(req.daily_amount_blocks),  # 5
            _limit(req.daily_count_limit),  # 6
            _flag(req.daily_count_blocks),  # 7
            _limit(req.velocity_count),  # 8
            req.velocity_window_ms,  # 9
            _flag(req.velocity_blocks),  # 10
            req.txn_id,  # 11
            req.country,  # 12
            _limit(req.travel_window_ms),  # 13
            _flag(req.travel_blocks),  # 14
            # TTL relative to the injected now (EXPIREAT would compare with Redis's clock)
            max(1, req.day_expires_at - req.now_ms // 1000),  # 15
            req.velocity_keep_ms,  # 16
        )
        reply = await self._script(RESERVE, keys, args)
        if not isinstance(reply, list) or len(reply) != 13:
            raise StoreError("unexpected reply to the reserve script")
        travel = _text(reply[7])
        return ReserveOutcome(
            reserved=_int(reply[0]) == 1,
            attempts=_int(reply[1]),
            day_amount=_int(reply[2]),
            day_count=_int(reply[3]),
            amount_exceeded=_int(reply[4]) == 1,
            count_exceeded=_int(reply[5]) == 1,
            velocity_exceeded=_int(reply[6]) == 1,
            travel_country=travel or None,
            travel_age_ms=_int(reply[8]) if travel else 0,
            profile=Profile(
                n=int(_text(reply[9])), mean=float(_text(reply[10])), var=float(_text(reply[11]))
            ),
            country_known=_int(reply[12]) == 1,
        )

    async def release(
        self, card_key: str, currency: str, day: str, amount: int, count: int
    ) -> None:
        await self._script(RELEASE, self._day_keys(card_key, currency, day), (amount, count))

    async def record_approval(
        self, card_key: str, country: str, amount: int, samples: int, ttl_seconds: int
    ) -> None:
        keys = (self._key(card_key, "prf"), self._key(card_key, "cty"))
        await self._script(APPROVE, keys, (amount, samples, country, ttl_seconds))

    async def add_within(
        self,
        card_key: str,
        counter: str,
        day: str,
        day_expires_at: int,
        now_ms: int,
        amount: int,
        limit: int,
        blocks: bool,
    ) -> tuple[bool, int]:
        amount_key, _ = self._day_keys(card_key, counter, day)
        ttl = max(1, day_expires_at - now_ms // 1000)  # relative to the injected now
        reply = await self._script(ADD_WITHIN, (amount_key,), (amount, limit, _flag(blocks), ttl))
        if not isinstance(reply, list) or len(reply) != 2:
            raise StoreError("unexpected reply to the add-within script")
        return _int(reply[0]) == 1, _int(reply[1])

    async def mark(
        self,
        card_key: str,
        names: Sequence[str],
        members: Sequence[str],
        now_ms: int,
        window_ms: int,
    ) -> list[int]:
        keys = tuple(self._key(card_key, f"str:{name}") for name in names)
        reply = await self._script(MARK, keys, (now_ms, window_ms, *members))
        if not isinstance(reply, list) or len(reply) != len(keys):
            raise StoreError("unexpected reply to the mark script")
        return [_int(n) for n in reply]

    async def usage(self, card_key: str, currency: str, day: str) -> tuple[int, int]:
        amount_key, count_key = self._day_keys(card_key, currency, day)
        try:
            reply = await self.client.execute("MGET", amount_key, count_key)
        except RedisError as exc:
            raise StoreError(str(exc)) from None
        if not isinstance(reply, list) or len(reply) != 2:
            raise StoreError("unexpected reply to MGET")
        return tuple(0 if v is None else _int(v) for v in reply)  # type: ignore[return-value]

    async def aclose(self) -> None:
        await self.client.aclose()
