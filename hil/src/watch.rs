//! The rig's view of the fleet over MQTT: a TLS client with its own
//! certificate that subscribes to every device's retained state and its
//! events (topics from `berth_agent::link::Topics`), and keeps the latest
//! state, recent events and message counts per device.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use berth_agent::link::{client_config, Topics, MAX_OUTGOING};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

/// How the rig reaches the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
    /// The rig's client certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "Broker::default_prefix")]
    pub prefix: String,
}

impl Broker {
    fn default_prefix() -> String {
        "berth".into()
    }
}

/// What the rig knows of one device.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    /// The latest retained state document.
    pub state: Option<serde_json::Value>,
    /// When it arrived.
    pub state_at: Option<Instant>,
    /// When the state document last changed (a repeated report of the
    /// same state does not move it).
    pub changed_at: Option<Instant>,
    /// The most recent events (at most [`EVENTS_KEPT`]).
    pub events: VecDeque<serde_json::Value>,
    pub states_seen: u64,
    pub events_seen: u64,
}

/// Events kept per device.
pub const EVENTS_KEPT: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    devices: BTreeMap<String, DeviceView>,
    connected: bool,
    bytes: u64,
    error: Option<String>,
    /// The connection's client and the retained-state topic.
    client: Option<(AsyncClient, String)>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// A connection that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the rig's MQTT TLS material is unusable: {0}")]
    Tls(String),
    #[error("the broker {host}:{port} did not accept the rig within {secs} s: {why}; check that it runs and that the rig's certificate is issued by its CA")]
    Connect {
        host: String,
        port: u16,
        secs: u64,
        why: String,
    },
    #[error("cannot start the MQTT client thread: {0}")]
    Thread(std::io::Error),
}

/// The rig's subscription to every device.
#[derive(Debug)]
pub struct FleetWatch {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FleetWatch {
    /// Connects as `client_id` and waits until subscribed.
    pub fn connect(b: &Broker, client_id: &str) -> Result<FleetWatch, WatchError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| WatchError::Read {
                path: p.clone(),
                source,
            })
        };
        let tls = client_config(&read(&b.ca)?, &read(&b.cert)?, &read(&b.key)?)
            .map_err(WatchError::Tls)?;
        let mut opts = MqttOptions::new(client_id, b.host.clone(), b.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_OUTGOING, 64 * 1024)
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (sh, prefix) = (shared.clone(), b.prefix.clone());
        let thread = std::thread::Builder::new()
            .name("berth-hil-mqtt".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                rt.block_on(pump(opts, prefix, sh, stop_rx));
            })
            .map_err(WatchError::Thread)?;
        let w = FleetWatch {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let secs = 15;
        if !w.wait(Duration::from_secs(secs), |i| i.connected) {
            let why = w.lock().error.clone().unwrap_or_else(|| "no answer".into());
            return Err(WatchError::Connect {
                host: b.host.clone(),
                port: b.port,
                secs,
                why,
            });
        }
        Ok(w)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait(&self, timeout: Duration, cond: impl Fn(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if cond(&g) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The view of `device` (default when it never reported).
    pub fn device(&self, device: &str) -> DeviceView {
        self.lock().devices.get(device).cloned().unwrap_or_default()
    }

    /// Every device's latest state.
    pub fn states(&self) -> BTreeMap<String, serde_json::Value> {
        self.lock()
            .devices
            .iter()
            .filter_map(|(d, v)| v.state.clone().map(|s| (d.clone(), s)))
            .collect()
    }

    /// Subscribes to the devices' states again: the broker sends every
    /// retained state anew, so a state the broker dropped on its way to the
    /// rig (its queue for the rig overflowing under a fleet-wide burst) is
    /// seen after all. False when not connected.
    pub fn resync(&self) -> bool {
        let g = self.lock();
        match (&g.client, g.connected) {
            (Some((c, topic)), true) => c.try_subscribe(topic.clone(), QoS::AtLeastOnce).is_ok(),
            _ => false,
        }
    }

    /// Runs `f` over every device's view, under the watch's lock (nothing
    /// is copied: a fleet of thousands is inspected cheaply).
    pub fn with_devices<R>(&self, f: impl FnOnce(&BTreeMap<String, DeviceView>) -> R) -> R {
        f(&self.lock().devices)
    }

    /// Waits until `cond` holds over the devices' views.
    pub fn wait_devices(
        &self,
        timeout: Duration,
        cond: impl Fn(&BTreeMap<String, DeviceView>) -> bool,
    ) -> bool {
        self.wait(timeout, |i| cond(&i.devices))
    }

    /// Waits until `device`'s state satisfies `cond`; returns the last state.
    pub fn wait_state(
        &self,
        device: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> (bool, Option<serde_json::Value>) {
        let ok = self.wait_devices(timeout, |d| {
            d.get(device)
                .and_then(|v| v.state.as_ref())
                .is_some_and(&cond)
        });
        (ok, self.device(device).state)
    }

    /// (state messages, event messages, payload bytes) received so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        let g = self.lock();
        let (s, e) = g
            .devices
            .values()
            .fold((0, 0), |(s, e), v| (s + v.states_seen, e + v.events_seen));
        (s, e, g.bytes)
    }
}

impl Drop for FleetWatch {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn pump(
    opts: MqttOptions,
    prefix: String,
    sh: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (client, mut ev) = AsyncClient::new(opts, 16);
    let (states, events) = (
        Topics::all_device_states(&prefix),
        Topics::all_device_events(&prefix),
    );
    sh.inner.lock().unwrap_or_else(|p| p.into_inner()).client =
        Some((client.clone(), states.clone()));
    loop {
        let e = tokio::select! {
            _ = &mut stop => {
                let _ = client.try_disconnect();
                return;
            }
            e = ev.poll() => e,
        };
        let failed = record(&sh, &client, (&states, &events), e);
        sh.changed.notify_all();
        if failed {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Records one event of the connection; true when it failed.
fn record(
    sh: &Shared,
    client: &AsyncClient,
    (states, events): (&str, &str),
    e: Result<Event, rumqttc::ConnectionError>,
) -> bool {
    let mut g = sh.inner.lock().unwrap_or_else(|p| p.into_inner());
    match e {
        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
            let _ = client.try_subscribe(states, QoS::AtLeastOnce);
            let _ = client.try_subscribe(events, QoS::AtLeastOnce);
        }
        Ok(Event::Incoming(Incoming::SubAck(_))) => g.connected = true,
        Ok(Event::Incoming(Incoming::Publish(p))) => {
            g.bytes += p.payload.len() as u64;
            let mut parts = p.topic.rsplit('/');
            let (Some(kind), Some(device)) = (parts.next(), parts.next()) else {
                return false;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                return false;
            };
            let d = g.devices.entry(device.to_string()).or_default();
            match kind {
                "state" => {
                    let now = Instant::now();
                    if d.state.as_ref() != Some(&v) {
                        d.changed_at = Some(now);
                    }
                    d.state = Some(v);
                    d.state_at = Some(now);
                    d.states_seen += 1;
                }
                "events" => {
                    if d.events.len() == EVENTS_KEPT {
                        d.events.pop_front();
                    }
                    d.events.push_back(v);
                    d.events_seen += 1;
                }
                _ => {}
            }
        }
        Ok(_) => {}
        Err(e) => {
            g.connected = false;
            g.error = Some(e.to_string());
            return true;
        }
    }
    false
}
