//! Memory and CPU of a process, read from `/proc` (Linux).
//!
//! - `VmHWM` of `/proc/<pid>/status`: the peak resident set size since the process
//!   started (the high-water mark), read while the process still runs;
//! - `VmRSS`: the resident set size now;
//! - fields 14 and 15 of `/proc/<pid>/stat` (`utime`, `stime`): CPU time in clock ticks.

use std::io;
use std::process::Command;

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)?;
    parse_status_kib(&text, field).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} has no {field} line (process exited?)"),
        )
    })
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// User plus system CPU time of the process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)?;
    parse_stat_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: cannot read utime/stime"),
        )
    })
}

fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after the last ')'. Field 3 (state) is the first one after it.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails, as on every
/// mainstream Linux).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// CPU time (user + system) this process has used so far, in seconds; 0 when
/// `/proc` cannot be read.
pub fn own_cpu_seconds(ticks_per_second: u64) -> f64 {
    cpu_ticks(std::process::id()).map_or(0.0, |t| t as f64 / ticks_per_second as f64)
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse() {
        let text = "Name:\tx\nVmPeak:\t  1000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(5120));
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(4096));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn stat_ticks_parse_with_spaces_in_the_name() {
        let text = "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 17 4 0 0 20 0 1 0 100 200 300";
        assert_eq!(parse_stat_ticks(text), Some(21));
    }

    #[test]
    fn our_own_process_is_readable() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmHWM").unwrap() > 0);
        assert!(status_kib(pid, "VmRSS").unwrap() > 0);
        cpu_ticks(pid).unwrap();
    }
}
