//! The watchdog: a thread that pets the watchdog device (`/dev/watchdog`,
//! or any file standing in for it) every `interval` — but only while the
//! agent's main loop is alive, i.e. its last [`super::beat`] is at most
//! `stall` old. A stuck reconciler (or a loop that stopped turning) stops
//! the petting, and the hardware resets the device.
//!
//! Each pet writes one byte (`.`); a clean stop writes the magic `V` first
//! when `magic_close` is set, so a planned agent stop does not reset the
//! device (where the driver allows it: `nowayout` off).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The watchdog device cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("watchdog {path}: {reason}; check watchdog.device in agent.toml")]
pub struct WatchdogError {
    pub path: PathBuf,
    pub reason: String,
}

/// How to pet.
#[derive(Debug, Clone)]
pub struct Settings {
    pub device: PathBuf,
    pub interval: Duration,
    pub stall: Duration,
    pub magic_close: bool,
}

/// The petting thread; stops (and disarms, if configured) on drop.
#[derive(Debug)]
pub struct Pacemaker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn open(path: &Path) -> Result<std::fs::File, WatchdogError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WatchdogError {
            path: path.to_path_buf(),
            reason: format!("cannot open for writing: {e}"),
        })
}

impl Pacemaker {
    /// Opens the device (arming it) and starts petting.
    pub fn start(s: Settings) -> Result<Pacemaker, WatchdogError> {
        let mut file = open(&s.device)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("berth-watchdog".into())
            .spawn(move || {
                let mut stalled = false;
                let mut failing = false;
                while !flag.load(Ordering::Acquire) {
                    let idle = super::since_beat();
                    if idle <= s.stall {
                        if stalled {
                            tracing::info!("main loop alive again: petting the watchdog");
                            stalled = false;
                        }
                        match file.write_all(b".").and_then(|()| file.flush()) {
                            Ok(()) => failing = false,
                            Err(e) if !failing => {
                                tracing::error!(device = %s.device.display(), error = %e, "cannot pet the watchdog");
                                failing = true;
                            }
                            Err(_) => {}
                        }
                    } else if !stalled {
                        tracing::error!(
                            stalled_s = idle.as_secs(),
                            device = %s.device.display(),
                            "the main loop made no progress: no longer petting the watchdog (the device resets)"
                        );
                        stalled = true;
                    }
                    std::thread::park_timeout(s.interval);
                }
                if s.magic_close && !stalled {
                    let _ = file.write_all(b"V").and_then(|()| file.flush());
                }
            })
            .map_err(|e| WatchdogError {
                path: PathBuf::new(),
                reason: format!("cannot start its thread: {e}"),
            })?;
        Ok(Pacemaker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Pacemaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_pets_a_stand_in_file_and_disarms_on_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("watchdog");
        let e = Pacemaker::start(Settings {
            device: f.clone(),
            interval: Duration::from_millis(20),
            stall: Duration::from_secs(3600),
            magic_close: true,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("watchdog.device") && e.contains("watchdog"),
            "{e}"
        );
        std::fs::write(&f, "").unwrap();
        super::super::beat();
        let p = Pacemaker::start(Settings {
            device: f.clone(),
            interval: Duration::from_millis(20),
            stall: Duration::from_secs(3600),
            magic_close: true,
        })
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read(&f).unwrap().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(p);
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.len() >= 4 && text.ends_with('V'), "{text:?}");
        assert!(
            text[..text.len() - 1].bytes().all(|b| b == b'.'),
            "{text:?}"
        );
    }
}
