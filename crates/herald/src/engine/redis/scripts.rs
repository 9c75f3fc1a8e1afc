//! The server-side scripts of the `redis` engine, and the keys they use.
//!
//! Every change to a namespace's log runs inside one script, so Redis
//! applies it atomically and replicates it as one unit: a replica (and so a
//! failover) sees either all of an append (entries, id index, order list,
//! counter) or none of it.
//!
//! The keys of namespace `ns` share the hash tag `{ns}`, so they live in
//! one slot of a Redis Cluster too:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:meta` | hash | `epoch` (the log's identity), `seq` (the last position), `first` (the oldest retained position), `clock` (the second of the newest clock mark) |
//! | `{ns}:log` | stream | one entry per update, with entry id `<position>-0`, field `e` = the epoch it was appended in and field `r` = the update's record |
//! | `{ns}:ids` | hash | update id → position, for retained updates |
//! | `{ns}:order` | list | the ids of retained updates, oldest first (what trimming removes from `ids`) |
//! | `{ns}:clock` | sorted set | one mark per second with appends: member the first position appended in it, score the server's time of that append in ms (what `max_age` trims by: a mark's updates go once its second is older than `max_age`) |
//! | `{ns}:nodes` | sorted set | node id → when its presence expires (ms) |
//! | `{ns}:node:<id>` | hash | that node's subscriptions (see `presence.rs`) |
//! | `{ns}:lease:<name>` | string | the node holding a lease (a broadcast bridge's), expiring unless renewed |
//!
//! Positions are the stream's entry ids, so trimming by count and by age
//! are both `XTRIM MINID ~`: the oldest position to keep is computed from
//! the count (`seq - max_updates + 1`) or the clock marks, and the `~`
//! lets Redis drop whole radix-tree nodes only (`LIMIT 0`: however many
//! are due, not Redis's default of 10,000 entries per call). The entries it keeps below
//! `first` are invisible: reads start at `first`, and their ids have left
//! the index.
//!
//! Numbers go through `string.format('%d')`: Lua 5.1 would write
//! positions above 10^14 in exponent form.

use redis::Script;

/// Keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub meta: String,
    pub log: String,
    pub ids: String,
    pub order: String,
    pub clock: String,
    pub nodes: String,
    node_prefix: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        let tag = format!("{{{namespace}}}");
        Self {
            meta: format!("{tag}:meta"),
            log: format!("{tag}:log"),
            ids: format!("{tag}:ids"),
            order: format!("{tag}:order"),
            clock: format!("{tag}:clock"),
            nodes: format!("{tag}:nodes"),
            node_prefix: format!("{tag}:node:"),
        }
    }

    /// The hash of one node's subscriptions.
    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.node_prefix)
    }

    /// The key of one lease.
    pub fn lease(&self, name: &str) -> String {
        format!("{}lease:{name}", self.node_prefix.trim_end_matches("node:"))
    }

    /// Every key of the namespace's log (not the presence keys).
    pub fn log_keys(&self) -> [&str; 5] {
        [&self.meta, &self.log, &self.ids, &self.order, &self.clock]
    }
}

/// Takes or renews a lease: sets it to the holder for the ttl when it is
/// free or already the holder's.
///
/// KEYS: the lease. ARGV: the holder, the ttl in ms. Returns 1 when the
/// holder holds it, else 0.
pub(crate) fn lease() -> Script {
    Script::new(
        r"
local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
}

/// Gives a lease back: deletes it when the holder holds it.
///
/// KEYS: the lease. ARGV: the holder.
pub(crate) fn release() -> Script {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
",
    )
}

/// Creates the log if it has no identity (new, flushed, or its `meta`
/// lost), clearing whatever is left of an older one, and returns `{epoch,
/// seq, first}`.
///
/// KEYS: meta, log, ids, order, clock. ARGV: a fresh epoch, used only when
/// the log is new.
pub(crate) fn init() -> Script {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[1], 'epoch')
if not e then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0, 'first', 1)
  e = ARGV[1]
end
local m = redis.call('HMGET', KEYS[1], 'seq', 'first')
return {e, m[1] or '0', m[2] or '1'}
",
    )
}

/// Appends updates, then applies retention. With no update, only applies
/// retention (the background trim of `max_age`).
///
/// KEYS: meta, log, ids, order, clock.
/// ARGV: the epoch the node follows, max updates (0: no limit), max age in
/// ms (0: no limit), then id and record of each update.
///
/// Returns `{'ok', last position}`, `{'dup', id}` (nothing written) or
/// `{'epoch', current epoch or ''}` (the log was replaced: nothing
/// written; the node's tail signals the gap and adopts the new log).
pub(crate) fn append() -> Script {
    Script::new(
        r"
local meta, log, ids, order, clock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function s(x) return string.format('%d', x) end
local e = redis.call('HGET', meta, 'epoch')
if e ~= ARGV[1] then return {'epoch', e or ''} end
local n = (#ARGV - 3) / 2
local seen = {}
for i = 0, n - 1 do
  local id = ARGV[4 + 2 * i]
  if seen[id] or redis.call('HEXISTS', ids, id) == 1 then return {'dup', id} end
  seen[id] = true
end
local last = tonumber(redis.call('HGET', meta, 'seq'))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if n > 0 then
  last = redis.call('HINCRBY', meta, 'seq', n)
  local start = last - n + 1
  for i = 0, n - 1 do
    local id = ARGV[4 + 2 * i]
    local pos = s(start + i)
    redis.call('XADD', log, pos .. '-0', 'e', e, 'r', ARGV[5 + 2 * i])
    redis.call('HSET', ids, id, pos)
    redis.call('RPUSH', order, id)
  end
  if redis.call('HGET', meta, 'clock') ~= t[1] then
    redis.call('HSET', meta, 'clock', t[1])
    redis.call('ZADD', clock, now, s(start))
  end
end
local first = tonumber(redis.call('HGET', meta, 'first'))
local keep = first
local max_updates = tonumber(ARGV[2])
if max_updates > 0 and last - max_updates + 1 > keep then keep = last - max_updates + 1 end
local max_age = tonumber(ARGV[3])
if max_age > 0 then
  -- A mark's updates were appended within the second it names: once that
  -- second is older than the cutoff, all of them go (up to the next mark).
  local cutoff = now - max_age
  while true do
    local m = redis.call('ZRANGE', clock, 0, 1, 'WITHSCORES')
    if not m[1] or tonumber(m[2]) + 1000 > cutoff then break end
    local upto = last + 1
    if m[3] then upto = tonumber(m[3]) else redis.call('HDEL', meta, 'clock') end
    if upto > keep then keep = upto end
    redis.call('ZREMRANGEBYRANK', clock, 0, 0)
  end
end
if keep > last + 1 then keep = last + 1 end
if keep > first then
  local k = keep - first
  while k > 0 do
    local c = math.min(k, 1000)
    local gone = redis.call('LPOP', order, c)
    if gone then redis.call('HDEL', ids, unpack(gone)) end
    k = k - c
  end
  redis.call('XTRIM', log, 'MINID', '~', s(keep) .. '-0', 'LIMIT', 0)
  redis.call('HSET', meta, 'first', s(keep))
  -- Marks wholly before what is kept go (the one covering `keep` stays).
  while true do
    local m = redis.call('ZRANGE', clock, 1, 1)
    if m[1] and tonumber(m[1]) <= keep then
      redis.call('ZREMRANGEBYRANK', clock, 0, 0)
    else
      break
    end
  end
end
return {'ok', s(last)}
",
    )
}

/// Up to `limit` retained entries after a position.
///
/// KEYS: meta, log. ARGV: the epoch the node follows, after, limit.
/// Returns `{'ok', entries}` (as `XRANGE` gives them) or `{'epoch', e}`.
pub(crate) fn read() -> Script {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[1], 'epoch')
if e ~= ARGV[1] then return {'epoch', e or ''} end
local from = tonumber(ARGV[2]) + 1
local first = tonumber(redis.call('HGET', KEYS[1], 'first'))
if from < first then from = first end
return {'ok', redis.call('XRANGE', KEYS[2], string.format('%d', from) .. '-0', '+', 'COUNT', ARGV[3])}
",
    )
}

/// What a tail checks to know it still follows the same history.
///
/// KEYS: meta, ids. ARGV: the id of the last update the node delivered
/// (may be empty). Returns `{epoch or '', seq, first, position of that id
/// or -1}`.
pub(crate) fn check() -> Script {
    Script::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'first')
local at = -1
if ARGV[1] ~= '' then
  local p = redis.call('HGET', KEYS[2], ARGV[1])
  if p then at = tonumber(p) end
end
return {m[1] or '', m[2] or '0', m[3] or '1', at}
",
    )
}
