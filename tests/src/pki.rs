//! A throwaway PKI made with `openssl`: a CA, server certificates for
//! 127.0.0.1 and client certificates (CN = the client's identity).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

/// A certificate authority in a directory of PEM files.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub name: String,
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).expect("cert")
    }
    pub fn key_pem(&self) -> Vec<u8> {
        std::fs::read(&self.key).expect("key")
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = run(Command::new("openssl").current_dir(dir).args(args));
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Pki {
    /// A new CA named `name` (files `name-ca.pem`, `name-ca.key`) in `dir`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca()).expect("ca")
    }

    /// A server certificate valid for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Identity {
        self.issue(
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
    }

    /// A client certificate with CN = `name`.
    pub fn client(&self, name: &str) -> Identity {
        self.issue(
            name,
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
    }

    fn issue(&self, name: &str, ext: &str) -> Identity {
        let key = format!("{}-{name}.key", self.name);
        let csr = format!("{}-{name}.csr", self.name);
        let cert = format!("{}-{name}.pem", self.name);
        let extfile = format!("{}-{name}.ext", self.name);
        std::fs::write(self.dir.join(&extfile), ext).expect("ext");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
                // OpenSSL 3 writes PKCS#8 ("BEGIN PRIVATE KEY"), which every TLS stack reads.
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{}-ca.pem", self.name),
                "-CAkey",
                &format!("{}-ca.key", self.name),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &cert,
            ],
        );
        Identity {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}
