//! Benchmark driver for `bench/trust.sh` (not a test):
//!
//! - `trust_bench verify SECONDS` — ed25519 signature verifications per second on one
//!   core, through the same path the client uses (`PublicKey::verify` over a
//!   canonical `signed` object);
//! - `trust_bench refresh METADATA_URL ROOT STATE_DIR TARGET…` — trust ROOT, run a full
//!   refresh and look up each TARGET (walking the delegations); prints the time taken.

use std::time::{Duration, Instant};

use berth_trust::canonical;
use berth_trust::updater::{self, Config, Updater};
use berth_trust::{DirStore, DirTransport, HttpTransport, KeyType, PrivateKey, Transport};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("verify") => verify(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3)),
        Some("refresh") if args.len() >= 5 => refresh(&args[2], &args[3], &args[4], &args[5..]),
        _ => {
            eprintln!(
                "usage: trust_bench verify SECONDS | refresh METADATA_URL ROOT STATE_DIR TARGET…"
            );
            std::process::exit(2);
        }
    }
}

fn verify(seconds: u64) {
    let key = PrivateKey::generate(KeyType::Ed25519);
    let public = key.public();
    let signed = serde_json::json!({
        "_type": "timestamp", "spec_version": "1.0.31", "version": 42,
        "expires": "2030-01-01T00:00:00Z",
        "meta": {"snapshot.json": {"version": 42, "length": 1234,
            "hashes": {"sha256": "00".repeat(32)}}},
    });
    let msg = canonical::encode(&signed).expect("canonical");
    let sig = key.sign(&msg);
    let budget = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..256 {
            public.verify(&msg, &sig).expect("valid signature");
        }
        n += 256;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "ed25519 verify: {rate:.0}/s ({n} in {:.2} s, one core)",
        start.elapsed().as_secs_f64()
    );
}

fn refresh(url: &str, root: &str, state: &str, targets: &[String]) {
    let store = DirStore::open(std::path::Path::new(state)).expect("state dir");
    let root = std::fs::read(root).expect("root file");
    let start = Instant::now();
    updater::init(&store, &root).expect("trusted root");
    let transport: Box<dyn Transport> = if url.starts_with("http") {
        Box::new(HttpTransport::new(url, None, true).expect("transport"))
    } else {
        Box::new(DirTransport::new(std::path::Path::new(url)))
    };
    let mut up = Updater::new(
        &store,
        transport.as_ref(),
        None,
        Config::default(),
        updater::now(),
    )
    .expect("updater");
    up.refresh().expect("refresh");
    for t in targets {
        up.target_info(t).expect("target found");
    }
    println!(
        "berth refresh: {:.1} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
}
