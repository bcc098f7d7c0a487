use super::*;

fn g(n: u64) -> Generation {
    Generation {
        number: n,
        digest: format!("sha256:{n:064}"),
        document: format!("{{\"generation\":{n}}}").into_bytes(),
    }
}

fn run(s: &State, events: Vec<Event>) -> State {
    events
        .into_iter()
        .fold(s.clone(), |s, e| s.next(e).unwrap().0)
}

fn update(s: &State, n: u64, healthy: bool) -> State {
    let mut ev = vec![
        Event::Release(g(n)),
        Event::Fetched,
        Event::SwitchBegun,
        Event::Switched { now_ms: 1 },
    ];
    if healthy {
        ev.push(Event::Healthy);
    } else {
        ev.push(Event::Unhealthy("web: health check failed".into()));
        ev.push(Event::RolledBack);
    }
    run(s, ev)
}

#[test]
fn a_healthy_update_commits_and_keeps_the_previous() {
    let s = update(&State::default(), 1, true);
    let s = update(&s, 2, true);
    assert_eq!(s.phase.0, Phase::Idle);
    assert_eq!(s.current.as_ref().unwrap().number, 2);
    assert_eq!(s.previous.as_ref().unwrap().number, 1);
}

#[test]
fn an_unhealthy_update_rolls_back_and_is_not_retried() {
    let s = update(&State::default(), 1, true);
    let s = update(&s, 2, false);
    assert_eq!(s.current.as_ref().unwrap().number, 1);
    assert_eq!(s.failed, Some(2));
    assert_eq!(
        s.next(Event::Release(g(2))).unwrap_err(),
        Refusal::AlreadyFailed(2)
    );
    let s = update(&s, 3, true);
    assert_eq!(s.current.as_ref().unwrap().number, 3);
}

#[test]
fn older_or_equal_generations_are_refused() {
    let s = update(&State::default(), 5, true);
    for n in [1, 5] {
        assert_eq!(
            s.next(Event::Release(g(n))).unwrap_err(),
            Refusal::NotNewer {
                offered: n,
                current: 5
            }
        );
    }
}

#[test]
fn a_newer_release_replaces_one_still_fetching_but_not_a_switch() {
    let s = run(&State::default(), vec![Event::Release(g(1))]);
    let s = run(&s, vec![Event::Release(g(2))]);
    assert_eq!(s.floor(), 2);
    let s = run(&s, vec![Event::Fetched]);
    assert!(matches!(
        s.next(Event::Release(g(3))).unwrap_err(),
        Refusal::Unexpected { .. }
    ));
}

#[test]
fn events_out_of_order_are_refused_without_change() {
    let s = State::default();
    for e in [
        Event::Fetched,
        Event::SwitchBegun,
        Event::Switched { now_ms: 0 },
        Event::Healthy,
        Event::RolledBack,
    ] {
        let err = s.next(e).unwrap_err();
        assert!(err.to_string().contains("while idle"), "{err}");
    }
}

#[test]
fn recovery_resumes_before_the_switch_and_rolls_back_after() {
    let base = update(&State::default(), 1, true);
    let steps = [
        (vec![Event::Release(g(2))], Recovery::ResumeFetch),
        (vec![Event::Fetched], Recovery::ResumeSwitch),
        (vec![Event::SwitchBegun], Recovery::RollBack { failed: 2 }),
        (
            vec![Event::Switched { now_ms: 0 }],
            Recovery::RollBack { failed: 2 },
        ),
    ];
    let mut s = base;
    for (events, want) in steps {
        s = run(&s, events);
        assert_eq!(s.recovery(), want, "after {:?}", s.phase.0.name());
        if matches!(want, Recovery::RollBack { .. }) {
            let r = s.interrupted().unwrap();
            let done = r.next(Event::RolledBack).unwrap().0;
            assert_eq!(done.current.as_ref().unwrap().number, 1);
            assert_eq!(done.failed, Some(2));
        }
    }
}

/// Opens the store, waiting for the previous handle's background flusher to
/// let go of the lock (a restart is a new process in production).
fn reopen(dir: &std::path::Path) -> UpdateStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match UpdateStore::open(dir) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn the_store_survives_a_reopen_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let events = [
        Event::Release(g(1)),
        Event::Fetched,
        Event::SwitchBegun,
        Event::Switched { now_ms: 10 },
        Event::Healthy,
        Event::Release(g(2)),
        Event::Fetched,
        Event::SwitchBegun,
        Event::Switched { now_ms: 20 },
        Event::Unhealthy("sensor exited with status 1".into()),
        Event::RolledBack,
    ];
    let mut expected = State::default();
    for (i, e) in events.into_iter().enumerate() {
        let store = reopen(dir.path());
        assert_eq!(store.load().unwrap(), expected, "step {i}");
        expected = store.apply(e, 1000 + i as u64).unwrap();
        drop(store);
    }
    let store = reopen(dir.path());
    let s = store.load().unwrap();
    assert_eq!(s.current.unwrap().number, 1);
    let h = store.history().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].outcome.generation, h[0].outcome.result.as_str()),
        (1, "committed")
    );
    assert_eq!(
        (h[1].outcome.generation, h[1].outcome.result.as_str()),
        (2, "rolled-back")
    );
    assert_eq!(h[1].outcome.reason, "sensor exited with status 1");
}

#[test]
fn a_refused_event_leaves_the_store_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = UpdateStore::open(dir.path()).unwrap();
    store.apply(Event::Release(g(3)), 1).unwrap();
    let before = store.load().unwrap();
    let err = store.apply(Event::Release(g(2)), 2).unwrap_err();
    assert!(err.to_string().contains("rollback protection"), "{err}");
    assert_eq!(store.load().unwrap(), before);
    assert!(store.history().unwrap().is_empty());
}
