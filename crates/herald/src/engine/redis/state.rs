//! The state every part of the `redis` engine shares: the server, the
//! scripts, and where this node's tail is.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::RedisConfig;
use super::entries::{int, malformed, text, unavailable};
use super::presence;
use super::scripts::Keys;
use crate::engine::waiters::Waiters;
use crate::engine::{EngineError, Position};

/// Where this node's tail is, shared with the appends waiting on it.
#[derive(Debug, Clone)]
pub(super) struct Follow {
    /// The log this node follows.
    pub epoch: Arc<str>,
    /// The last position delivered when the engine connected.
    pub delivered: Position,
    /// The id of the update at `delivered` when the engine connected.
    pub start_id: Option<String>,
}

/// The scripts, loaded once per connection by EVALSHA (EVAL on NOSCRIPT).
pub(super) struct Scripts {
    pub init: redis::Script,
    pub append: redis::Script,
    pub read: redis::Script,
    pub check: redis::Script,
    pub lease: redis::Script,
    pub release: redis::Script,
}

pub(super) struct Inner {
    pub config: RedisConfig,
    pub keys: Keys,
    pub client: redis::Client,
    /// Appends, reads and presence: one multiplexed connection that
    /// reconnects by itself.
    pub conn: ConnectionManager,
    /// With `wait_replicas`: appends and their `WAIT` on a connection of
    /// their own (`WAIT` blocks its connection, and covers only the
    /// writes made on it), so reads and `/readyz` never queue behind it.
    pub append_conn: Option<ConnectionManager>,
    pub scripts: Scripts,
    pub follow: watch::Sender<Follow>,
    pub waiters: Mutex<Waiters>,
    /// The tail is connected and checked the log.
    pub tail_up: AtomicBool,
    /// The tail lost its connection and has not checked the log since.
    pub tail_lost: AtomicBool,
    pub started: AtomicBool,
    pub closed: AtomicBool,
    pub stop: CancellationToken,
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub presence: presence::Presence,
}

impl Inner {
    /// Runs a Redis call within the timeout.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        tokio::time::timeout(self.config.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(EngineError::Unavailable(format!(
                    "redis: no answer within {:?}",
                    self.config.timeout
                )))
            })
    }

    /// The log's `(epoch, seq, first)`, creating it when missing.
    pub async fn init<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<(Arc<str>, Position, Position), EngineError> {
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let mut inv = self.scripts.init.prepare_invoke();
        for k in self.keys.log_keys() {
            inv.key(k);
        }
        let reply: Value = inv
            .arg(fresh)
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        match super::entries::items(&reply) {
            Some([epoch, seq, first]) => Ok((
                Arc::from(text(epoch).ok_or_else(|| malformed("epoch"))?),
                int(seq).ok_or_else(|| malformed("seq"))?.max(0) as Position,
                int(first).ok_or_else(|| malformed("first"))?.max(1) as Position,
            )),
            _ => Err(malformed("init")),
        }
    }
}
