//! The state every part of the `postgres` engine shares: the connection
//! for appends, reads and presence (pipelined, reconnected on demand), and
//! where this node's tail is.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use herald_protocol::Update;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::config::PostgresConfig;
use super::rows::unavailable;
use super::schema::Names;
use crate::engine::waiters::Waiters;
use crate::engine::{EngineError, Position};

/// A connection that reconnects on its next use after it broke.
pub(crate) struct Link {
    url: String,
    timeout: std::time::Duration,
    current: Mutex<Option<Arc<Client>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    pub fn new(url: &str, timeout: std::time::Duration) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn live(&self) -> Option<Arc<Client>> {
        self.current.lock().clone().filter(|c| !c.is_closed())
    }

    /// The connection, opened again if it broke.
    pub async fn client(&self) -> Result<Arc<Client>, EngineError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let client = Arc::new(connect(&self.url, self.timeout).await?.0);
        *self.current.lock() = Some(client.clone());
        Ok(client)
    }
}

/// Opens a connection and drives it in a task; returns the client and the
/// connection's messages (notifications) as they come.
pub(crate) async fn connect(
    url: &str,
    timeout: std::time::Duration,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<()>), EngineError> {
    let (client, mut connection) =
        tokio::time::timeout(timeout, tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| {
                EngineError::Unavailable(format!("postgres: no answer within {timeout:?}"))
            })?
            .map_err(unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match msg {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = tx.send(());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    Ok((client, rx))
}

/// One append waiting for the writer: its updates, the epoch it expects,
/// and where its last position goes.
pub(crate) struct Request {
    pub updates: Arc<Vec<Update>>,
    pub epoch: Arc<str>,
    pub reply: oneshot::Sender<Result<Position, EngineError>>,
}

/// Where this node's tail started.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub delivered: Position,
    pub last_id: Option<String>,
}

pub(crate) struct Inner {
    pub config: PostgresConfig,
    /// Appends, to the group-commit writer.
    pub writer: tokio::sync::mpsc::UnboundedSender<Request>,
    pub names: Names,
    /// Reads, `bounds` and presence.
    pub link: Link,
    /// The group-commit writer's own connection: a statement waiting for
    /// the position lock (held by an application's open transaction, say)
    /// never holds up reads and `/readyz` queued behind it.
    pub writer_link: Link,
    /// The log this node follows.
    pub epoch: Mutex<Arc<str>>,
    pub start: Mutex<Start>,
    pub waiters: Mutex<Waiters>,
    pub tail_up: AtomicBool,
    pub tail_lost: AtomicBool,
    pub started: AtomicBool,
    pub closed: AtomicBool,
    pub stop: CancellationToken,
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    /// Runs a call within the timeout.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        tokio::time::timeout(self.config.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(EngineError::Unavailable(format!(
                    "postgres: no answer within {:?}",
                    self.config.timeout
                )))
            })
    }

    /// The log's epoch and last position.
    pub async fn head(&self, client: &Client) -> Result<Option<(String, Position)>, EngineError> {
        let row = client
            .query_opt(&format!("SELECT epoch, last FROM {}", self.names.meta), &[])
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as Position)))
    }

    /// The id of the update at a position, if retained.
    pub async fn id_at(
        &self,
        client: &Client,
        pos: Position,
    ) -> Result<Option<String>, EngineError> {
        let row = client
            .query_opt(
                &format!("SELECT id FROM {} WHERE position = $1", self.names.updates),
                &[&(pos as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| r.get(0)))
    }
}
