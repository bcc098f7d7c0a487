//! The agent's MQTT link against a real Mosquitto with TLS and client
//! certificates: notifications, retained state, last will, reconnection,
//! floods, and refused identities.

use std::time::Duration;

use berth_agent::link::{Link, LinkConfig, Notice, Notices, Topics};
use berth_tests::mosquitto::Mosquitto;
use berth_tests::pki::{Identity, Pki};
use tokio::sync::oneshot;

fn config(m: &Mosquitto, id: &Identity, device: &str) -> LinkConfig {
    LinkConfig {
        host: "127.0.0.1".into(),
        port: m.port,
        ca_pem: m.pki.ca_pem(),
        cert_pem: id.cert_pem(),
        key_pem: id.key_pem(),
        topics: Topics::new("berth", "pumps", device).unwrap(),
        keep_alive: Duration::from_secs(5),
        backoff: (Duration::from_millis(50), Duration::from_millis(400)),
    }
}

async fn next(rx: &mut Notices, want: fn(&Notice) -> bool) -> Notice {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let n = rx.recv().await.expect("link task ended");
            if want(&n) {
                return n;
            }
        }
    })
    .await
    .expect("the expected notice did not arrive within 15 s")
}

fn wait_retained(m: &Mosquitto, id: &Identity, topic: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = m.read_one(id, topic);
        if last.as_deref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{topic} is {last:?}, expected {want:?}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn link_receives_notifications_publishes_state_and_leaves_a_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path());
    let operator = m.client("operator");
    let device = m.client("gw-1");
    assert!(m.publish(
        &operator,
        "berth/fleets/pumps/timestamp",
        "{\"signed\":{}}",
        true
    ));
    let rt = rt();
    let (link, mut rx, task) = rt.block_on(async {
        let (link, mut rx, task) =
            Link::start(config(&m, &device, "gw-1"), std::future::pending()).unwrap();
        next(&mut rx, |n| *n == Notice::Connected).await;
        // The retained notification arrives on subscription.
        next(&mut rx, |n| *n == Notice::Refresh).await;
        (link, rx, task)
    });
    assert!(link.publish_state(b"{\"generation\":3}".to_vec()));
    wait_retained(
        &m,
        &operator,
        "berth/devices/gw-1/state",
        "{\"generation\":3}",
    );
    wait_retained(&m, &operator, "berth/devices/gw-1/status", "online");
    // A live notification triggers a refresh too.
    assert!(m.publish(&operator, "berth/fleets/pumps/timestamp", "{}", true));
    rt.block_on(next(&mut rx, |n| *n == Notice::Refresh));
    // Another fleet's notification does not reach this device.
    assert!(m.publish(&operator, "berth/fleets/fans/timestamp", "{}", true));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_none(),
        "a notification for another fleet arrived"
    );
    // A crash (no clean disconnect) leaves the last will: offline.
    task.abort();
    let _ = rt.block_on(task);
    wait_retained(&m, &operator, "berth/devices/gw-1/status", "offline");
}

#[test]
fn a_clean_shutdown_publishes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path());
    let operator = m.client("operator");
    let device = m.client("gw-2");
    let rt = rt();
    let (stop, stopped) = oneshot::channel::<()>();
    let (_link, _rx, task) = rt.block_on(async {
        let (link, mut rx, task) = Link::start(config(&m, &device, "gw-2"), async {
            let _ = stopped.await;
        })
        .unwrap();
        next(&mut rx, |n| *n == Notice::Connected).await;
        (link, rx, task)
    });
    wait_retained(&m, &operator, "berth/devices/gw-2/status", "online");
    stop.send(()).unwrap();
    rt.block_on(task).unwrap();
    wait_retained(&m, &operator, "berth/devices/gw-2/status", "offline");
}

#[test]
fn the_link_reconnects_after_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mosquitto::start(dir.path());
    let operator = m.client("operator");
    let device = m.client("gw-3");
    let rt = rt();
    let (_link, mut rx, _task) = rt.block_on(async {
        let (link, mut rx, task) =
            Link::start(config(&m, &device, "gw-3"), std::future::pending()).unwrap();
        next(&mut rx, |n| *n == Notice::Connected).await;
        (link, rx, task)
    });
    m.stop();
    let down = rt.block_on(next(&mut rx, |n| matches!(n, Notice::Down(_))));
    assert!(matches!(down, Notice::Down(_)));
    m.restart();
    rt.block_on(next(&mut rx, |n| *n == Notice::Connected));
    assert!(m.publish(&operator, "berth/fleets/pumps/timestamp", "{}", false));
    rt.block_on(next(&mut rx, |n| *n == Notice::Refresh));
}

#[test]
fn a_flood_of_notifications_coalesces_into_bounded_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path());
    let operator = m.client("operator");
    let device = m.client("gw-4");
    let rt = rt();
    let (link, mut rx, _task) = rt.block_on(async {
        let (link, mut rx, task) =
            Link::start(config(&m, &device, "gw-4"), std::future::pending()).unwrap();
        next(&mut rx, |n| *n == Notice::Connected).await;
        (link, rx, task)
    });
    // 2000 notifications in one burst, nobody reading the notices meanwhile.
    let payload = "x".repeat(512);
    let burst = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 2000); do echo {payload}; done | mosquitto_pub -h 127.0.0.1 -p {} --cafile {} --cert {} --key {} -q 0 -t berth/fleets/pumps/timestamp -l",
            m.port,
            m.pki.ca().display(),
            operator.cert.display(),
            operator.key.display()
        ))
        .status()
        .unwrap();
    assert!(burst.success());
    std::thread::sleep(Duration::from_millis(500));
    let mut pending = 0;
    while rx.try_recv().is_some() {
        pending += 1;
    }
    assert!(
        (1..=1).contains(&pending),
        "{pending} notices were queued for 2000 notifications (must coalesce to 1)"
    );
    // Outgoing: a full queue drops and counts instead of growing.
    let mut refused = 0;
    for i in 0..10_000 {
        if !link.publish_event(format!("{{\"n\":{i}}}").into_bytes()) {
            refused += 1;
        }
    }
    assert!(refused > 0, "10000 events never filled a queue of 64");
    assert_eq!(link.dropped(), refused);
}

#[test]
fn identities_the_broker_does_not_trust_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path());
    let rogue_ca = Pki::new(&dir.path().join("rogue"), "rogue");
    let rogue = rogue_ca.client("gw-5");
    let rt = rt();
    let (_link, mut rx, _task) = rt
        .block_on(async { Link::start(config(&m, &rogue, "gw-5"), std::future::pending()) })
        .unwrap();
    let down = rt.block_on(next(&mut rx, |n| matches!(n, Notice::Down(_))));
    let Notice::Down(why) = down else {
        unreachable!()
    };
    assert!(why.contains("TLS") && why.contains("certificate"), "{why}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !matches!(rx.try_recv(), Some(Notice::Connected)),
        "a device with a certificate from another CA connected"
    );
    // And a broker certificate from another CA is refused by the device.
    let mut cfg = config(&m, &m.client("gw-6"), "gw-6");
    cfg.ca_pem = rogue_ca.ca_pem();
    let (_l, mut rx2, _t) = rt
        .block_on(async { Link::start(cfg, std::future::pending()) })
        .unwrap();
    let down = rt.block_on(next(&mut rx2, |n| matches!(n, Notice::Down(_))));
    let Notice::Down(why) = down else {
        unreachable!()
    };
    assert!(why.contains("TLS"), "{why}");
    // Unusable TLS material is refused before any connection, naming the part.
    let mut bad = config(&m, &m.client("gw-7"), "gw-7");
    bad.key_pem = b"not a key".to_vec();
    let e = rt
        .block_on(async { Link::start(bad, std::future::pending()) })
        .unwrap_err();
    assert!(e.contains("device key"), "{e}");
}

#[test]
fn fleet_status_shows_every_reporting_device() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mosquitto::start(dir.path());
    let operator = m.client("operator");
    let a = m.client("gw-a");
    let state = |fleet: &str, g: u64| {
        format!("{{\"device\":\"x\",\"fleet\":\"{fleet}\",\"phase\":\"idle\",\"current\":{g},\"failed\":null,\"workloads\":[{{\"name\":\"sensor\",\"status\":\"running\"}}]}}")
    };
    assert!(m.publish(&a, "berth/devices/gw-a/state", &state("pumps", 3), true));
    assert!(m.publish(&a, "berth/devices/gw-a/status", "online", true));
    assert!(m.publish(&a, "berth/devices/gw-b/state", &state("fans", 9), true));
    let fleet = |extra: &[&str]| {
        let o = berth_tests::run(
            std::process::Command::new(berth_tests::bin("berth"))
                .args(["fleet", "status", "--broker"])
                .arg(format!("127.0.0.1:{}", m.port))
                .arg("--ca")
                .arg(m.pki.ca())
                .arg("--cert")
                .arg(&operator.cert)
                .arg("--key")
                .arg(&operator.key)
                .args(["--wait", "1"])
                .args(extra),
        );
        assert!(o.status.success(), "{}", berth_tests::text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = fleet(&[]);
    assert!(
        table.contains("gw-a") && table.contains("online") && table.contains("sensor:running"),
        "{table}"
    );
    assert!(table.contains("gw-b"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&fleet(&["--json", "--fleet", "pumps"])).unwrap();
    assert_eq!(json["gw-a"]["state"]["current"], 3);
    assert!(json.get("gw-b").is_none(), "{json}");
}
