//! A TCP proxy in front of the registry that counts, throttles and cuts the
//! byte stream at exact offsets.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy is told to do with the bytes it forwards.
#[derive(Debug, Default)]
struct ProxyState {
    /// Bytes forwarded client → server and server → client.
    up: u64,
    down: u64,
    /// Cut the connection that carries server → client byte number `n`
    /// (counted over all connections since the rule was set).
    cut_down_at: Option<u64>,
    /// Same for client → server bytes.
    cut_up_at: Option<u64>,
    /// After a cut, hold new connections until [`Proxy::resume`].
    pause_after_cut: bool,
    paused: bool,
    /// Cuts made so far.
    cuts: u32,
    /// Server → client rate limit, bytes/s.
    rate: Option<u64>,
    streams: Vec<TcpStream>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<ProxyState>,
    changed: Condvar,
    closed: AtomicBool,
}

/// A TCP proxy on a free loopback port forwarding to `127.0.0.1:upstream`
/// (TLS passes through untouched). It counts bytes in each direction, can
/// throttle the download direction, and can cut a connection after an exact
/// number of bytes — a drop in the middle of a blob, at a known offset.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if sh.closed.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let sh = sh.clone();
                thread::spawn(move || serve(client, upstream, sh));
            }
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts the connection carrying the `n`-th server → client byte from now;
    /// with `pause`, holds every new connection afterwards until `resume`.
    pub fn cut_down_after(&self, n: u64, pause: bool) {
        let mut s = self.shared.state.lock().expect("proxy state");
        s.cut_down_at = Some(s.down + n);
        s.pause_after_cut = pause;
    }

    /// Cuts the connection carrying the `n`-th client → server byte from now.
    pub fn cut_up_after(&self, n: u64) {
        let mut s = self.shared.state.lock().expect("proxy state");
        s.cut_up_at = Some(s.up + n);
        s.pause_after_cut = false;
    }

    /// Limits the server → client rate (None: full speed).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.state.lock().expect("proxy state").rate = bytes_per_sec;
    }

    /// Lets held connections through.
    pub fn resume(&self) {
        self.shared.state.lock().expect("proxy state").paused = false;
        self.shared.changed.notify_all();
    }

    /// (client → server, server → client) bytes forwarded so far.
    pub fn bytes(&self) -> (u64, u64) {
        let s = self.shared.state.lock().expect("proxy state");
        (s.up, s.down)
    }

    /// Cuts made so far.
    pub fn cuts(&self) -> u32 {
        self.shared.state.lock().expect("proxy state").cuts
    }

    /// Waits until `cond` holds over (cuts, down bytes), or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(u32, u64) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.state.lock().expect("proxy state");
        while !cond(s.cuts, s.down) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(50)))
                .expect("proxy state")
                .0;
        }
        true
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        {
            let mut s = self.shared.state.lock().expect("proxy state");
            s.paused = false;
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
    {
        let mut s = sh.state.lock().expect("proxy state");
        while s.paused && !sh.closed.load(Ordering::SeqCst) {
            s = sh.changed.wait(s).expect("proxy state");
        }
    }
    if sh.closed.load(Ordering::SeqCst) {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut s = sh.state.lock().expect("proxy state");
        s.streams.retain(|st| st.peer_addr().is_ok());
        for st in [&client, &server] {
            if let Ok(c) = st.try_clone() {
                s.streams.push(c);
            }
        }
    }
    let sh2 = sh.clone();
    let up = thread::spawn(move || pump(c2, s2, &sh2, false));
    pump(server, client, &sh, true);
    let _ = up.join();
}

/// Copies `from` → `to`, counting, throttling and cutting as told.
fn pump(mut from: TcpStream, mut to: TcpStream, sh: &Shared, down: bool) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (send, cut, delay) = {
            let mut s = sh.state.lock().expect("proxy state");
            let (count, at) = if down {
                (s.down, s.cut_down_at)
            } else {
                (s.up, s.cut_up_at)
            };
            let send = match at {
                Some(at) if count + n as u64 >= at => (at.saturating_sub(count)) as usize,
                _ => n,
            };
            let cut = send < n || at.is_some_and(|at| count + n as u64 == at);
            if down {
                s.down += send as u64;
            } else {
                s.up += send as u64;
            }
            if cut {
                if down {
                    s.cut_down_at = None;
                } else {
                    s.cut_up_at = None;
                }
                s.cuts += 1;
                s.paused = s.pause_after_cut;
            }
            let delay = match (down, s.rate) {
                (true, Some(r)) if r > 0 => Duration::from_secs_f64(send as f64 / r as f64),
                _ => Duration::ZERO,
            };
            (send, cut, delay)
        };
        sh.changed.notify_all();
        if to.write_all(&buf[..send]).is_err() {
            break;
        }
        if cut {
            break;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
