//! A workload's last output, for failure reasons: the tail of the
//! runtime's rotating log files (`<runtime root>/logs/<id>.log`, older
//! output in `<id>.log.1`), bounded and made safe to show in a terminal, a
//! JSON document or an MQTT message.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

/// Lines kept from the end of the output.
pub const TAIL_LINES: usize = 5;
/// Characters kept (after escaping) from the end of the output.
pub const TAIL_CHARS: usize = 1024;
/// Bytes read from the end of each log file.
const READ: u64 = 4096;

/// The last bytes of the current log file and, if it holds fewer than
/// [`READ`], of the rotated one before it.
fn raw_tail(dir: &Path, id: &str) -> Option<Vec<u8>> {
    let current = dir.join(format!("{id}.log"));
    let mut out = read_end(&current, READ)?;
    if (out.len() as u64) < READ {
        let older = dir.join(format!("{id}.log.1"));
        if let Some(mut before) = read_end(&older, READ - out.len() as u64) {
            before.append(&mut out);
            out = before;
        }
    }
    Some(out)
}

fn read_end(path: &Path, n: u64) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n))).ok()?;
    let mut buf = Vec::with_capacity(n.min(len) as usize);
    f.take(n).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The size of the current log file (0 when there is none).
fn log_len(dir: &Path, id: &str) -> u64 {
    std::fs::metadata(dir.join(format!("{id}.log"))).map_or(0, |m| m.len())
}

/// The last output of container `id`, once the log pump has written what
/// the container left in its pipe: waits (at most `settle`) until the log
/// stops growing. Empty when it printed nothing; `None` when it has no log.
pub fn last_output(dir: &Path, id: &str, settle: Duration) -> Option<String> {
    let deadline = Instant::now() + settle;
    let mut len = log_len(dir, id);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(30));
        let now = log_len(dir, id);
        if now == len {
            break;
        }
        len = now;
    }
    let raw = raw_tail(dir, id)?;
    Some(summarize(&raw, TAIL_LINES, TAIL_CHARS))
}

/// The last `lines` lines of `raw` (a trailing newline ends the last one),
/// each escaped ([`escape`]), joined with an escaped newline (`\n`, two
/// characters), cut to at most `chars` characters from the end (an
/// ellipsis marks a cut).
pub fn summarize(raw: &[u8], lines: usize, chars: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let picked: Vec<String> = text
        .rsplit('\n')
        .take(lines)
        .map(escape)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let joined = picked.join("\\n");
    let n = joined.chars().count();
    if n <= chars {
        return joined;
    }
    let keep: String = joined.chars().skip(n - (chars - 1)).collect();
    format!("…{keep}")
}

/// `s` with control characters and invisible direction or width changers
/// escaped (`\t`, `\r`, `\u{1b}`, …), so that what a workload printed can
/// neither drive a terminal nor hide text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || hidden {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_kept_and_joined_with_an_escaped_newline() {
        let raw = b"one\ntwo\nthree\nfour\nfive\nsix\nseven\n";
        assert_eq!(summarize(raw, 5, 1024), "three\\nfour\\nfive\\nsix\\nseven");
        assert_eq!(summarize(b"no newline", 5, 1024), "no newline");
        assert_eq!(summarize(b"", 5, 1024), "");
        // An empty line inside the output is kept.
        assert_eq!(summarize(b"a\n\nb\n", 5, 1024), "a\\n\\nb");
    }

    #[test]
    fn control_characters_and_hidden_characters_are_escaped() {
        let raw = "red \u{1b}[31mALERT\u{1b}[0m\tcol\r\u{7}bell \u{202e}txt.exe\u{0}\n".as_bytes();
        assert_eq!(
            summarize(raw, 5, 1024),
            "red \\u{1b}[31mALERT\\u{1b}[0m\\tcol\\r\\u{7}bell \\u{202e}txt.exe\\u{0}"
        );
        // Bytes that are not UTF-8 become replacement characters.
        assert_eq!(
            summarize(b"bad \xff\xfe byte", 5, 1024),
            "bad \u{fffd}\u{fffd} byte"
        );
    }

    #[test]
    fn long_output_is_cut_from_the_start_with_a_mark() {
        let line = "x".repeat(3000);
        let s = summarize(format!("first\n{line}end\n").as_bytes(), 5, 1024);
        assert_eq!(s.chars().count(), 1024);
        assert!(s.starts_with('…') && s.ends_with("xend"), "{s}");
        // Escapes count after escaping.
        let s = summarize("\u{1}".repeat(500).as_bytes(), 5, 100);
        assert_eq!(s.chars().count(), 100);
    }

    #[test]
    fn the_tail_reads_the_rotated_file_when_the_current_one_is_short() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("w.log.1"), "old 1\nold 2\n").unwrap();
        std::fs::write(d.path().join("w.log"), "new 1\n").unwrap();
        assert_eq!(
            last_output(d.path(), "w", Duration::ZERO).unwrap(),
            "old 1\\nold 2\\nnew 1"
        );
        let big = format!("{}\nlast\n", "y".repeat(10_000));
        std::fs::write(d.path().join("w.log"), big).unwrap();
        let s = last_output(d.path(), "w", Duration::ZERO).unwrap();
        assert!(s.ends_with("y\\nlast") && !s.contains("old"), "{s}");
        assert_eq!(last_output(d.path(), "absent", Duration::ZERO), None);
        std::fs::write(d.path().join("empty.log"), "").unwrap();
        assert_eq!(last_output(d.path(), "empty", Duration::ZERO).unwrap(), "");
    }
}
