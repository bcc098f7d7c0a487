//! The checks of a run: exactly the old or the new generation with all
//! its workloads (and no other container), and volume data kept across a
//! power cut.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{lock, Runner, StepResult, OLD_HOLDS};
use crate::scenario::Settled;

impl Runner<'_> {
    fn expected(&self, g: u64) -> BTreeSet<String> {
        self.gens
            .get(&g)
            .map(|r| {
                self.scenario.releases[r]
                    .workloads
                    .iter()
                    .map(|w| w.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `s` is exactly generation `g` with all its workloads running
    /// (and, unless `any_phase`, no update under way).
    fn runs_exactly(&self, s: &serde_json::Value, g: u64, any_phase: bool) -> bool {
        let names: BTreeSet<String> = s["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["status"] == "running")
            .filter_map(|w| w["name"].as_str().map(str::to_string))
            .collect();
        let all = s["workloads"].as_array().map_or(0, Vec::len);
        (any_phase || s["phase"] == "idle")
            && s["current"].as_u64() == Some(g)
            && names == self.expected(g)
            && all == names.len()
    }

    pub(super) fn expect(&mut self, want: Settled, timeout: Duration, hold_s: u64) -> StepResult {
        let newest = self.next_gen.saturating_sub(1);
        for i in 0..self.stations.len() {
            let old = self.track[i].settled;
            let ok_gens: Vec<u64> = match want {
                Settled::OldOrNew => vec![old, newest],
                Settled::New => vec![newest],
                Settled::Old => vec![old],
            };
            let deadline = Instant::now() + timeout;
            let mut last = None;
            let mut on_old = None;
            let g = loop {
                let s = lock(&self.stations[i].dev).status();
                if let Some(s) = &s {
                    // Still on the old generation may mean an update is
                    // under way (or retried): any phase will do then.
                    let any = want == Settled::Old;
                    match ok_gens.iter().find(|g| self.runs_exactly(s, **g, any)) {
                        // The old generation is final only once it held
                        // for a moment (a restarted agent refreshes first).
                        Some(g) if *g == old && old != newest && want == Settled::OldOrNew => {
                            let since = *on_old.get_or_insert_with(Instant::now);
                            if since.elapsed() >= OLD_HOLDS {
                                break *g;
                            }
                        }
                        Some(g) => break *g,
                        None => on_old = None,
                    }
                }
                if s.is_some() {
                    last = s;
                }
                if Instant::now() >= deadline {
                    self.metrics.bad_states += 1;
                    let d = lock(&self.stations[i].dev);
                    return Err(format!(
                        "device {} is in a bad state: not exactly generation {ok_gens:?} with all its workloads after {} s; last status {}\n{}",
                        d.id,
                        timeout.as_secs(),
                        last.map_or("none (agent down)".into(), |v| v.to_string()),
                        d.log_tail(20)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if let Some(t) = self.track[i].restored_at.take() {
                let settled_at = on_old.filter(|_| g == old).unwrap_or_else(Instant::now);
                self.metrics
                    .recoveries
                    .push(settled_at.saturating_duration_since(t));
            }
            // Nothing else runs: the runtime knows exactly these containers.
            let have: BTreeSet<String> = lock(&self.stations[i].dev)
                .containers()
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            if have != self.expected(g) {
                self.metrics.bad_states += 1;
                return Err(format!(
                    "generation {g} runs, but the runtime holds containers {have:?} instead of {:?}",
                    self.expected(g)
                ));
            }
            if old == 0 || old == newest {
                // No update was pending: nothing landed.
            } else if g == newest {
                self.metrics.landed_new += 1;
            } else {
                self.metrics.landed_old += 1;
            }
            self.track[i].settled = g;
        }
        if hold_s > 0 {
            let until = Instant::now() + Duration::from_secs(hold_s);
            while Instant::now() < until {
                for (i, st) in self.stations.iter().enumerate() {
                    let g = self.track[i].settled;
                    let s = lock(&st.dev).status();
                    let any = want == Settled::Old;
                    if !s.as_ref().is_some_and(|s| self.runs_exactly(s, g, any)) {
                        self.metrics.bad_states += 1;
                        return Err(format!(
                            "generation {g} did not hold for {hold_s} s: {}",
                            s.map_or("agent down".into(), |v| v.to_string())
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(())
    }

    pub(super) fn snapshot_volumes(&mut self) {
        for (i, st) in self.stations.iter().enumerate() {
            let d = lock(&st.dev);
            let mut snap = BTreeMap::new();
            let root = d.state.join("volumes");
            for w in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                for v in std::fs::read_dir(w.path()).into_iter().flatten().flatten() {
                    let key = (
                        w.file_name().to_string_lossy().to_string(),
                        v.file_name().to_string_lossy().to_string(),
                    );
                    let files: BTreeMap<PathBuf, Vec<u8>> = std::fs::read_dir(v.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|f| f.path().is_file())
                        .filter_map(|f| Some((f.path(), std::fs::read(f.path()).ok()?)))
                        .collect();
                    snap.insert(key, files);
                }
            }
            self.track[i].snapshot = snap;
        }
    }

    pub(super) fn check_volume(&mut self, workload: &str, volume: &str) -> StepResult {
        for (i, st) in self.stations.iter().enumerate() {
            let key = (workload.to_string(), volume.to_string());
            let Some(files) = self.track[i].snapshot.get(&key) else {
                return Err(format!(
                    "no snapshot of volume {volume} of {workload}: check_volume follows a cut_power of a device running it"
                ));
            };
            let dir = lock(&st.dev).volume(workload, volume);
            if files.is_empty() {
                return Err(format!(
                    "volume {} held no data at the cut; give the workload time to write first",
                    dir.display()
                ));
            }
            for (p, before) in files {
                let now = std::fs::read(p).unwrap_or_default();
                let kept = before.iter().zip(&now).take_while(|(a, b)| a == b).count();
                let lost = (before.len() - kept) as u64;
                self.metrics.volume_bytes_checked += before.len() as u64;
                if lost > 0 {
                    self.metrics.volume_bytes_lost += lost;
                    return Err(format!(
                        "{}: {lost} of the {} bytes it held at the cut are lost or changed",
                        p.display(),
                        before.len()
                    ));
                }
            }
        }
        Ok(())
    }
}
