//! A real Mosquitto broker on loopback: TLS only, client certificates
//! required (the certificate's CN is the MQTT user name).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::pki::{free_port, wait_for_port, Identity, Pki};

/// A running broker; stopped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    pub pki: Pki,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker with a fresh PKI in `dir`.
    pub fn start(dir: &std::path::Path) -> Mosquitto {
        let pki = Pki::new(&dir.join("pki"), "mqtt");
        let server = pki.server("broker");
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n\
                 user root\n\
                 persistence false\n\
                 log_dest file {log}\n\
                 log_type error\nlog_type warning\nlog_type notice\n\
                 max_queued_messages 1000\n\
                 listener {port} 127.0.0.1\n\
                 cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 allow_anonymous false\n",
                log = dir.join("mosquitto.log").display(),
                ca = pki.ca().display(),
                cert = server.cert.display(),
                key = server.key.display(),
            ),
        )
        .expect("mosquitto.conf");
        let mut m = Mosquitto {
            port,
            pki,
            dir: dir.to_path_buf(),
            child: None,
        };
        m.restart();
        m
    }

    /// (Re)starts the broker process on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("mosquitto.stderr"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("mosquitto is installed (tests/run.sh installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto");
    }

    /// Stops the broker (all connections drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client identity issued by the broker's CA.
    pub fn client(&self, name: &str) -> Identity {
        self.pki.client(name)
    }

    fn tls_args(&self, id: &Identity) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "--cafile".into(),
            self.pki.ca().display().to_string(),
            "--cert".into(),
            id.cert.display().to_string(),
            "--key".into(),
            id.key.display().to_string(),
        ]
    }

    /// `mosquitto_pub` as `id`; returns whether it succeeded.
    pub fn publish(&self, id: &Identity, topic: &str, payload: &str, retain: bool) -> bool {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(self.tls_args(id))
            .args(["-q", "1", "-t", topic, "-m", payload]);
        if retain {
            cmd.arg("-r");
        }
        crate::run(&mut cmd).status.success()
    }

    /// Reads the first message on `topic` (e.g. a retained one) as `id`.
    pub fn read_one(&self, id: &Identity, topic: &str) -> Option<String> {
        let o = crate::run(
            Command::new("mosquitto_sub")
                .args(self.tls_args(id))
                .args(["-t", topic, "-C", "1", "-W", "5"]),
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
