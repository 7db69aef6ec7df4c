//! Helpers for the container tests (tests/containers.rs): `docker` and
//! `docker-compose` commands with bounded waits, a compose project torn down on
//! drop (also on panic), and a tiny blocking HTTP/1.1 GET for the nodes' HTTP
//! listeners and Prometheus' API.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root (where deploy/ is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion, killing it after `limit`. Output is collected on
/// another thread, so a full pipe cannot stall the child.
pub fn run_for(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    run_with_stdin(cmd, Stdio::null(), limit)
}

/// As [`run_for`], with `stdin` (say a file) on the command's standard input.
pub fn run_with_stdin(cmd: &mut Command, stdin: Stdio, limit: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("{shown}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(format!("{shown} did not finish within {limit:?}"))
        }
    }
}

/// As [`run_for`], and the command must exit 0; returns its stdout.
pub fn must(cmd: &mut Command, limit: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run_for(cmd, limit).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker ARGS`, bounded by `limit`, must succeed; its stdout trimmed.
pub fn docker(args: &[&str], limit: Duration) -> String {
    must(Command::new("docker").args(args), limit)
        .trim()
        .to_string()
}

/// `docker ARGS`, bounded; the output whatever the exit code.
pub fn docker_try(args: &[&str], limit: Duration) -> Result<Output, String> {
    run_for(Command::new("docker").args(args), limit)
}

/// Whether a Docker daemon answers (`docker info`).
pub fn docker_available() -> bool {
    matches!(
        run_for(Command::new("docker").arg("info"), Duration::from_secs(30)),
        Ok(o) if o.status.success()
    )
}

/// A compose project: `docker-compose -p PROJECT -f FILE...` with the given
/// variables for the file's `${...}` substitutions (set on the docker-compose
/// process only, never in this process).
pub struct Compose {
    pub project: String,
    pub files: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl Compose {
    /// The command, without its subcommand.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-p").arg(&self.project);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(["--ansi", "never"]);
        // A developer's shell must not add files or profiles to the test's project.
        c.env_remove("COMPOSE_FILE").env_remove("COMPOSE_PROFILES");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `docker-compose ... ARGS`, which must succeed within `limit`; its stdout.
    pub fn run(&self, args: &[&str], limit: Duration) -> String {
        must(self.cmd().args(args), limit)
    }

    /// The id of the container of `service` (empty if there is none).
    pub fn container(&self, service: &str) -> String {
        self.run(&["ps", "-q", service], Duration::from_secs(60))
            .trim()
            .to_string()
    }
}

/// `docker inspect -f FORMAT ID`, trimmed.
pub fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, id], Duration::from_secs(30))
}

/// The networks a container is attached to.
pub fn networks_of(id: &str) -> Vec<String> {
    inspect(
        id,
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
    )
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// The container's IPv4 address on `network` (empty if not attached).
pub fn ip_on(id: &str, network: &str) -> String {
    inspect(
        id,
        &format!(
            "{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"
        ),
    )
}

/// The container's DNS aliases on `network`.
pub fn aliases_on(id: &str, network: &str) -> Vec<String> {
    let text = inspect(
        id,
        &format!(
            "{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{json .Aliases}}}}{{{{end}}}}"
        ),
    );
    serde_json::from_str::<Option<Vec<String>>>(&text)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// `healthy`, `unhealthy`, `starting`, or `none` (no healthcheck).
pub fn health_of(id: &str) -> String {
    inspect(
        id,
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
    )
}

/// Tears a compose project down when dropped (`down -v`, so its volumes and
/// network go too), after removing the extra containers and killing the child
/// processes registered with it; on a panic it first prints the nodes' logs.
pub struct Teardown {
    pub compose: Compose,
    /// Containers started outside compose on the project's network.
    pub containers: Mutex<Vec<String>>,
    /// Processes on the host (Prometheus).
    pub children: Mutex<Vec<Child>>,
    /// Images to remove at the end.
    pub images: Vec<String>,
}

impl Teardown {
    pub fn new(compose: Compose, images: Vec<String>) -> Teardown {
        Teardown {
            compose,
            containers: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            images,
        }
    }

    /// Registers a container to remove (with its anonymous volumes).
    pub fn container(&self, id: &str) {
        self.containers.lock().unwrap().push(id.to_string());
    }

    /// Removes a registered container now.
    pub fn remove_container(&self, id: &str) {
        let _ = docker_try(&["rm", "-f", "-v", id], Duration::from_secs(60));
        self.containers.lock().unwrap().retain(|c| c != id);
    }

    /// Registers a host process to kill.
    pub fn child(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Kills a registered process now (by its pid) and reaps it.
    pub fn kill_child(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let mut c = children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let started = Instant::now();
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        children.clear();
        drop(children);
        if std::thread::panicking()
            && let Ok(out) = run_for(
                self.compose
                    .cmd()
                    .args(["logs", "--no-color", "--tail", "150"]),
                Duration::from_secs(60),
            )
        {
            eprintln!(
                "--- compose logs (last 150 lines per node) ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let extra: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for id in extra {
            let _ = docker_try(&["rm", "-f", "-v", &id], Duration::from_secs(60));
        }
        match run_for(
            self.compose
                .cmd()
                .args(["down", "-v", "--remove-orphans", "-t", "10"]),
            Duration::from_secs(180),
        ) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "containers: docker-compose down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("containers: docker-compose down: {e}"),
        }
        for image in &self.images {
            let _ = docker_try(&["rmi", "-f", image], Duration::from_secs(60));
        }
        println!(
            "containers: project {} torn down in {:.1} s",
            self.compose.project,
            started.elapsed().as_secs_f64()
        );
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("not JSON ({e}): {}", self.text()))
    }
}

/// `GET path` on `addr` (`host:port`) over HTTP/1.1 with `Connection: close`,
/// everything bounded by `timeout`. Handles Content-Length, chunked and
/// read-to-close bodies.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<Response, String> {
    http_get_as(addr, path, timeout, None)
}

/// As [`http_get`], with `Authorization: Bearer TOKEN` if given.
pub fn http_get_as(
    addr: &str,
    path: &str,
    timeout: Duration,
    bearer: Option<&str>,
) -> Result<Response, String> {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let deadline = Instant::now() + timeout;
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let left = |d: Instant| {
        d.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("GET http://{addr}{path} timed out"))
    };
    s.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringkv-tests\r\nAccept: */*\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        s.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if let Some(r) = parse_response(&raw)? {
                    return Ok(r);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("GET http://{addr}{path}: {e}")),
        }
    }
    // The server closed: a body delimited by the close, or a truncated reply.
    match parse_response(&raw)? {
        Some(r) => Ok(r),
        None => {
            let (status, headers, head_len) = parse_head(&raw)?.ok_or_else(|| {
                format!("GET http://{addr}{path}: connection closed before a reply")
            })?;
            let framed = headers.iter().any(|(k, _)| {
                k.eq_ignore_ascii_case("content-length")
                    || k.eq_ignore_ascii_case("transfer-encoding")
            });
            if framed {
                return Err(format!("GET http://{addr}{path}: truncated body"));
            }
            Ok(Response {
                status,
                headers,
                body: raw[head_len..].to_vec(),
            })
        }
    }
}

type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(raw: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some((status, headers, end + 4)))
}

/// A complete response in `raw`, if there is one yet.
fn parse_response(raw: &[u8]) -> Result<Option<Response>, String> {
    let Some((status, headers, head_len)) = parse_head(raw)? else {
        return Ok(None);
    };
    let rest = &raw[head_len..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(eol) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_text = String::from_utf8_lossy(&rest[at..at + eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let data = at + eol + 2;
            if size == 0 {
                // The last chunk; trailers (none expected) end with an empty line.
                return Ok(Some(Response {
                    status,
                    headers,
                    body,
                }));
            }
            if rest.len() < data + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&rest[data..data + size]);
            at = data + size + 2;
        }
    }
    if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if rest.len() >= len {
            return Ok(Some(Response {
                status,
                headers,
                body: rest[..len].to_vec(),
            }));
        }
        return Ok(None);
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some(Response {
            status,
            headers,
            body: Vec::new(),
        }));
    }
    // Delimited by the close: wait for it.
    Ok(None)
}

/// `n` distinct free TCP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    // Keep the listeners open until all are chosen, so none repeats.
    let mut held = Vec::new();
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let p = l.local_addr().expect("addr").port();
        if !ports.contains(&p) {
            ports.push(p);
        }
        held.push(l);
    }
    ports
}

/// 32 random bytes from the kernel, as 64 hex digits.
pub fn random_hex32() -> String {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a cluster secret the image's user (10001) can read: mode 0600, owned
/// by 10001:10001 (compose bind-mounts the file as it is). Needs root, or
/// passwordless sudo.
pub fn write_secret(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, random_hex32()).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    if std::os::unix::fs::chown(path, Some(10001), Some(10001)).is_ok() {
        return Ok(());
    }
    let sudo = run_for(
        Command::new("sudo")
            .args(["-n", "chown", "10001:10001"])
            .arg(path),
        Duration::from_secs(30),
    );
    match sudo {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(format!(
            "cannot chown {} to 10001:10001 (run the test as root or with passwordless sudo)",
            path.display()
        )),
    }
}
