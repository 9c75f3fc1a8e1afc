//! A naive SSE push server: the baseline herald's benchmarks compare with.
//!
//! It is intentionally the obvious implementation, what one would write
//! after reading axum's SSE example: a `tokio::sync::broadcast` channel per
//! topic in a `HashMap` behind a mutex, and each subscriber an
//! `axum::response::sse::Sse` streaming from its receiver. No history, no
//! authorization, no backpressure beyond the channel's capacity (a lagging
//! receiver skips what it missed). It speaks just enough of the Mercure
//! protocol for `herald bench`:
//!
//! - `GET /.well-known/mercure?topic=T` subscribes to topic `T`;
//! - `POST /.well-known/mercure` with the form fields `topic` and `data`
//!   publishes (any `Authorization` is ignored) and answers 200 with an id.
//!
//! Do not improve it: its worth as a baseline is in being naive.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

/// Updates a subscriber may fall behind by before it skips some.
const CAPACITY: usize = 1024;

/// Serve the naive baseline hub.
#[derive(clap::Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
}

#[derive(Debug, Default)]
struct Hub {
    topics: Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>,
    next_id: AtomicU64,
}

#[derive(Debug, Deserialize)]
struct Subscribe {
    topic: String,
}

#[derive(Debug, Deserialize)]
struct Publish {
    topic: String,
    data: String,
}

async fn subscribe(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<Subscribe>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = hub
        .topics
        .lock()
        .unwrap()
        .entry(q.topic)
        .or_insert_with(|| broadcast::channel(CAPACITY).0)
        .subscribe();
    let stream = async_stream::stream! {
        loop {
            match rx.recv().await {
                Ok(data) => yield Ok(Event::default().data(&*data)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn publish(State(hub): State<Arc<Hub>>, Form(p): Form<Publish>) -> String {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    if let Some(tx) = hub.topics.lock().unwrap().get(&p.topic) {
        // No receivers is not an error: nobody is listening.
        let _ = tx.send(p.data.into());
    }
    format!("urn:naive:{id}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let app = Router::new()
        .route("/.well-known/mercure", get(subscribe).post(publish))
        .with_state(Arc::new(Hub::default()));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    eprintln!("naive-axum: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
