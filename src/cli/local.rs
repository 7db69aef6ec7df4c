//! A cluster of `ringkv serve` processes (this same binary) on 127.0.0.1, each with
//! its own port, data directory and log, all seeded with the first: what `ringkv
//! dev` runs, and what `ringkv bench --nodes K` benchmarks (and kills nodes of).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Failure;

/// Longest a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a (re)started node may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One node of the cluster.
struct Node {
    id: String,
    port: u16,
    child: Option<Child>,
}

/// The running cluster; dropping it stops every node.
pub struct LocalCluster {
    exe: PathBuf,
    data_dir: PathBuf,
    n: u8,
    nodes: Vec<Node>,
}

impl LocalCluster {
    /// Starts `count` nodes on ports `base_port..` with data under `data_dir`.
    ///
    /// # Errors
    /// A usage [`Failure`] for impossible settings, another for a node that could
    /// not be started (the others are stopped again).
    pub fn start(count: u16, base_port: u16, data_dir: &Path, n: u8) -> Result<Self, Failure> {
        if count == 0 || count > 64 {
            return Err(Failure::usage("--nodes must be between 1 and 64"));
        }
        if base_port == 0 || base_port.checked_add(count).is_none() {
            return Err(Failure::usage("--base-port leaves no room for the nodes"));
        }
        if n == 0 {
            return Err(Failure::usage("--n must be at least 1"));
        }
        let exe = std::env::current_exe()
            .map_err(|e| Failure::other(format!("cannot find the ringkv binary: {e}")))?;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Failure::other(format!("cannot create {}: {e}", data_dir.display())))?;
        let mut cluster = LocalCluster {
            exe,
            data_dir: data_dir.to_path_buf(),
            n: n.min(count.min(255) as u8),
            nodes: (0..count)
                .map(|i| Node {
                    id: format!("node-{}", i + 1),
                    port: base_port + i,
                    child: None,
                })
                .collect(),
        };
        for i in 0..cluster.nodes.len() {
            if let Err(e) = cluster.spawn(i) {
                cluster.stop_all();
                return Err(Failure::other(format!(
                    "cannot start {}: {e}",
                    cluster.nodes[i].id
                )));
            }
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let seed = format!("127.0.0.1:{}", self.nodes[0].port);
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join(format!("{}.log", node.id)))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", node.port))
            .arg("--data-dir")
            .arg(self.data_dir.join(&node.id))
            .arg("--node-id")
            .arg(&node.id)
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", node.port.saturating_add(80)))
            // Nothing routes to a development node but its own clients.
            .arg("--shutdown-delay")
            .arg("0s")
            .arg("--seed")
            .arg(&seed)
            .arg("--n")
            .arg(self.n.to_string())
            .arg("--insecure-dev")
            // A development cluster on loopback runs without TLS and tokens,
            // whatever the shell exports for clients of other clusters.
            .env_remove("RINGKV_TLS_CERT")
            .env_remove("RINGKV_TLS_KEY")
            .env_remove("RINGKV_TLS_CA")
            .env_remove("RINGKV_AUTH_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Address of every node.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// First port and last port.
    pub fn ports(&self) -> (u16, u16) {
        (
            self.nodes.first().map_or(0, |n| n.port),
            self.nodes.last().map_or(0, |n| n.port),
        )
    }

    /// Where data and logs live.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn index(&self, id: &str) -> Result<usize, String> {
        self.nodes.iter().position(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            format!("unknown node {id:?} (the nodes are {})", ids.join(", "))
        })
    }

    /// Whether `id` names a node of this cluster.
    ///
    /// # Errors
    /// A message naming the nodes there are.
    pub fn check_node(&self, id: &str) -> Result<(), String> {
        self.index(id).map(|_| ())
    }

    /// A node that exited by itself, if any (port and status).
    pub fn exited(&mut self) -> Option<(u16, ExitStatus)> {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Ok(Some(status)) = child.try_wait()
            {
                node.child = None;
                return Some((node.port, status));
            }
        }
        None
    }

    /// Waits until every running node answers and sees `count` active members.
    ///
    /// # Errors
    /// A message when they do not within a minute.
    pub async fn wait_formed(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let expected = self.nodes.len();
        let addrs = self.addresses();
        'retry: loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "the {expected} nodes did not form a cluster within a minute (logs in {})",
                    self.data_dir.display()
                ));
            }
            if let Some((port, status)) = self.exited() {
                return Err(format!(
                    "node on port {port} exited ({status}); see its log in {}",
                    self.data_dir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            for addr in &addrs {
                let Ok(client) = ringkv::Client::connect(addr).await else {
                    continue 'retry;
                };
                let Ok(ring) = client.ring().await else {
                    continue 'retry;
                };
                if ring.active_members() != expected || ring.owners.is_empty() {
                    continue 'retry;
                }
            }
            return Ok(());
        }
    }

    /// SIGKILL, as a crash would.
    ///
    /// # Errors
    /// Unknown node, or it was not running.
    pub fn kill(&mut self, id: &str) -> Result<(), String> {
        let i = self.index(id)?;
        let mut child = self.nodes[i]
            .child
            .take()
            .ok_or_else(|| format!("{id} is not running"))?;
        child.kill().map_err(|e| format!("cannot kill {id}: {e}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// Starts a stopped node again (same id, port and data) and waits until it
    /// answers.
    ///
    /// # Errors
    /// Unknown node, already running, or it did not come up.
    pub fn restart(&mut self, id: &str) -> Result<(), String> {
        let i = self.index(id)?;
        if self.nodes[i].child.is_some() {
            return Err(format!("{id} is already running"));
        }
        self.spawn(i)
            .map_err(|e| format!("cannot start {id}: {e}"))?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port));
        let deadline = Instant::now() + READY_TIMEOUT;
        // The node listens once its store is open: accepting is answering. Blocking
        // on purpose: callers run this off the async workers.
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{id} did not answer within a minute of its restart"
        ))
    }

    /// Stops every node (SIGTERM, so each syncs and closes its store; SIGKILL for
    /// any still running after 15 s).
    pub fn stop_all(&mut self) {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{} did not stop in time; killing it", node.id);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// Nodes started.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Kills and restarts nodes of a shared local cluster for the bench's fault window.
pub struct Control(pub std::sync::Arc<std::sync::Mutex<LocalCluster>>);

impl ringkv::bench::NodeControl for Control {
    fn kill(&mut self, node: &str) -> Result<(), String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).kill(node)
    }

    fn restart(&mut self, node: &str) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restart(node)
    }
}
