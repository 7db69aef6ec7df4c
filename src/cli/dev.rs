//! `ringkv dev --nodes K`: a local cluster for development. Starts K `ringkv serve`
//! processes (this same binary) with their own directories and ports, all seeded
//! with the first, prints how to connect, and stops them all on Ctrl-C or SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::args::DevArgs;
use super::{EXIT_OK, Failure};

fn stop_all(children: &mut [(u16, Child)]) {
    for (_, child) in children.iter() {
        // SIGTERM lets every node sync and close its store.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    for (port, child) in children.iter_mut() {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() > deadline => {
                    eprintln!("node on port {port} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

pub fn run(args: DevArgs) -> Result<i32, Failure> {
    if args.nodes == 0 || args.nodes > 64 {
        return Err(Failure::usage("--nodes must be between 1 and 64"));
    }
    if args.base_port.checked_add(args.nodes).is_none() {
        return Err(Failure::usage("--base-port leaves no room for the nodes"));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::other(format!("cannot find the ringkv binary: {e}")))?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| Failure::other(format!("cannot create {}: {e}", args.data_dir.display())))?;
    let seed = format!("127.0.0.1:{}", args.base_port);
    let mut children: Vec<(u16, Child)> = Vec::new();
    for i in 0..args.nodes {
        let port = args.base_port + i;
        let dir = args.data_dir.join(format!("node-{}", i + 1));
        let log = std::fs::File::create(args.data_dir.join(format!("node-{}.log", i + 1)))
            .map_err(|e| Failure::other(format!("cannot create a log file: {e}")))?;
        let spawned = Command::new(&exe)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--node-id")
            .arg(format!("node-{}", i + 1))
            .arg("--seed")
            .arg(&seed)
            .arg("--n")
            .arg(args.n.min(args.nodes as u8).to_string())
            .arg("--insecure-dev")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        match spawned {
            Ok(child) => children.push((port, child)),
            Err(e) => {
                stop_all(&mut children);
                return Err(Failure::other(format!("cannot start node {}: {e}", i + 1)));
            }
        }
    }
    println!(
        "ringkv dev: {} nodes on 127.0.0.1:{}..{} (data and logs in {})",
        args.nodes,
        args.base_port,
        args.base_port + args.nodes - 1,
        args.data_dir.display()
    );
    println!("  ringkv put hello world --connect {seed}");
    println!(
        "  ringkv get hello --connect 127.0.0.1:{}",
        args.base_port + args.nodes - 1
    );
    println!("  ringkv ring --connect {seed}");
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
                _ = term.recv() => return None,
                _ = int.recv() => return None,
                _ = tick.tick() => {
                    for (port, child) in children.iter_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Some((*port, status));
                        }
                    }
                }
            }
        }
    });
    if let Some((port, status)) = exited {
        eprintln!("node on port {port} exited ({status}); stopping the others");
    }
    println!("stopping {} nodes", children.len());
    stop_all(&mut children);
    Ok(EXIT_OK)
}
