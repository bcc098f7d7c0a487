//! A registry token service (the Docker token protocol) on loopback with TLS,
//! for a Distribution registry configured with `auth: token:`. It is a small
//! real HTTPS server (`token_service.py`, Debian's python3-jwt and
//! python3-cryptography) that checks Basic credentials, grants each user the
//! actions the configuration allows, and signs ES256 JWTs whose `x5c` chain
//! the registry verifies against its `rootcertbundle`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::pki::{free_port, wait_for_port, Pki};
use crate::registry::{PASSWORD, USER};

/// The `iss` claim the registry trusts.
pub const ISSUER: &str = "berth-test-token-issuer";
/// The `service` (token audience) the registry names in its challenge.
pub const SERVICE: &str = "berth-test-registry";
/// A user allowed to pull but not to push.
pub const READER: &str = "reader";
/// Its password.
pub const READER_PASSWORD: &str = "r3ader-pull-only";

/// The interpreter that has Debian's python3-jwt and python3-cryptography
/// (tests/run.sh installs them), whatever `python3` is first on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// A running token service; killed on drop.
#[derive(Debug)]
pub struct TokenService {
    pub port: u16,
    pub dir: PathBuf,
    signer_ca: PathBuf,
    config: PathBuf,
    settings: serde_json::Value,
    child: Option<Child>,
}

impl TokenService {
    /// Starts the service in `dir`, its HTTPS certificate issued by `tls`
    /// (the registry's CA, so one `--ca` serves both), its signing key and
    /// certificate from a CA of its own. Users: [`USER`] may pull and push,
    /// [`READER`] may only pull. Tokens last 300 s.
    pub fn start(dir: &Path, tls: &Pki) -> TokenService {
        std::fs::create_dir_all(dir).expect("token service dir");
        let server = tls.server("token");
        let signers = Pki::new(&dir.join("signer-pki"), "token-signer");
        let signer = signers.client("signer");
        let port = free_port();
        let settings = serde_json::json!({
            "port": port,
            "tls_cert": server.cert,
            "tls_key": server.key,
            "signing_key": signer.key,
            "signing_cert": signer.cert,
            "issuer": ISSUER,
            "service": SERVICE,
            "users": {
                USER: { "password": PASSWORD, "actions": ["pull", "push"] },
                READER: { "password": READER_PASSWORD, "actions": ["pull"] },
            },
            "expires_in": 300,
            "valid_for": 300,
            "issued_log": dir.join("issued.jsonl"),
        });
        let script = dir.join("token_service.py");
        std::fs::write(&script, include_str!("token_service.py")).expect("token service script");
        let mut t = TokenService {
            port,
            dir: dir.to_path_buf(),
            signer_ca: signers.ca(),
            config: dir.join("config.json"),
            settings,
            child: None,
        };
        t.write();
        let log = std::fs::File::create(dir.join("token.log"))
            .map(Stdio::from)
            .unwrap_or(Stdio::null());
        let child = Command::new(PYTHON)
            .arg(&script)
            .arg(&t.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/python3 is installed");
        t.child = Some(child);
        wait_for_port(port, "the token service");
        t
    }

    fn write(&self) {
        std::fs::write(
            &self.config,
            serde_json::to_vec_pretty(&self.settings).expect("token service config"),
        )
        .expect("token service config");
    }

    /// The realm the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    /// The CA of the token signing certificate: the registry's `rootcertbundle`.
    pub fn signer_ca(&self) -> &Path {
        &self.signer_ca
    }

    /// From now on, tokens tell the client they last `expires_in` seconds and
    /// carry an `exp` claim `valid_for` seconds ahead (negative: in the past;
    /// the registry adds 60 s of leeway for clock skew).
    pub fn set_lifetime(&mut self, expires_in: u64, valid_for: i64) {
        self.settings["expires_in"] = expires_in.into();
        self.settings["valid_for"] = valid_for.into();
        self.write();
    }

    /// Every token issued so far: `{user, scope: [..], access: [..], exp}`.
    pub fn issued(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("issued.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The service's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("token.log")).unwrap_or_default()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
