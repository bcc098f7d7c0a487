//! A container's output: pumped into its rotating log files by a thread of
//! this process or by a detached helper, or nowhere (`/dev/null`).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

use super::Output;
use crate::error::RuntimeError;
use crate::logs::{self, RotatingLog};

pub(super) fn null() -> Result<OwnedFd, RuntimeError> {
    Ok(fs::File::open("/dev/null")
        .map_err(RuntimeError::Io)?
        .into())
}

/// The log pump of a container.
#[derive(Debug)]
pub(super) enum Pump {
    Thread(JoinHandle<io::Result<u64>>),
    Process,
}

pub(super) fn start_pump(
    read: OwnedFd,
    log: RotatingLog,
    output: Output,
) -> Result<Pump, RuntimeError> {
    match output {
        Output::Logs { tee } => Ok(Pump::Thread(
            crate::sys::spawn_shielded(move || {
                let file = fs::File::from(read);
                if tee {
                    logs::pump(Tee(file), log)
                } else {
                    logs::pump(file, log)
                }
            })
            .map_err(RuntimeError::Io)?,
        )),
        Output::LogsDetached => {
            let keep = [read.as_raw_fd(), log.as_raw_fd()];
            crate::sys::spawn_detached(&keep, move || {
                let _ = logs::pump(fs::File::from(read), log);
            })
            .map_err(RuntimeError::Io)?;
            Ok(Pump::Process)
        }
        Output::Inherit => unreachable!("no pump for inherited output"),
    }
}

/// Reads from a file and copies what it read to stdout.
struct Tee(fs::File);

impl io::Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        let _ = io::Write::write_all(&mut io::stdout().lock(), &buf[..n]);
        Ok(n)
    }
}
