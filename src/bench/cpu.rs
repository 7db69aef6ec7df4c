//! CPU time a run costs, across every process of it: the bench itself and each
//! server it talks to on this machine, found by the listening socket of its address
//! (`/proc/net/tcp*` gives the socket's inode, `/proc/<pid>/fd` who holds it).
//!
//! Throughput alone hides where a replicated write's cost goes when client and
//! servers share the cores: CPU seconds per acknowledged operation do not.
//! Servers elsewhere cannot be measured and are reported as such, never guessed.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use serde::Serialize;

/// CPU spent by one phase, over every process measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CpuReport {
    /// CPU seconds (user + system) of the bench process.
    pub client_seconds: f64,
    /// CPU seconds of the server processes found, summed.
    pub server_seconds: f64,
    /// Server processes measured (a `ringkv dev` cluster is one per node).
    pub servers_measured: usize,
    /// Addresses of the cluster whose process could not be found on this machine:
    /// their CPU is not in the figures.
    pub servers_unmeasured: Vec<String>,
    /// All CPU seconds of the phase.
    pub total_seconds: f64,
    /// Microseconds of CPU per successful operation (all processes).
    pub us_per_op: f64,
    /// Of which in the servers.
    pub server_us_per_op: f64,
}

/// The processes of a run and how to read their CPU time.
#[derive(Clone, Debug, Default)]
pub struct CpuMeter {
    servers: Vec<u32>,
    unmeasured: Vec<String>,
}

/// CPU seconds of each process at one moment (`None`: it has gone).
#[derive(Clone, Debug)]
pub struct CpuSample {
    client: Option<f64>,
    servers: Vec<Option<f64>>,
}

impl CpuMeter {
    /// Finds the processes listening on `addresses` (`host:port`) on this machine.
    pub fn discover<'a>(addresses: impl IntoIterator<Item = &'a str>) -> CpuMeter {
        let sockets = listening_sockets();
        let mut wanted: BTreeSet<u64> = BTreeSet::new();
        let mut unmeasured = Vec::new();
        let mut seen = BTreeSet::new();
        for a in addresses {
            if !seen.insert(a.to_string()) {
                continue;
            }
            let found = resolve(a).and_then(|addr| {
                sockets
                    .iter()
                    .find(|(l, _)| l.port() == addr.port() && serves(l.ip(), addr.ip()))
                    .map(|(_, inode)| *inode)
            });
            match found {
                Some(inode) => {
                    wanted.insert(inode);
                }
                None => unmeasured.push(a.to_string()),
            }
        }
        let mut servers: Vec<u32> = holders(&wanted).into_iter().collect();
        let me = std::process::id();
        // The bench is counted once, as the client, even if it serves too.
        servers.retain(|p| *p != me);
        CpuMeter {
            servers,
            unmeasured,
        }
    }

    /// CPU times now.
    pub fn sample(&self) -> CpuSample {
        CpuSample {
            client: cpu_seconds("/proc/self/stat"),
            servers: self
                .servers
                .iter()
                .map(|p| cpu_seconds(&format!("/proc/{p}/stat")))
                .collect(),
        }
    }

    /// What the processes spent between `start` and `end`, for `operations`.
    pub fn report(&self, start: &CpuSample, end: &CpuSample, operations: u64) -> CpuReport {
        let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        };
        let client_seconds = diff(start.client, end.client).unwrap_or(0.0);
        let mut unmeasured = self.unmeasured.clone();
        let mut server_seconds = 0.0;
        let mut servers_measured = 0;
        for (i, (a, b)) in start.servers.iter().zip(&end.servers).enumerate() {
            match diff(*a, *b) {
                Some(s) => {
                    server_seconds += s;
                    servers_measured += 1;
                }
                // It exited (or restarted) during the phase: its CPU is lost with it.
                None => unmeasured.push(format!("pid {}", self.servers[i])),
            }
        }
        let total_seconds = client_seconds + server_seconds;
        let per_op = |s: f64| {
            if operations == 0 {
                0.0
            } else {
                s * 1e6 / operations as f64
            }
        };
        CpuReport {
            client_seconds,
            server_seconds,
            servers_measured,
            servers_unmeasured: unmeasured,
            total_seconds,
            us_per_op: per_op(total_seconds),
            server_us_per_op: per_op(server_seconds),
        }
    }
}

fn resolve(address: &str) -> Option<SocketAddr> {
    address.to_socket_addrs().ok()?.next()
}

/// Whether a socket listening on `listen` takes connections made to `to`.
fn serves(listen: IpAddr, to: IpAddr) -> bool {
    listen == to || listen.is_unspecified()
}

/// User plus system CPU seconds from a `/proc/<pid>/stat` file.
fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat(&stat, clock_ticks())
}

fn parse_stat(stat: &str, ticks: f64) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Listening TCP sockets of this machine: local address and inode.
fn listening_sockets() -> Vec<(SocketAddr, u64)> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(text.lines().skip(1).filter_map(|l| parse_tcp_line(l, v6)));
        }
    }
    out
}

/// One line of `/proc/net/tcp{,6}` if its socket listens (state 0A).
fn parse_tcp_line(line: &str, v6: bool) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(3)? != &"0A" {
        return None;
    }
    let (ip_hex, port_hex) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = parse_ip(ip_hex, v6)?;
    let inode = f.get(9)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), inode))
}

/// The kernel prints addresses as 32-bit words in host order (little endian here).
fn parse_ip(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let mut bytes = Vec::with_capacity(16);
    for w in &words {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    match (v6, bytes.len()) {
        (false, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        (true, 16) => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            // A dual-stack socket listening on [::] also serves IPv4.
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Processes holding any of the socket `inodes`.
fn holders(inodes: &BTreeSet<u64>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                out.insert(pid);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let stat = "4242 (ring kv) (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(stat, 100.0), Some(3.0));
        assert_eq!(parse_stat("4242 (short) S 1", 100.0), None);
        assert_eq!(parse_stat("garbage", 100.0), None);
    }

    #[test]
    fn tcp_lines_parse_listeners_only() {
        let listen = "   0: 0100007F:1CE7 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1";
        let (addr, inode) = parse_tcp_line(listen, false).expect("listener");
        assert_eq!(addr, "127.0.0.1:7399".parse().expect("addr"));
        assert_eq!(inode, 123_456);
        let established = listen.replace(" 0A ", " 01 ");
        assert_eq!(parse_tcp_line(&established, false), None);
        let any6 = "   0: 00000000000000000000000000000000:1CE7 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1";
        let (addr, _) = parse_tcp_line(any6, true).expect("v6");
        assert!(addr.ip().is_unspecified());
        assert_eq!(parse_tcp_line("nonsense", false), None);
    }

    #[test]
    fn finds_the_process_listening_here_and_counts_its_cpu() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let port = listener.local_addr().expect("addr").port();
        let inodes: BTreeSet<u64> = listening_sockets()
            .into_iter()
            .filter(|(a, _)| a.port() == port)
            .map(|(_, i)| i)
            .collect();
        assert_eq!(inodes.len(), 1, "the listener is in /proc/net/tcp");
        assert!(holders(&inodes).contains(&std::process::id()));
        // Listening in this very process: found, then left out as the client itself.
        let meter = CpuMeter::discover([addr.as_str(), "192.0.2.1:1"]);
        assert!(
            meter.servers.is_empty(),
            "the bench is the client, not a server"
        );
        assert_eq!(meter.unmeasured, vec!["192.0.2.1:1".to_string()]);
        let start = meter.sample();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let end = meter.sample();
        let r = meter.report(&start, &end, 1000);
        assert!(r.client_seconds >= 0.0);
        assert_eq!(r.server_seconds, 0.0);
        assert_eq!(r.servers_unmeasured, vec!["192.0.2.1:1".to_string()]);
        assert!((r.us_per_op - r.total_seconds * 1e3).abs() < 1e-6);
    }

    #[test]
    fn a_server_gone_during_the_phase_is_reported_unmeasured() {
        let meter = CpuMeter {
            servers: vec![1, 2],
            unmeasured: Vec::new(),
        };
        let start = CpuSample {
            client: Some(1.0),
            servers: vec![Some(2.0), Some(5.0)],
        };
        let end = CpuSample {
            client: Some(1.5),
            servers: vec![Some(3.0), None],
        };
        let r = meter.report(&start, &end, 500);
        assert_eq!(r.servers_measured, 1);
        assert_eq!(r.servers_unmeasured, vec!["pid 2".to_string()]);
        assert!((r.total_seconds - 1.5).abs() < 1e-9);
        assert!((r.us_per_op - 3000.0).abs() < 1e-6);
        assert!((r.server_us_per_op - 2000.0).abs() < 1e-6);
    }
}
