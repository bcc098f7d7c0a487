//! A TCP link between the devices and a lab peer: TLS passes through
//! untouched; the rig can partition it (every byte held, new connections
//! accepted but not forwarded, as when packets are dropped on the way) and
//! heal it, throttle the download direction, and read the bytes moved.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    partitioned: bool,
    /// Server → client bytes per second (None: full speed).
    rate: Option<u64>,
    up: u64,
    down: u64,
    connections: u64,
    streams: Vec<TcpStream>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks while partitioned; false once the link is closed.
    fn pass(&self) -> bool {
        let mut s = self.lock();
        while s.partitioned && !self.closed.load(Ordering::SeqCst) {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        !self.closed.load(Ordering::SeqCst)
    }
}

/// A link on a free loopback port to `127.0.0.1:upstream`.
#[derive(Debug)]
pub struct Link {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Link {
    pub fn start(upstream: u16) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name("berth-hil-link".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if sh.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let sh = sh.clone();
                    let _ = thread::Builder::new()
                        .stack_size(64 << 10)
                        .spawn(move || serve(client, upstream, sh));
                }
            })?;
        Ok(Link {
            port,
            shared,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn partition(&self, on: bool) {
        self.shared.lock().partitioned = on;
        self.shared.changed.notify_all();
    }

    /// Limits the download direction (None: full speed).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.lock().rate = bytes_per_sec;
    }

    /// (client → server bytes, server → client bytes, connections) so far.
    pub fn traffic(&self) -> (u64, u64, u64) {
        let s = self.shared.lock();
        (s.up, s.down, s.connections)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        {
            let mut s = self.shared.lock();
            for st in s.streams.drain(..) {
                let _ = st.shutdown(Shutdown::Both);
            }
        }
        self.shared.changed.notify_all();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(client: TcpStream, upstream: u16, sh: Arc<Shared>) {
    if !sh.pass() {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut s = sh.lock();
        s.connections += 1;
        s.streams.retain(|st| st.peer_addr().is_ok());
        for st in [&client, &server] {
            if let Ok(c) = st.try_clone() {
                s.streams.push(c);
            }
        }
    }
    let sh2 = sh.clone();
    let up = thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || pump(c2, s2, &sh2, false));
    pump(server, client, &sh, true);
    if let Ok(up) = up {
        let _ = up.join();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, sh: &Shared, down: bool) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !sh.pass() {
            break;
        }
        let delay = {
            let mut s = sh.lock();
            if down {
                s.down += n as u64;
            } else {
                s.up += n as u64;
            }
            match (down, s.rate) {
                (true, Some(r)) if r > 0 => Duration::from_secs_f64(n as f64 / r as f64),
                _ => Duration::ZERO,
            }
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_holds_bytes_until_healed() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = echo.local_addr().unwrap().port();
        thread::spawn(move || {
            for c in echo.incoming().flatten() {
                let mut w = c.try_clone().unwrap();
                let mut r = c;
                thread::spawn(move || std::io::copy(&mut r, &mut w));
            }
        });
        let link = Link::start(port).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", link.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 4];
        c.write_all(b"ping").unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        link.partition(true);
        c.write_all(b"lost").unwrap();
        assert!(c.read_exact(&mut b).is_err(), "nothing passes a partition");
        link.partition(false);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"lost", "held bytes flow once healed");
        let (up, down, conns) = link.traffic();
        assert_eq!((up, down, conns), (8, 8, 1));
    }
}
