//! `berth-agent` assembled from its configuration: one state database
//! (`<state>/db`: update state, history, launch log, trusted TUF metadata,
//! image measurements), the blob store, the runtime seam, the TUF source,
//! the MQTT link and the local API, run until a signal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_image::registry::{ClientConfig, Credentials};
use berth_trust::SledStore;

use crate::attest::LaunchLog;
use crate::config::{AgentConfig, RuntimeBackend};
use crate::daemon::{self, Schedule};
use crate::images::{Shared, StoreImages};
use crate::link::{Link, LinkConfig, Topics};
use crate::names::Digest;
use crate::reconcile::engine::{wall_ms, Engine};
use crate::reconcile::record::RecordingRuntime;
use crate::reconcile::runtime::CliRuntime;
use crate::reconcile::store::UpdateStore;
use crate::release::document::Arch;
use crate::release::resolve;
use crate::release::validate::{from_json, DeviceIdentity};
use crate::source::{self, TufSource};
use crate::status::AgentHandler;

/// The assembled agent.
pub struct Agent {
    pub cfg: AgentConfig,
    pub engine: Arc<Engine>,
    pub source: Arc<TufSource>,
    pub images: Arc<StoreImages>,
    pub handler: Arc<AgentHandler>,
    /// Releases verified by bundle imports, for the update loop.
    imports: tokio::sync::mpsc::Receiver<Vec<u8>>,
    import_tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Requested when a new agent was installed for its trial (see
    /// `selfupdate`): `run` then returns, and the process exits with
    /// `selfupdate::EXIT_RESTART`.
    pub restart: crate::selfupdate::install::Restart,
    /// Installs new agents (a launcher's child with `[self_update]`).
    installer: Option<Arc<crate::selfupdate::install::Installer>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.cfg.device.id)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn opt_read(path: &Option<std::path::PathBuf>, what: &str) -> Result<Vec<u8>, String> {
    path.as_deref().map_or(Ok(Vec::new()), |p| read(p, what))
}

/// The secrets opener, when the device has a secrets key (enrolled).
fn unsealer(cfg: &AgentConfig) -> Result<Option<Arc<crate::secrets::Unsealer>>, String> {
    let path = cfg.paths.state.join("secrets.key");
    let key = crate::device::keys::read_secrets_key(&path).map_err(|e| e.to_string())?;
    Ok(key.map(|k| {
        Arc::new(crate::secrets::Unsealer::new(
            &cfg.device.id,
            k,
            cfg.paths.secrets.clone(),
        ))
    }))
}

/// Opens sled at `path`, waiting briefly for a previous process's lock.
fn open_db(path: &Path) -> Result<sled::Db, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match crate::reconcile::store::db_config(path).open() {
            Ok(db) => return Ok(db),
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "cannot open the state database {}: {e}; is another berth-agent running?",
                    path.display()
                ))
            }
        }
    }
}

impl Agent {
    /// Builds every part from `cfg`; `rt` runs the registry client.
    pub fn open(cfg: AgentConfig, rt: tokio::runtime::Handle) -> Result<Agent, String> {
        let state = cfg.paths.state.clone();
        std::fs::create_dir_all(&state)
            .map_err(|e| format!("cannot create the state directory {}: {e}", state.display()))?;
        // Searchable but not listable by others: the workloads' user
        // namespaces reach their rootfs through it; secrets inside are 0600.
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .map_err(|e| format!("cannot restrict {}: {e}", state.display()))?;
        let db = open_db(&state.join("db"))?;
        let db_name = state.join("db").display().to_string();

        let mut registry = ClientConfig {
            mirrors: cfg.registry.mirrors.clone(),
            ..ClientConfig::default()
        };
        if let Some(ca) = &cfg.registry.ca {
            registry.ca_pem.push(read(ca, "registry CA")?);
        }
        if let (Some(user), Some(pw)) = (&cfg.registry.user, &cfg.registry.password_file) {
            let password = String::from_utf8(read(pw, "registry password file")?)
                .map_err(|_| format!("{} is not UTF-8", pw.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string();
            registry.credentials = Some(Credentials {
                user: user.clone(),
                password,
            });
        }
        // The blob store's counts live in the state database; an earlier
        // version kept them in a database of their own.
        if crate::reconcile::store::absorb(&state.join("blobs/db"), &db)
            .map_err(|e| e.to_string())?
        {
            tracing::info!("moved the blob store's references into the state database");
        }
        let images = Arc::new(StoreImages::open(&state, &db, registry, rt.clone())?);

        let ca = match &cfg.trust.ca {
            Some(p) => Some(read(p, "metadata server CA")?),
            None => None,
        };
        let targets_url = cfg
            .trust
            .targets_url
            .clone()
            .or_else(|| source::default_targets_url(&cfg.trust.metadata_url))
            .ok_or("trust.targets_url is not set")?;
        let (metadata, targets) =
            source::transports(&cfg.trust.metadata_url, &targets_url, ca.as_deref())?;
        let mut src = TufSource {
            store: SledStore::in_db(&db, &db_name).map_err(|e| crate::error_chain(&e))?,
            metadata,
            targets,
            target: source::release_target(&cfg.device.fleet),
            cache: state.join("targets"),
            config: berth_trust::Config::default(),
            lock: Arc::default(),
            after_refresh: None,
        };
        let (restart, installer) = match (&cfg.self_update, crate::selfupdate::running()) {
            // A trial agent installs nothing until it has committed.
            (Some(_), Some(me)) => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find the agent's own executable: {e}"))?;
                let arch = cfg.device.arch.or_else(Arch::native);
                let arch = arch.ok_or("this machine's architecture is not supported")?;
                let installer = Arc::new(crate::selfupdate::install::Installer::new(
                    state.clone(),
                    crate::selfupdate::agent_target(arch),
                    me.slot,
                    exe,
                ));
                src.after_refresh = Some(crate::selfupdate::install::hook(installer.clone()));
                (installer.restart.clone(), Some(installer))
            }
            _ => (crate::selfupdate::install::Restart::default(), None),
        };
        if src.provision(&cfg.trust.root)? {
            tracing::info!(root = %cfg.trust.root.display(), "pinned the trusted root");
        }

        // The containers launched stay the agent's children: their exits
        // (and exit statuses) arrive without polling the runtime.
        if let Err(e) = crate::reconcile::exits::become_subreaper() {
            tracing::warn!(error = %e, "cannot become the child subreaper: workloads' exit statuses are not known");
        }
        let arch = cfg
            .device
            .arch
            .or_else(Arch::native)
            .ok_or("this machine's architecture is not supported")?;
        let engine = Arc::new(Engine {
            store: UpdateStore::with_db(&state, db.clone()).map_err(|e| e.to_string())?,
            actual: db
                .open_tree("actual")
                .map_err(|e| format!("state database: {e}"))?,
            log: LaunchLog::new(&state, db.clone()).map_err(|e| e.to_string())?,
            runtime: match cfg.paths.runtime_backend {
                RuntimeBackend::BerthRuntime => Box::new(CliRuntime::watching(
                    cfg.paths.runtime.clone(),
                    cfg.paths.runtime_root.clone(),
                    rt.clone(),
                )),
                RuntimeBackend::Record => Box::new(RecordingRuntime::new(&cfg.paths.runtime_root)),
            },
            images: Box::new(Shared(images.clone())),
            me: DeviceIdentity {
                fleet: cfg.device.fleet.clone(),
                device: cfg.device.id.clone(),
                arch,
            },
            policy: cfg.policy.clone(),
            state_dir: state.clone(),
            gate_interval: Duration::from_millis(200),
            stop_grace: Duration::from_secs(10),
            now_ms: wall_ms,
            secrets: unsealer(&cfg)?,
        });
        let key =
            crate::attest::device_key(&state.join("device.key")).map_err(|e| e.to_string())?;
        let source = Arc::new(src);
        let (import_tx, imports) = tokio::sync::mpsc::channel(4);
        let importer: crate::status::Importer = {
            let (source, images, tx) = (source.clone(), images.clone(), import_tx.clone());
            Arc::new(move |file: &Path| import_bundle(&source, &images, arch, &tx, file))
        };
        let handler = Arc::new(AgentHandler {
            engine: engine.clone(),
            key,
            runtime: (cfg.paths.runtime.clone(), cfg.paths.runtime_root.clone()),
            import: Some(importer),
        });
        Ok(Agent {
            cfg,
            engine,
            source,
            images,
            handler,
            imports,
            import_tx,
            restart,
            installer,
        })
    }

    /// The manifests the committed and previous generations use (kept by
    /// [`StoreImages::prune`]).
    pub fn images_in_use(engine: &Engine) -> Vec<Digest> {
        let Ok(state) = engine.store.load() else {
            return Vec::new();
        };
        let mut keep = Vec::new();
        for g in [&state.current, &state.previous].into_iter().flatten() {
            if let Ok(r) = from_json(&g.digest, &g.document) {
                for w in resolve(&r, engine.me.arch).unwrap_or_default() {
                    keep.push(w.image);
                }
            }
        }
        keep
    }

    /// Runs until `shutdown` resolves: recovery first (finish or undo an
    /// interrupted update, reap what a crash left), then the API, the
    /// link and the main loop.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        crate::hw::beat();
        let pacemaker = match &self.cfg.watchdog {
            Some(w) => Some(
                crate::hw::watchdog::Pacemaker::start(crate::hw::watchdog::Settings {
                    device: w.device.clone(),
                    interval: Duration::from_millis(w.interval_ms),
                    stall: Duration::from_secs(w.stall_s),
                    magic_close: w.magic_close,
                })
                .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let led = match &self.cfg.led {
            Some(l) => {
                let spec = crate::hw::led::PinSpec::parse(&l.pin).map_err(|e| e.to_string())?;
                let led = crate::hw::led::open(&spec).map_err(|e| e.to_string())?;
                Some(tokio::spawn(show_status(
                    led,
                    self.engine.clone(),
                    stopped(),
                )))
            }
            None => None,
        };
        let e = self.engine.clone();
        match tokio::task::spawn_blocking(move || e.recover())
            .await
            .map_err(|e| format!("recovery task failed: {e}"))?
        {
            Ok(Some(o)) => {
                tracing::info!(generation = o.generation, result = %o.result, reason = %o.reason, "recovered an interrupted update")
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "recovery failed; the main loop retries"),
        }
        let listener = crate::api::bind(&self.cfg.paths.socket).map_err(|e| e.to_string())?;
        let api = tokio::spawn(crate::api::serve(listener, self.handler.clone(), stopped()));
        let link = match &self.cfg.mqtt {
            Some(m) => {
                let lc = LinkConfig {
                    host: m.host.clone(),
                    port: m.port,
                    ca_pem: opt_read(&m.ca, "MQTT CA")?,
                    cert_pem: opt_read(&m.cert, "MQTT client certificate")?,
                    key_pem: opt_read(&m.key, "MQTT client key")?,
                    topics: Topics::new(&m.prefix, &self.cfg.device.fleet, &self.cfg.device.id)
                        .map_err(|e| format!("mqtt.prefix: {e}"))?,
                    keep_alive: Duration::from_secs(m.keep_alive_s),
                    backoff: (Duration::from_millis(500), Duration::from_secs(60)),
                };
                let (l, n, task) = Link::start(lc, stopped())?;
                Some((l, n, task))
            }
            None => None,
        };
        let (link, link_task) = match link {
            Some((l, n, t)) => (Some((l, n)), Some(t)),
            None => (None, None),
        };
        let images = self.images.clone();
        let engine = self.engine.clone();
        let prune: daemon::Housekeeping = Arc::new(move || {
            let keep = Agent::images_in_use(&engine);
            match images.prune(&keep) {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned unused images"),
                Err(e) => tracing::warn!(error = %e, "image pruning failed"),
            }
        });
        let watcher = self.cfg.paths.import_dir.clone().map(|dir| {
            tokio::spawn(watch_imports(
                dir,
                self.source.clone(),
                self.images.clone(),
                self.engine.me.arch,
                self.import_tx.clone(),
                stopped(),
            ))
        });
        let (progress, progress_rx) = tokio::sync::watch::channel(daemon::Progress::default());
        let trial = match crate::selfupdate::running() {
            Some(me) if self.cfg.self_update.is_some() => {
                let l = link.as_ref().map(|(l, _)| l.clone());
                if let Some(l) = &l {
                    crate::selfupdate::trial::report_outcomes(&self.cfg.paths.state, l);
                    if let Some(i) = &self.installer {
                        i.set_link(l.clone());
                    }
                }
                me.trial.then(|| {
                    tokio::spawn(crate::selfupdate::trial::commit_when_healthy(
                        self.cfg.paths.state.clone(),
                        me.slot,
                        self.engine.clone(),
                        l,
                        progress_rx,
                        stopped(),
                    ))
                })
            }
            _ => None,
        };
        let restart = self.restart.clone();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                () = restart.wait() => tracing::info!("restarting for the new agent's trial"),
            }
        };
        let schedule = Schedule {
            every: Duration::from_secs(self.cfg.trust.refresh_s),
            jitter: Duration::from_secs(self.cfg.trust.jitter_s),
        };
        daemon::run(
            self.engine.clone(),
            self.source.clone(),
            link,
            schedule,
            daemon::Hooks {
                housekeeping: Some(prune),
                progress: Some(progress),
            },
            Some(self.imports),
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = api.await;
        if let Some(w) = watcher {
            let _ = w.await;
        }
        if let Some(t) = link_task {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        if let Some(l) = led {
            let _ = l.await;
        }
        if let Some(t) = trial {
            let _ = t.await;
        }
        drop(pacemaker);
        let _ = std::fs::remove_file(&self.cfg.paths.socket);
        Ok(())
    }
}

/// Shows the reconciler's state on the status LED until `stopped`; the LED
/// goes dark when the agent stops.
async fn show_status(
    led: crate::hw::led::Led,
    engine: Arc<Engine>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = tick.tick() => {}
        }
        let pattern = match engine.store.load() {
            Ok(state) => crate::hw::Pattern::of(&state, crate::hw::error()),
            Err(_) => crate::hw::Pattern::Error,
        };
        led.show(pattern);
    }
    let _ = tokio::task::spawn_blocking(move || drop(led)).await;
}

/// Imports `file` and queues its verified release for the update loop.
fn import_bundle(
    source: &TufSource,
    images: &StoreImages,
    arch: Arch,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
    file: &Path,
) -> Result<serde_json::Value, String> {
    let imported = source.import(file, images.store(), arch)?;
    tracing::info!(
        bundle = %file.display(),
        generation = imported.release.generation,
        blobs = imported.blobs_added,
        "bundle imported"
    );
    tx.try_send(imported.document.clone()).map_err(|_| {
        "the update loop is busy with earlier imports; import again in a moment".to_string()
    })?;
    Ok(serde_json::json!({
        "bundle": file.display().to_string(),
        "target": imported.target,
        "generation": imported.release.generation,
        "blobs_added": imported.blobs_added,
        "bytes_added": imported.bytes_added,
        "blobs_present": imported.blobs_present,
    }))
}

/// Imports every new `*.bundle` file that appears in `dir` (a mounted USB
/// stick, say), checking every few seconds; a file is imported once per
/// size and modification time.
async fn watch_imports(
    dir: std::path::PathBuf,
    source: Arc<TufSource>,
    images: Arc<StoreImages>,
    arch: Arch,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut seen = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() || path.extension().is_none_or(|x| x != "bundle") {
                continue;
            }
            let key = (path.clone(), meta.len(), meta.modified().ok());
            if !seen.insert(key) {
                continue;
            }
            let (s, i, t, p) = (source.clone(), images.clone(), tx.clone(), path.clone());
            let r = tokio::task::spawn_blocking(move || import_bundle(&s, &i, arch, &t, &p)).await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(bundle = %path.display(), error = %e, "bundle refused")
                }
                Err(e) => {
                    tracing::warn!(bundle = %path.display(), error = %e, "bundle import failed")
                }
            }
        }
    }
}
