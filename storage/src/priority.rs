//! Background work of the store yields the CPU to requests.
//!
//! A log merge reads and rewrites every live value, a core's worth of work for a
//! second or more. On a machine with few cores that starves request threads, as
//! fjall's flushes and compactions did before (workload A at a tenth of its
//! capacity had a p99 of 20-70 ms, every spike at a memtable flush). Like RocksDB's
//! option to lower its background threads' CPU priority, the merge thread runs at a
//! lower priority (nice 10): it still gets every idle cycle, and merges are not
//! urgent (they only reclaim disk space).

/// Nice value given to the engine's threads.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the CPU priority of this process's threads whose name starts with
/// `prefix`; returns how many. Best effort: a thread that cannot be changed keeps
/// its priority (nothing is wrong, only slower to yield).
pub fn lower_threads(prefix: &str) -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        let mut lowered = 0;
        for task in tasks.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::id_t>() else {
                continue;
            };
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
            // SAFETY: setpriority takes plain integers and touches no memory; on
            // Linux PRIO_PROCESS with a thread id applies to that thread alone.
            let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE) };
            if rc == 0 {
                lowered += 1;
            }
        }
        lowered
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = prefix;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn lowers_named_threads_only() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (report, reported) = std::sync::mpsc::channel::<i32>();
        let t = std::thread::Builder::new()
            .name("prio-test-bg".into())
            .spawn(move || {
                let _ = wait.recv();
                // SAFETY: reads this thread's own priority; no memory involved.
                let _ = report.send(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
            })
            .expect("spawn");
        // The new thread names itself once it runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lower_threads("prio-test-bg") == 0 {
            assert!(std::time::Instant::now() < deadline, "thread never found");
            std::thread::yield_now();
        }
        assert_eq!(lower_threads("no-such-thread-name"), 0);
        go.send(()).expect("go");
        assert_eq!(reported.recv().expect("report"), BACKGROUND_NICE);
        t.join().expect("join");
    }
}
