//! The Python client (clients/python) against the binary cargo built: runs its
//! unittest suite, which starts a real 3-node cluster of that binary.
//! Skipped (with a line saying so) where python3 is absent.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on the whole Python run.
const LIMIT: Duration = Duration::from_secs(5 * 60);

#[test]
fn python_client_suite() {
    let root = env!("CARGO_MANIFEST_DIR");
    // As in tests/common: RINGKV_TEST_BIN runs the suite against another build.
    let bin = std::env::var("RINGKV_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringkv").to_string());
    let spawned = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "clients/python/tests",
            "-v",
        ])
        .current_dir(root)
        .env("RINGKV_BIN", &bin)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on a timeout the nodes it started go with it.
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("python client test skipped: python3 is absent");
            return;
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    // Read both pipes on threads: a full pipe must not stall the child.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                // SIGKILL to the group: python3 and every ringkv node it started.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("waiting for python3: {e}"),
        }
    };
    let output = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    match status {
        None => panic!(
            "the Python client tests did not finish in {} s\n{output}",
            LIMIT.as_secs()
        ),
        Some(s) if !s.success() => panic!("the Python client tests failed ({s})\n{output}"),
        Some(_) => println!("{output}"),
    }
}
