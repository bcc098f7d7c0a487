//! Pure policies for flaky and hostile links: retry backoff, the minimum
//! transfer rate, and the digest + size verifier every fetched byte passes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use super::reference::Digest;

/// Exponential backoff with a cap and a deterministic per-attempt jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based): initial·2^attempt,
    /// capped, plus up to a quarter of it as jitter derived from `salt`.
    pub fn delay(&self, attempt: u32, salt: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let quarter = base.as_millis() as u64 / 4;
        let mix = salt
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(attempt).wrapping_mul(0xBF58_476D_1CE4_E5B9));
        let jitter = if quarter == 0 {
            0
        } else {
            (mix >> 17) % quarter
        };
        (base + Duration::from_millis(jitter)).min(self.max + self.max / 4)
    }
}

/// Enforces a minimum average rate over consecutive windows, so a peer that
/// trickles bytes (slow-retrieval attack) is cut off.
#[derive(Debug, Clone)]
pub struct RateGuard {
    min_bytes_per_sec: u64,
    window: Duration,
    window_start: Instant,
    bytes_at_start: u64,
}

impl RateGuard {
    pub fn new(min_bytes_per_sec: u64, window: Duration, now: Instant) -> Self {
        Self {
            min_bytes_per_sec,
            window,
            window_start: now,
            bytes_at_start: 0,
        }
    }

    /// How long to wait for the next chunk before the window is surely failed.
    pub fn stall_timeout(&self, now: Instant) -> Duration {
        (self.window_start + self.window).saturating_duration_since(now) + Duration::from_millis(50)
    }

    /// Records that `total` bytes have arrived by `now`; returns the observed
    /// rate (bytes/s) when a finished window fell below the minimum.
    pub fn observe(&mut self, now: Instant, total: u64) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < self.window {
            return Ok(());
        }
        let got = total.saturating_sub(self.bytes_at_start);
        let rate = (got as f64 / elapsed.as_secs_f64()) as u64;
        if self.min_bytes_per_sec > 0 && rate < self.min_bytes_per_sec {
            return Err(rate);
        }
        self.window_start = now;
        self.bytes_at_start = total;
        Ok(())
    }
}

/// Why fetched bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("more than the declared {declared} bytes arrived")]
    TooLong { declared: u64 },
    #[error("only {got} of the declared {declared} bytes arrived")]
    Truncated { got: u64, declared: u64 },
    #[error("the content hashes to {actual}, not the pinned {expected}")]
    Digest { expected: Digest, actual: Digest },
}

/// Proof that bytes hashed to the expected digest and had the declared size.
/// Only [`Verifier::finish`] makes one; the store commits a blob only with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    digest: Digest,
    size: u64,
}

impl Verified {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Streaming sha256 with the declared size as a hard cap. Its state survives
/// a dropped connection, so a fetch resumes from exactly what was verified.
#[derive(Debug, Clone)]
pub struct Verifier {
    expected: Digest,
    declared: u64,
    hasher: Sha256,
    received: u64,
}

impl Verifier {
    pub fn new(expected: Digest, declared: u64) -> Self {
        Self {
            expected,
            declared,
            hasher: Sha256::new(),
            received: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn declared(&self) -> u64 {
        self.declared
    }

    /// Accepts the next bytes, refusing anything past the declared size.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        let n = chunk.len() as u64;
        if self.received + n > self.declared {
            return Err(VerifyError::TooLong {
                declared: self.declared,
            });
        }
        self.hasher.update(chunk);
        self.received += n;
        Ok(())
    }

    /// Checks size and digest once every byte arrived.
    pub fn finish(&self) -> Result<Verified, VerifyError> {
        if self.received != self.declared {
            return Err(VerifyError::Truncated {
                got: self.received,
                declared: self.declared,
            });
        }
        let actual = Digest::from_hasher(self.hasher.clone());
        if actual != self.expected {
            return Err(VerifyError::Digest {
                expected: self.expected.clone(),
                actual,
            });
        }
        Ok(Verified {
            digest: actual,
            size: self.received,
        })
    }

    /// Starts over (the server ignored a Range request, or the content was bad).
    pub fn reset(&mut self) {
        self.hasher = Sha256::new();
        self.received = 0;
    }
}

/// Wraps a byte stream so every chunk passes `verifier` (digest + size cap)
/// before the consumer sees it.
pub fn verified<'a, S, E>(
    stream: S,
    verifier: &'a mut Verifier,
) -> impl Stream<Item = Result<Bytes, StreamError<E>>> + 'a
where
    S: Stream<Item = Result<Bytes, E>> + 'a,
{
    stream.map(move |r| {
        let b = r.map_err(StreamError::Transport)?;
        verifier.update(&b).map_err(StreamError::Verify)?;
        Ok(b)
    })
}

/// A failure inside a verified stream: the transport's, or the verifier's.
#[derive(Debug)]
pub enum StreamError<E> {
    Transport(E),
    Verify(VerifyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let d0 = b.delay(0, 1);
        assert!(d0 >= Duration::from_millis(100) && d0 < Duration::from_millis(126));
        let d3 = b.delay(3, 1);
        assert!(d3 >= Duration::from_millis(800) && d3 < Duration::from_millis(1001));
        for a in [10, 31, 1000] {
            let d = b.delay(a, 7);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2500),
                "{d:?}"
            );
        }
        assert_ne!(b.delay(4, 1), b.delay(4, 2), "salt changes the jitter");
        assert_eq!(b.delay(4, 9), b.delay(4, 9));
    }

    #[test]
    fn rate_guard_cuts_slow_peers() {
        let t0 = Instant::now();
        let mut g = RateGuard::new(1000, Duration::from_secs(1), t0);
        assert!(g.observe(t0 + Duration::from_millis(500), 10).is_ok());
        assert!(g.observe(t0 + Duration::from_secs(1), 2000).is_ok());
        let r = g.observe(t0 + Duration::from_secs(2), 2100);
        assert_eq!(r, Err(100));
        let g = RateGuard::new(0, Duration::from_secs(1), t0);
        assert!(g.stall_timeout(t0) >= Duration::from_secs(1));
        let mut g = RateGuard::new(0, Duration::from_secs(1), t0);
        assert!(g.observe(t0 + Duration::from_secs(5), 0).is_ok());
    }

    #[test]
    fn verifier_caps_size_and_checks_digest() {
        let data = b"hello world";
        let d = Digest::of(data);
        let mut v = Verifier::new(d.clone(), data.len() as u64);
        v.update(&data[..5]).unwrap();
        assert!(matches!(
            v.finish(),
            Err(VerifyError::Truncated { got: 5, .. })
        ));
        v.update(&data[5..]).unwrap();
        assert_eq!(v.finish().unwrap().digest(), &d);
        assert!(matches!(v.update(b"x"), Err(VerifyError::TooLong { .. })));
        let mut w = Verifier::new(d, data.len() as u64);
        w.update(b"hello_world").unwrap();
        assert!(matches!(w.finish(), Err(VerifyError::Digest { .. })));
        w.reset();
        assert_eq!(w.received(), 0);
    }

    #[tokio::test]
    async fn verified_stream_refuses_overlong_content() {
        let data = b"abcdef";
        let mut v = Verifier::new(Digest::of(data), 4);
        let chunks: Vec<Result<Bytes, ()>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"def")),
        ];
        let out: Vec<_> = verified(futures_util::stream::iter(chunks), &mut v)
            .collect::<Vec<_>>()
            .await;
        assert!(out[0].is_ok());
        assert!(matches!(
            out[1],
            Err(StreamError::Verify(VerifyError::TooLong { .. }))
        ));
    }
}
