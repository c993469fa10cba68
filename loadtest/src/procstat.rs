//! CPU time and resident memory of processes and threads, read from
//! `/proc` (Linux only; `None` elsewhere or when `/proc` is unreadable).
//!
//! On a small shared machine deliveries per second swing with whatever else
//! runs; CPU time per delivery is the steadier figure. Resident memory of
//! the dispatcher is one of the load tester's targets.

use std::fs;
use std::time::Duration;

/// `/proc` reports times in clock ticks of `USER_HZ`, which Linux fixes at
/// 100 on every mainstream architecture, whatever the kernel's own tick.
const USER_HZ: u64 = 100;

/// User plus system time of a process so far (exited threads included);
/// `None` for this process.
pub fn cpu(pid: Option<u32>) -> Option<Duration> {
    stat_cpu(&fs::read_to_string(proc_path(pid, "stat")).ok()?)
}

/// Resident set size of a process in bytes; `None` for this process.
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let status = fs::read_to_string(proc_path(pid, "status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The state letter of a process (`R`, `S`, `Z` for a zombie, ...).
pub fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(proc_path(Some(pid), "stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// User plus system time of the live threads of this process named `name`.
pub fn threads_named(name: &str) -> Option<Duration> {
    // `comm` holds at most 15 bytes of a thread's name.
    let want = &name.as_bytes()[..name.len().min(15)];
    let mut total = Duration::ZERO;
    for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end().as_bytes() == want {
            if let Some(t) = fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| stat_cpu(&s))
            {
                total += t;
            }
        }
    }
    Some(total)
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// `utime + stime` of a `/proc/.../stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn stat_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 14 is utime
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 1 2 3";
        assert_eq!(stat_cpu(line), Some(Duration::from_millis(1750)));
    }

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        if !cfg!(target_os = "linux") {
            return;
        }
        assert!(rss_bytes(None).unwrap() > 1 << 20);
        // The test harness's main thread sleeps while this one runs.
        assert!(matches!(state(std::process::id()), Some('R' | 'S')));
        // Ticks are 10 ms: spin until one has been counted.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu(None).unwrap_or_default().is_zero() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no CPU time counted"
            );
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        }
    }
}
