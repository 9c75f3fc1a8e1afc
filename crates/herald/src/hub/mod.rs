//! The core of the hub: what every transport and every engine meets in.
//!
//! It knows no socket, no HTTP and no engine in particular:
//!
//! - [`handle`]: the [`Hub`] handle: engine, topic index, authorization,
//!   counters, and the native publishing API ([`Hub::publish`]);
//! - [`index`]: the topic index that finds the subscribers of an update;
//! - [`subscriber`]: one subscriber's selectors, rights and bounded queue;
//! - [`feed`]: the replay→live feed of one subscription
//!   ([`Hub::subscribe`]), the frames every transport streams;
//! - [`wake`]: how the index wakes a transport whose parked streams have
//!   frames queued (the one thing a transport plugs into the core);
//! - [`heartbeat`]: the hub-wide ticker (heartbeats, stalled writes,
//!   closing every stream at shutdown) and the token expiry timer;
//! - [`active`]: Mercure's active subscriptions (events and the table
//!   behind the subscriptions API);
//! - [`stats`]: once-a-second samples for the dashboard.

pub mod active;
pub mod admission;
pub mod feed;
pub mod handle;
pub(crate) mod heartbeat;
pub mod index;
pub(crate) mod stats;
pub mod subscriber;
pub mod wake;
pub mod webhooks;

pub use feed::{Feed, FeedSink, Revision, SubscribeError, SubscribeRequest};
pub use handle::{generate_id, Hub, PublishError};
pub use index::TopicIndex;
pub use subscriber::Subscriber;
pub use wake::Wake;
