//! `ringkv dev --nodes K`: a local cluster for development. Starts K `ringkv serve`
//! processes (this same binary) with their own directories and ports, all seeded
//! with the first, prints how to connect, and stops them all on Ctrl-C or SIGTERM.

use std::time::Duration;

use super::args::DevArgs;
use super::local::LocalCluster;
use super::{EXIT_OK, Failure};

pub fn run(args: DevArgs) -> Result<i32, Failure> {
    let mut cluster = LocalCluster::start(args.nodes, args.base_port, &args.data_dir, args.n)?;
    let addrs = cluster.addresses();
    let (first, last) = cluster.ports();
    println!(
        "ringkv dev: {} nodes on 127.0.0.1:{first}..{last} (data and logs in {})",
        cluster.len(),
        cluster.data_dir().display()
    );
    println!("  ringkv put hello world --connect {}", addrs[0]);
    println!("  ringkv get hello --connect {}", addrs[addrs.len() - 1]);
    println!("  ringkv ring --connect {}", addrs[0]);
    println!("Ctrl-C stops them all.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start runtime: {e}")))?;
    let exited = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return None;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                _ = term.recv() => return None,
                _ = int.recv() => return None,
                _ = tick.tick() => {
                    if let Some(gone) = cluster.exited() {
                        return Some(gone);
                    }
                }
            }
        }
    });
    if let Some((port, status)) = exited {
        eprintln!("node on port {port} exited ({status}); stopping the others");
    }
    println!("stopping {} nodes", cluster.len());
    cluster.stop_all();
    Ok(EXIT_OK)
}
