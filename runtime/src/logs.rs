//! Container output in size-capped, rotating files.
//!
//! A container's stdout and stderr share one pipe; a pump copies it into
//! `<dir>/<id>.log`. When the current file would pass `max_bytes` it is
//! rotated to `<id>.log.1` (older files shift up) and files beyond
//! `max_files` are deleted, so one container never holds more than
//! `max_bytes * max_files` bytes of flash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Bounds of a container's log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 20,
            max_files: 3,
        }
    }
}

/// A writer that rotates files at a size bound.
#[derive(Debug)]
pub struct RotatingLog {
    base: PathBuf,
    limits: LogLimits,
    file: File,
    written: u64,
}

impl RotatingLog {
    /// Opens (appending to) `<dir>/<id>.log`.
    pub fn open(dir: &Path, id: &str, limits: LogLimits) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let base = dir.join(format!("{id}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&base)?;
        let written = file.metadata()?.len();
        Ok(Self {
            base,
            limits: LogLimits {
                max_bytes: limits.max_bytes.max(1),
                max_files: limits.max_files.max(1),
            },
            file,
            written,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.base.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.max_files - 1;
        if keep == 0 {
            self.file.set_len(0)?;
            self.written = 0;
            return Ok(());
        }
        let _ = fs::remove_file(self.rotated(keep));
        for n in (1..keep).rev() {
            let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        fs::rename(&self.base, self.rotated(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.base)?;
        self.written = 0;
        Ok(())
    }
}

impl std::os::fd::AsRawFd for RotatingLog {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Write for RotatingLog {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            if self.written >= self.limits.max_bytes {
                self.rotate()?;
            }
            let room = (self.limits.max_bytes - self.written) as usize;
            let n = room.min(buf.len());
            self.file.write_all(&buf[..n])?;
            self.written += n as u64;
            buf = &buf[n..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copies `input` into `log` until end of file.
pub fn pump(mut input: impl Read, mut log: RotatingLog) -> io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        log.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// All retained output of `id`, oldest first.
pub fn read_all(dir: &Path, id: &str) -> io::Result<Vec<u8>> {
    let base = dir.join(format!("{id}.log"));
    let mut files = Vec::new();
    for n in (1..1000).rev() {
        let mut p = base.clone().into_os_string();
        p.push(format!(".{n}"));
        if Path::new(&p).exists() {
            files.push(PathBuf::from(p));
        }
    }
    let mut out = Vec::new();
    let mut found = !files.is_empty();
    files.push(base.clone());
    for f in files {
        match File::open(&f) {
            Ok(mut file) => {
                found = true;
                file.read_to_end(&mut out)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !found {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no logs for '{id}' in {}", dir.display()),
        ));
    }
    Ok(out)
}

/// Removes every log file of `id`.
pub fn remove(dir: &Path, id: &str) {
    let _ = fs::remove_file(dir.join(format!("{id}.log")));
    for n in 1..1000 {
        if fs::remove_file(dir.join(format!("{id}.log.{n}"))).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_bounds_bytes_and_keeps_newest() {
        let d = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_bytes: 100,
            max_files: 3,
        };
        let log = RotatingLog::open(d.path(), "c", limits).unwrap();
        let input: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(pump(&input[..], log).unwrap(), 1000);
        let total: u64 = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(total, 300);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 3);
        assert_eq!(read_all(d.path(), "c").unwrap(), &input[700..]);
        remove(d.path(), "c");
        assert!(read_all(d.path(), "c").is_err());
    }

    #[test]
    fn reopen_appends() {
        let d = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_bytes: 10,
            max_files: 2,
        };
        pump(
            &b"hello"[..],
            RotatingLog::open(d.path(), "c", limits).unwrap(),
        )
        .unwrap();
        pump(
            &b" world!"[..],
            RotatingLog::open(d.path(), "c", limits).unwrap(),
        )
        .unwrap();
        assert_eq!(read_all(d.path(), "c").unwrap(), b"hello world!");
    }
}
