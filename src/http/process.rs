//! The process's own figures from /proc (Linux), as Prometheus' process metrics
//! name them. Missing figures (another OS, a restricted /proc) are left out.

/// CPU, memory, descriptors and start time of this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// The fields of /proc/self/stat after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let end = stat.rfind(')')?;
    Some(stat.get(end + 2..)?.split_whitespace().collect())
}

/// Seconds since the epoch the system booted at.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads what it can.
pub fn read() -> ProcessStats {
    let mut s = ProcessStats::default();
    let ticks = clock_ticks();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(f) = stat_fields(&stat)
    {
        // After the name: state is field 3 of proc(5), so index = field - 3.
        let num = |field: usize| f.get(field - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(u), Some(k)) = (num(14), num(15)) {
            s.cpu_seconds = Some((u + k) / ticks);
        }
        s.threads = num(20).map(|v| v as u64);
        s.virtual_bytes = num(23).map(|v| v as u64);
        s.resident_bytes = num(24).map(|v| v as u64 * page_size());
        if let (Some(start), Some(boot)) = (
            num(22),
            std::fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(boot_time),
        ) {
            s.start_time_seconds = Some(boot + start / ticks);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        s.open_fds = Some(dir.count() as u64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        s.max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat =
            "42 (ring kv) (x)) S 1 42 42 0 -1 4194304 1 0 0 0 250 150 0 0 20 0 7 0 1000 1024 300";
        let f = stat_fields(stat).expect("fields");
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "250", "utime");
        assert_eq!(f[20 - 3], "7", "threads");
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_has_figures_on_linux() {
        let s = read();
        if cfg!(target_os = "linux") {
            assert!(s.resident_bytes.is_some_and(|b| b > 0));
            assert!(s.open_fds.is_some_and(|n| n > 0));
            assert!(s.start_time_seconds.is_some_and(|t| t > 1.0e9));
        }
    }
}
