//! MQTT into a hub: topic filters with `+` and `#` wildcards; each message
//! becomes an update and `{channel}` is its MQTT topic.
//!
//! Messages are received at QoS 1 by default and acknowledged only once
//! the hub appended them. With `--client-id` the broker keeps the
//! bridge's session while it is away (a persistent session), so what is
//! published meanwhile is delivered when it comes back: at least once.
//! MQTT gives a message no identity of its own, so a message redelivered
//! after a crash between the append and the acknowledgement is shown
//! twice; without `--client-id` the session is clean and, as with NOTIFY,
//! what is published while the bridge is away is not seen.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

use super::shared::{AbortOnDrop, Backoff, Bridge, MapArgs};

/// Messages received and not yet published; past them the connection
/// waits (the broker holds the rest).
const QUEUE: usize = 1_000;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The broker, e.g. `mqtt://127.0.0.1:1883` (`mqtt://user:pass@host`
    /// to log in).
    #[arg(long, value_name = "URL", env = "HERALD_BRIDGE_MQTT")]
    mqtt: String,
    /// A topic filter to subscribe to, e.g. `sensors/+/temperature` or
    /// `logs/#` (repeatable).
    #[arg(long = "subscribe", value_name = "FILTER", required = true)]
    filters: Vec<String>,
    /// The subscriptions' quality of service: 0 (at most once) or 1 (at
    /// least once, acknowledged after the append).
    #[arg(long, value_name = "QOS", default_value = "1", value_parser = ["0", "1"])]
    qos: String,
    /// A client id of its own: the broker keeps the session while the
    /// bridge is away [default: a new one each start, clean session].
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    #[command(flatten)]
    pub map: MapArgs,
}

/// Where the broker is, and who the bridge logs in as.
struct Broker {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl Args {
    fn broker(&self) -> anyhow::Result<Broker> {
        let url =
            url::Url::parse(&self.mqtt).map_err(|e| anyhow!("--mqtt {:?}: {e}", self.mqtt))?;
        if url.scheme() != "mqtt" && url.scheme() != "tcp" {
            bail!(
                "--mqtt {:?}: the scheme is mqtt:// (or tcp://); TLS is not supported",
                self.mqtt
            );
        }
        let Some(host) = url.host_str() else {
            bail!("--mqtt {:?}: no host", self.mqtt);
        };
        let credentials = (!url.username().is_empty()).then(|| {
            (
                url.username().to_owned(),
                url.password().unwrap_or_default().to_owned(),
            )
        });
        Ok(Broker {
            host: host.to_owned(),
            port: url.port().unwrap_or(1883),
            credentials,
        })
    }

    /// Refuses arguments that can never work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        self.broker()?;
        for f in &self.filters {
            if !rumqttc::valid_filter(f) {
                bail!("--subscribe {f:?}: not a valid MQTT topic filter");
            }
        }
        Ok(())
    }
}

/// Runs the bridge until a fatal error.
pub async fn run(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    args.check()?;
    let broker = args.broker()?;
    let persistent = args.client_id.is_some();
    let id = args.client_id.clone().unwrap_or_else(|| {
        format!(
            "herald-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    });
    let mut options = MqttOptions::new(id, broker.host, broker.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(!persistent)
        .set_manual_acks(true);
    if let Some((user, pass)) = broker.credentials {
        options.set_credentials(user, pass);
    }
    let qos = if args.qos == "0" {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, mut rx) = mpsc::channel::<Publish>(QUEUE);
    // The connection is driven on its own, so keep-alives flow while an
    // update waits for the hub.
    let driver = {
        let (client, bridge, filters) = (client.clone(), bridge.clone(), args.filters.clone());
        tokio::spawn(async move {
            let mut backoff = Backoff::new();
            let mut subscribed = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        tracing::debug!(
                            bridge = bridge.name,
                            session_present = ack.session_present,
                            "connected"
                        );
                        subscribed = 0;
                        for f in &filters {
                            if let Err(e) = client.try_subscribe(f.clone(), qos) {
                                tracing::warn!(
                                    bridge = bridge.name,
                                    "cannot subscribe to {f}: {e}"
                                );
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed += 1;
                        if subscribed == filters.len() {
                            tracing::info!(bridge = bridge.name, filters = ?filters, "source listening");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let e = anyhow!("MQTT connection: {e}");
                        bridge.source_failed(&mut backoff, &e).await;
                    }
                }
            }
        })
    };
    let _driver = AbortOnDrop(driver);
    while let Some(p) = rx.recv().await {
        let payload = String::from_utf8_lossy(&p.payload);
        bridge.deliver(&p.topic, &payload, None).await?;
        if p.qos != QoS::AtMostOnce {
            client
                .ack(&p)
                .await
                .map_err(|e| anyhow!("cannot acknowledge: {e}"))?;
        }
    }
    bail!("the MQTT connection ended")
}
