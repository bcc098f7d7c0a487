//! The link to the fleet: MQTT over TLS with a client certificate (rumqttc).
//!
//! Topics, under a configurable prefix (default `berth`):
//!
//! | topic | direction | retained | payload |
//! |---|---|---|---|
//! | `P/fleets/F/timestamp` | operator → devices | yes | the newest `timestamp.json` |
//! | `P/devices/D/state` | device → operator | yes | the device's state (JSON) |
//! | `P/devices/D/events` | device → operator | no | one event (JSON) per message |
//! | `P/devices/D/status` | device → operator | yes | `online`, or `offline` (last will) |
//!
//! Nothing that arrives is trusted: a notification only *triggers* a verified
//! TUF refresh, so a forged or replayed one can at most cause a fetch that
//! finds nothing new. Memory is bounded however the broker behaves: incoming
//! packets are capped in size, notifications coalesce into one pending
//! refresh flag (the refresh reads the newest metadata anyway, and a pending
//! refresh is never lost), connection notices go through a small channel that
//! drops when full, and outgoing events go through a bounded queue that drops
//! (and counts) rather than grows.

mod tls;
mod topics;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, LastWill, MqttOptions, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub use tls::client_config;
pub use topics::Topics;

/// Largest packet accepted from the broker (a timestamp.json is ~1 KiB).
pub const MAX_INCOMING: usize = 64 * 1024;
/// Largest packet the device sends (a state document).
pub const MAX_OUTGOING: usize = 256 * 1024;
/// Outgoing requests queued while the link is down before events are dropped.
pub const QUEUE: usize = 64;

/// How to reach the broker.
#[derive(Clone)]
pub struct LinkConfig {
    pub host: String,
    pub port: u16,
    /// PEM of the CA that signed the broker's certificate. All three PEMs
    /// empty: plain MQTT, accepted only to a broker on loopback.
    pub ca_pem: Vec<u8>,
    /// PEM of the device's client certificate and private key.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub topics: Topics,
    pub keep_alive: Duration,
    /// First and largest pause between reconnection attempts.
    pub backoff: (Duration, Duration),
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// What the link tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Connected (or reconnected) and subscribed.
    Connected,
    /// A (possibly forged) notification of new timestamp metadata: refresh.
    Refresh,
    /// The connection dropped; the link retries with backoff.
    Down(String),
}

/// The notices of a link. A refresh request is a flag, not a queue entry: any
/// number of notifications leave exactly one pending refresh.
#[derive(Debug)]
pub struct Notices {
    status: mpsc::Receiver<Notice>,
    refresh: Arc<(AtomicBool, Notify)>,
}

impl Notices {
    /// The next notice; `None` once the link task has ended.
    pub async fn recv(&mut self) -> Option<Notice> {
        loop {
            if let Ok(n) = self.status.try_recv() {
                return Some(n);
            }
            if self.refresh.0.swap(false, Ordering::AcqRel) {
                return Some(Notice::Refresh);
            }
            tokio::select! {
                n = self.status.recv() => return n,
                () = self.refresh.1.notified() => {}
            }
        }
    }

    /// A notice if one is pending.
    pub fn try_recv(&mut self) -> Option<Notice> {
        if let Ok(n) = self.status.try_recv() {
            return Some(n);
        }
        self.refresh
            .0
            .swap(false, Ordering::AcqRel)
            .then_some(Notice::Refresh)
    }
}

/// A handle to publish on the link.
#[derive(Debug, Clone)]
pub struct Link {
    client: AsyncClient,
    topics: Topics,
    dropped: Arc<AtomicU64>,
}

impl Link {
    /// Connects in the background; returns the handle, the notices and the
    /// task, which ends (publishing `offline` first) when `shutdown` resolves.
    /// Fails only on unusable TLS material (the error names the part).
    pub fn start(
        cfg: LinkConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(Link, Notices, JoinHandle<()>), String> {
        let topics = cfg.topics.clone();
        let mut opts = MqttOptions::new(topics.client_id(), cfg.host.clone(), cfg.port);
        opts.set_keep_alive(cfg.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_INCOMING, MAX_OUTGOING)
            .set_last_will(LastWill::new(
                topics.device_status(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if cfg.ca_pem.is_empty() && cfg.cert_pem.is_empty() && cfg.key_pem.is_empty() {
            // Plain MQTT: only to a broker on this machine (the demo's).
            if !matches!(cfg.host.as_str(), "127.0.0.1" | "localhost" | "::1") {
                return Err(format!(
                    "the broker {} needs TLS: give the CA, the device certificate and its key",
                    cfg.host
                ));
            }
        } else {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(client_config(
                &cfg.ca_pem,
                &cfg.cert_pem,
                &cfg.key_pem,
            )?)));
        }
        let (client, eventloop) = AsyncClient::new(opts, QUEUE);
        let (tx, status) = mpsc::channel(4);
        let refresh = Arc::new((AtomicBool::new(false), Notify::new()));
        let rx = Notices {
            status,
            refresh: refresh.clone(),
        };
        let link = Link {
            client: client.clone(),
            topics: topics.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let task = tokio::spawn(run(
            client,
            eventloop,
            topics,
            cfg.backoff,
            (tx, refresh),
            shutdown,
        ));
        Ok((link, rx, task))
    }

    /// Replaces the retained state message. Never blocks: when the queue is
    /// full the update is dropped (the next one supersedes it) and counted.
    pub fn publish_state(&self, json: Vec<u8>) -> bool {
        self.send(self.topics.device_state(), true, json)
    }

    /// Publishes one event; dropped and counted when the queue is full.
    pub fn publish_event(&self, json: Vec<u8>) -> bool {
        self.send(self.topics.device_events(), false, json)
    }

    /// Messages dropped because the outgoing queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, topic: String, retain: bool, payload: Vec<u8>) -> bool {
        let ok = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .is_ok();
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

async fn run(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    topics: Topics,
    (first, max): (Duration, Duration),
    (tx, refresh): (mpsc::Sender<Notice>, Arc<(AtomicBool, Notify)>),
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let mut backoff = first;
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let _ = client.try_publish(topics.device_status(), QoS::AtLeastOnce, true, "offline");
                let _ = client.try_disconnect();
                // Drain until the disconnect is sent (bounded).
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(ev) = eventloop.poll().await {
                        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff = first;
                    let _ = client.try_subscribe(topics.fleet_timestamp(), QoS::AtLeastOnce);
                    let _ = client.try_publish(topics.device_status(), QoS::AtLeastOnce, true, "online");
                    tracing::info!(device = %topics.device(), "link up");
                    let _ = tx.try_send(Notice::Connected);
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if p.topic == topics.fleet_timestamp() {
                        // Coalesce: one pending refresh covers any number of notices.
                        refresh.0.store(true, Ordering::Release);
                        refresh.1.notify_one();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let why = describe(&e);
                    tracing::warn!(error = %why, retry_in = ?backoff, "link down");
                    let _ = tx.try_send(Notice::Down(why));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection ({code:?}): check the device certificate and the broker's ACL")
        }
        ConnectionError::Tls(t) => {
            format!("TLS failed ({t}): check the CA, the device certificate and its key")
        }
        other => {
            let text = other.to_string();
            if text.contains("alert")
                || text.contains("certificate")
                || text.contains("Certificate")
            {
                format!("TLS failed ({text}): the broker refused the device certificate or the device refused the broker's: check the CA, the device certificate and its key")
            } else {
                text
            }
        }
    }
}
