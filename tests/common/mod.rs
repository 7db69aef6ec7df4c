//! Helpers for integration tests: real `ringkv serve` processes on 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the `ringkv` binary cargo built for these tests (or `RINGKV_TEST_BIN`, to
/// run a test against another build, say the one before a fix).
pub fn bin() -> String {
    std::env::var("RINGKV_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringkv").to_string())
}

/// A small runtime for tests that call the Rust client or peer API.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits (bounded) until `ok` holds, polling every 200 ms.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ports this test process has handed out. Tests of one binary run side by side:
/// a port released by a node that is restarting in one test must not be given to
/// a node of another (CI once saw a rolling restart lose its UDP port that way).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Marks `ports` handed out; false if one already was.
fn claim(ports: std::ops::Range<u16>) -> bool {
    let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if ports.clone().any(|p| taken.contains(&p)) {
        return false;
    }
    taken.extend(ports);
    true
}

/// Whether `port` is free for TCP and UDP on 127.0.0.1 (a node binds both).
fn free_for_both(port: u16) -> bool {
    let a = format!("127.0.0.1:{port}");
    std::net::TcpListener::bind(&a).is_ok() && std::net::UdpSocket::bind(&a).is_ok()
}

/// A port free for TCP and UDP on 127.0.0.1 and never handed out before by this
/// test process (bound and released; good enough on loopback).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        if free_for_both(port) && claim(port..port + 1) {
            return port;
        }
    }
    panic!("no free port in 1000 tries");
}

/// The first of `k` consecutive ports free for TCP and UDP on 127.0.0.1, none
/// handed out before by this test process.
pub fn free_run(k: u16) -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let base = l.local_addr().expect("addr").port();
        drop(l);
        if base > u16::MAX - k {
            continue;
        }
        if (0..k).all(|i| free_for_both(base + i)) && claim(base..base + k) {
            return base;
        }
    }
    panic!("no run of {k} free ports");
}

/// A `ringkv serve` child process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    /// Flags every client command against it gets (a token, TLS).
    pub client_args: Vec<String>,
    log: PathBuf,
}

impl Server {
    /// Starts a node in `dir` with extra flags and waits until it answers.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_at(dir, &format!("127.0.0.1:{}", free_port()), extra)
    }

    /// As [`Server::start`], listening on `addr`.
    pub fn start_at(dir: &Path, addr: &str, extra: &[&str]) -> Server {
        Server::start_secure(dir, addr, extra, &[])
    }

    /// As [`Server::start_at`]; every client command against it gets `client`
    /// (say `--tls-ca` and `--token`), the readiness check too.
    pub fn start_secure(dir: &Path, addr: &str, extra: &[&str], client: &[String]) -> Server {
        let addr = addr.to_string();
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut s = Server {
            child: spawn(dir, &addr, &args),
            addr,
            dir: dir.to_path_buf(),
            args,
            client_args: client.to_vec(),
            log: dir.join("serve.log"),
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        if let Err(log) = self.wait_started() {
            panic!("server exited: {log}");
        }
    }

    /// Waits (bounded) until the server answers; its log if it exited first.
    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{status}: {}", self.log_text()));
            }
            let out = self.cli(&["status", "--json"]);
            // The answer must be this child's: another process may hold the port.
            if out.status.success() && matches!(self.child.try_wait(), Ok(None)) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a client command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--connect", &self.addr]);
        full.extend(self.client_args.iter().map(String::as_str));
        run_cli(&full, None)
    }

    /// Runs a client command with bytes on stdin.
    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--connect", &self.addr]);
        full.extend(self.client_args.iter().map(String::as_str));
        run_cli(&full, Some(stdin))
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }

    /// SIGSTOP: the process stays, frozen (a partition it cannot notice).
    pub fn pause(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status();
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
    }

    /// Starts the same node again on another address (same directory and flags).
    pub fn restart_at(&mut self, addr: &str) {
        self.addr = addr.to_string();
        self.restart();
    }

    /// Starts the same node again (same directory, address and flags).
    ///
    /// Its old port was free between the stop and this start, and a short-lived
    /// socket of another process (a client's outgoing connection) may hold it for
    /// a moment: a start that fails to bind is tried again, at most 5 times.
    pub fn restart(&mut self) {
        for attempt in 1..=5 {
            // The log is appended to: only this start's lines say why it failed.
            let from = self.log_text().len();
            self.child = spawn(&self.dir, &self.addr, &self.args);
            match self.wait_started() {
                Ok(()) => return,
                Err(_)
                    if attempt < 5
                        && self
                            .log_text()
                            .get(from..)
                            .is_some_and(|new| new.contains("Address already in use")) =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(log) => panic!("server exited: {log}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A paused process would not die of SIGKILL until resumed on some systems.
        self.resume();
        self.kill9();
    }
}

fn spawn(dir: &Path, addr: &str, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .expect("log file");
    Command::new(bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", addr])
        .args(if extra.iter().any(|a| a == "--http-listen") {
            &[][..]
        } else {
            &["--http-listen", "127.0.0.1:0"][..]
        })
        // No load balancer to wait for: stop at once unless a test says otherwise.
        .args(if extra.iter().any(|a| a == "--shutdown-delay") {
            &[][..]
        } else {
            &["--shutdown-delay", "0s"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn ringkv serve")
}

/// Runs the CLI with a bounded wait.
pub fn run_cli(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringkv");
    if let Some(data) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(data).expect("write stdin");
    }
    // Client commands carry their own deadlines; this only guards against a hang.
    // Output is collected on another thread so a full pipe cannot stall the child.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("ringkv {args:?} hung");
        }
    }
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// JSON from a successful `--json` command.
pub fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "command failed ({}): {}",
        code(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).expect("json output")
}

/// Makes `path` readable by its owner only (ringkv refuses a secret others can
/// read).
pub fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A cluster of real nodes sharing a secret, all seeded with the first.
pub struct Cluster {
    pub nodes: Vec<Server>,
    pub root: tempfile::TempDir,
    pub secret_file: PathBuf,
    pub extra: Vec<String>,
    /// Flags of every client command (a token, TLS).
    pub client: Vec<String>,
}

impl Cluster {
    /// Starts `k` nodes (`n1`..`nk`) with `extra` flags each.
    pub fn start(k: usize, extra: &[&str]) -> Cluster {
        Cluster::start_secure(k, extra, &[])
    }

    /// As [`Cluster::start`], with `client` given to every client command.
    pub fn start_secure(k: usize, extra: &[&str], client: &[String]) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let secret_file = root.path().join("secret");
        std::fs::write(&secret_file, "test cluster secret, 32 bytes!!\n").expect("secret");
        private(&secret_file);
        let mut c = Cluster {
            nodes: Vec::new(),
            root,
            secret_file,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            client: client.to_vec(),
        };
        for _ in 0..k {
            c.add();
        }
        c
    }

    /// Starts one more node, seeded with the first, and waits until it answers.
    pub fn add(&mut self) -> usize {
        let i = self.nodes.len() + 1;
        let dir = self.root.path().join(format!("n{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let id = format!("n{i}");
        let secret = self.secret_file.to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            id,
            "--cluster-secret-file".into(),
            secret,
            "--probe-ms".into(),
            "200".into(),
        ];
        if let Some(first) = self.nodes.first() {
            args.push("--seed".into());
            args.push(first.addr.clone());
        }
        args.extend(self.extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let addr = format!("127.0.0.1:{}", free_port());
        self.nodes
            .push(Server::start_secure(&dir, &addr, &refs, &self.client));
        self.nodes.len() - 1
    }

    /// `status --json` of node `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        json(&self.nodes[i].cli(&["status", "--json"]))
    }

    /// Waits (bounded) until every running node in `up` sees `members` active
    /// members, all alive, and one ring epoch; returns the epoch.
    pub fn wait_converged(&self, up: &[usize], members: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut epochs = Vec::new();
            let mut ok = true;
            for &i in up {
                let s = self.status(i);
                let m = s["members"].as_array().cloned().unwrap_or_default();
                let active = m
                    .iter()
                    .filter(|m| m["status"] == "active" && m["liveness"] == "alive")
                    .count();
                ok &= active == members;
                epochs.push(s["ring_epoch"].as_str().unwrap_or("").to_string());
            }
            epochs.dedup();
            if ok && epochs.len() == 1 && !epochs[0].is_empty() {
                return epochs.remove(0);
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge: epochs {epochs:?}; log of n1: {}",
                self.nodes[0].log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (bounded) until no node in `up` has hints pending.
    pub fn wait_hints_drained(&self, up: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pending: Vec<u64> = up
                .iter()
                .map(|&i| self.status(i)["hints_pending"].as_u64().unwrap_or(u64::MAX))
                .collect();
            if pending.iter().all(|&p| p == 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hints did not drain: {pending:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ring node 0 reports, rebuilt locally (ownership is a pure function of the
    /// active members), with its replica count.
    pub fn ring(&self) -> (ringkv::ring::Ring, usize) {
        let ring = json(&self.nodes[0].cli(&["ring", "--json"]));
        let members: Vec<ringkv::ring::Member> = ring["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["status"] == "active")
            .map(|m| ringkv::ring::Member {
                id: m["node_id"].as_str().expect("id").to_string(),
                zone: m["zone"].as_str().unwrap_or("").to_string(),
            })
            .collect();
        let size = ring["ring_size"].as_u64().expect("size") as u32;
        let n = ring["n"].as_u64().expect("n") as usize;
        (
            ringkv::ring::Ring::build(&members, size, n).expect("ring"),
            n,
        )
    }

    /// Ids of the primaries of `key`, computed from the ring node 0 reports.
    pub fn primaries(&self, key: &[u8]) -> Vec<String> {
        let (r, n) = self.ring();
        ringkv::cluster::walk_of(&r, ringkv::ring::partition_of(key, r.ring_size()), n).0
    }

    /// The cluster key, as the nodes derive it from the secret file.
    pub fn key(&self) -> ringkv_gossip::ClusterKey {
        let raw = std::fs::read(&self.secret_file).expect("secret");
        ringkv_gossip::ClusterKey::derive(raw.trim_ascii())
    }

    /// Sum of a repair counter over the nodes in `up`.
    pub fn repair_sum(&self, up: &[usize], counter: &str) -> u64 {
        up.iter()
            .map(|&i| self.status(i)["repair"][counter].as_u64().unwrap_or(0))
            .sum()
    }

    /// Index of node `id` (`n3` is 2).
    pub fn index(id: &str) -> usize {
        id.trim_start_matches('n')
            .parse::<usize>()
            .expect("node id")
            - 1
    }
}
pub mod docker;
