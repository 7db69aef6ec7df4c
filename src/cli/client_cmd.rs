//! The client commands: one request to one node, printed for people or for scripts.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use ringkv::Client;
use ringkv::object::Context;
use ringkv::rpc::api::RequestOptions;
use serde_json::json;

use super::args::{BenchArgs, ClientOpts, Command, CounterOp, SecretOpts, SecurityOpts, SetOp};
use super::{EXIT_NOT_FOUND, EXIT_OK, Failure};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn text(bytes: &[u8], base64: bool) -> String {
    if base64 {
        b64(bytes)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

pub(super) fn out(line: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .map_err(|e| Failure::other(format!("cannot write output: {e}")))
}

pub(super) fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    out(v.to_string().as_bytes())
}

fn context_arg(raw: Option<&str>) -> Result<Option<Context>, Failure> {
    raw.map(|t| Context::from_text(t).map_err(|e| Failure::usage(e.to_string())))
        .transpose()
}

/// The token and TLS of the client flags (or their environment variables).
pub(super) fn credentials(opts: &SecurityOpts) -> Result<ringkv::Credentials, Failure> {
    let tls = match (&opts.tls_ca, &opts.tls_cert, &opts.tls_key) {
        (None, None, None) => None,
        (None, _, _) => {
            return Err(Failure::usage(
                "--tls-cert and --tls-key need --tls-ca (the cluster's CA)",
            ));
        }
        (Some(ca), cert, key) => {
            let identity = match (cert, key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                _ => return Err(Failure::usage("--tls-cert and --tls-key go together")),
            };
            let files = ringkv::tls::ClientTlsFiles {
                ca: ca.clone(),
                identity,
            };
            Some(ringkv::tls::DialTls::client(&files).map_err(|e| Failure::usage(e.to_string()))?)
        }
    };
    Ok(ringkv::Credentials {
        token: opts.token.clone().filter(|t| !t.is_empty()),
        tls,
    })
}

pub(super) async fn connect(opts: &ClientOpts) -> Result<Client, Failure> {
    let mut client = Client::connect_as(&opts.connect, &credentials(&opts.security)?).await?;
    let mut options = RequestOptions {
        r: opts.r,
        w: opts.w,
        pr: opts.pr,
        pw: opts.pw,
        timeout_ms: None,
    };
    if let Some(ms) = opts.timeout_ms {
        // The node is given 90 % of it, at most its own limit.
        let max = u64::from(ringkv::coordinator::MAX_TIMEOUT_MS) * 10 / 9;
        if ms == 0 || ms > max {
            return Err(Failure::usage(format!(
                "--timeout-ms must be between 1 and {max}"
            )));
        }
        // The node gets a little less than the client waits, so its answer (say, a
        // quorum failure naming the replicas) arrives before the client gives up.
        options.timeout_ms = Some((ms - ms / 10) as u32);
        client.set_timeout(Duration::from_millis(ms));
    }
    client.set_options(options);
    Ok(client)
}

fn read_value(value: Option<String>, file: Option<std::path::PathBuf>) -> Result<Vec<u8>, Failure> {
    match (value, file) {
        (Some(v), None) => Ok(v.into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            Ok(buf)
        }
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display()))),
        (None, None) => Err(Failure::usage("put needs a VALUE or --value-file")),
        (Some(_), Some(_)) => Err(Failure::usage(
            "give either VALUE or --value-file, not both",
        )),
    }
}

/// The key operator commands prove: the cluster secret, or the development key.
fn admin_key(secret: &SecretOpts) -> Result<ringkv_gossip::ClusterKey, Failure> {
    match super::read_secret(secret.cluster_secret_file.as_deref())? {
        Some(s) => Ok(ringkv_gossip::ClusterKey::derive(&s)),
        None if secret.insecure_dev => Ok(ringkv::node::ClusterConfig::default().key),
        None => Err(Failure::usage(
            "membership commands need an admin token (--token, RINGKV_TOKEN) or the cluster secret: --cluster-secret-file FILE or RINGKV_CLUSTER_SECRET (or --insecure-dev)",
        )),
    }
}

pub fn run(command: Command) -> Result<i32, Failure> {
    // One request needs one thread; the benchmark drives many and needs them all.
    let mut builder = if matches!(command, Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start runtime: {e}")))?;
    runtime.block_on(dispatch(command))
}

async fn dispatch(command: Command) -> Result<i32, Failure> {
    match command {
        Command::Serve(_) => unreachable!("serve is dispatched before"),
        Command::Bench(args) => bench(args).await,
        Command::Put {
            key,
            value,
            context,
            value_file,
            opts,
        } => {
            let value = read_value(value, value_file)?;
            let ctx = context_arg(context.as_deref())?;
            let client = connect(&opts).await?;
            let new = client.put(key.as_bytes(), &value, ctx.as_ref()).await?;
            if opts.json {
                print_json(&json!({"context": new.to_text()}))?;
            } else {
                out(new.to_text().as_bytes())?;
            }
            Ok(EXIT_OK)
        }
        Command::Get {
            key,
            show_context,
            base64,
            local,
            opts,
        } => {
            let client = connect(&opts).await?;
            let read = if local {
                client.get_local(key.as_bytes()).await?
            } else {
                client.get(key.as_bytes()).await?
            };
            if opts.json {
                let values: Vec<String> = read.siblings.iter().map(|v| text(v, base64)).collect();
                print_json(
                    &json!({"found": read.is_found(), "values": values, "context": read.context.to_text()}),
                )?;
            } else {
                for v in &read.siblings {
                    if base64 {
                        out(b64(v).as_bytes())?
                    } else {
                        out(v)?
                    }
                }
                if show_context {
                    out(format!("context: {}", read.context.to_text()).as_bytes())?;
                }
            }
            if read.is_found() {
                Ok(EXIT_OK)
            } else {
                if !opts.json {
                    eprintln!("not found: {key}");
                }
                Ok(EXIT_NOT_FOUND)
            }
        }
        Command::Delete { key, context, opts } => {
            let ctx = context_arg(context.as_deref())?;
            let client = connect(&opts).await?;
            let new = client.delete(key.as_bytes(), ctx.as_ref()).await?;
            if opts.json {
                print_json(&json!({"context": new.to_text()}))?;
            } else {
                out(new.to_text().as_bytes())?;
            }
            Ok(EXIT_OK)
        }
        Command::Counter { op, opts } => {
            let client = connect(&opts).await?;
            let (key, value) = match op {
                CounterOp::Add { key, delta } => {
                    let v = client.counter_add(key.as_bytes(), delta).await?;
                    (key, Some(v))
                }
                CounterOp::Get { key } => {
                    let v = client.counter_get(key.as_bytes()).await?;
                    (key, v)
                }
            };
            match value {
                Some(v) => {
                    if opts.json {
                        // JSON numbers beyond i64 lose precision in many parsers: use a
                        // string only when needed.
                        let n = i64::try_from(v)
                            .map(|x| json!(x))
                            .unwrap_or_else(|_| json!(v.to_string()));
                        print_json(&json!({"found": true, "value": n}))?;
                    } else {
                        out(v.to_string().as_bytes())?;
                    }
                    Ok(EXIT_OK)
                }
                None => {
                    if opts.json {
                        print_json(&json!({"found": false, "value": 0}))?;
                    } else {
                        eprintln!("not found: {key}");
                    }
                    Ok(EXIT_NOT_FOUND)
                }
            }
        }
        Command::Set { op, opts } => {
            let client = connect(&opts).await?;
            match op {
                SetOp::Add { key, member } => {
                    client.set_add(key.as_bytes(), member.as_bytes()).await?;
                    if opts.json {
                        print_json(&json!({"ok": true}))?;
                    }
                    Ok(EXIT_OK)
                }
                SetOp::Remove { key, member } => {
                    let was = client.set_remove(key.as_bytes(), member.as_bytes()).await?;
                    if opts.json {
                        print_json(&json!({"ok": true, "removed": was}))?;
                    }
                    Ok(EXIT_OK)
                }
                SetOp::Members { key } => match client.set_members(key.as_bytes()).await? {
                    Some(members) => {
                        if opts.json {
                            let m: Vec<String> = members.iter().map(|m| text(m, false)).collect();
                            print_json(&json!({"found": true, "members": m}))?;
                        } else {
                            for m in &members {
                                out(m)?;
                            }
                        }
                        Ok(EXIT_OK)
                    }
                    None => {
                        if opts.json {
                            print_json(&json!({"found": false, "members": []}))?;
                        } else {
                            eprintln!("not found: {key}");
                        }
                        Ok(EXIT_NOT_FOUND)
                    }
                },
            }
        }
        Command::Ring { opts } => {
            let client = connect(&opts).await?;
            let ring = client.ring().await?;
            let mut counts: std::collections::BTreeMap<&str, usize> =
                std::collections::BTreeMap::new();
            for o in &ring.owners {
                *counts.entry(o.as_str()).or_default() += 1;
            }
            if opts.json {
                let partitions: Vec<serde_json::Value> = ring
                    .owners
                    .iter()
                    .enumerate()
                    .map(|(p, o)| json!({"partition": p, "owner": o}))
                    .collect();
                print_json(&json!({
                    "epoch": ring.epoch,
                    "ring_size": ring.ring_size,
                    "n": ring.n,
                    "partitions": partitions,
                    "counts": counts,
                    "members": ring.members,
                }))?;
            } else {
                out(format!("epoch:     {}", ring.epoch).as_bytes())?;
                out(format!("ring_size: {}  n: {}", ring.ring_size, ring.n).as_bytes())?;
                for m in &ring.members {
                    out(format!(
                        "{:<24} {:<22} {:<8} {:<8} zone={:<10} partitions={}",
                        m.node_id,
                        m.address,
                        m.status,
                        m.liveness,
                        if m.zone.is_empty() { "-" } else { &m.zone },
                        counts.get(m.node_id.as_str()).copied().unwrap_or(0)
                    )
                    .as_bytes())?;
                }
            }
            Ok(EXIT_OK)
        }
        Command::Leave {
            dry_run: true,
            opts,
            ..
        } => {
            let client = connect(&opts).await?;
            let id = client.server().node_id.clone();
            super::ops_cmd::dry_run(&client, &id, "leave", opts.json).await
        }
        Command::Remove {
            node_id,
            dry_run: true,
            opts,
            ..
        } => {
            let client = connect(&opts).await?;
            super::ops_cmd::dry_run(&client, &node_id, "remove", opts.json).await
        }
        Command::Leave {
            wait,
            timeout,
            secret,
            opts,
            ..
        } => {
            let id = if opts
                .security
                .token
                .as_deref()
                .is_some_and(|t| !t.is_empty())
            {
                connect(&opts).await?.leave().await?
            } else {
                let key = admin_key(&secret)?;
                let tls = credentials(&opts.security)?.tls;
                ringkv::client::admin::leave(&opts.connect, key, tls.as_ref()).await?
            };
            if opts.json {
                print_json(&json!({"ok": true, "node_id": id}))?;
            } else {
                out(format!("{id} is leaving: it no longer owns partitions").as_bytes())?;
            }
            if wait {
                let client = connect(&opts).await?;
                return super::ops_cmd::wait_left(&client, &opts, timeout).await;
            }
            Ok(EXIT_OK)
        }
        Command::Remove {
            node_id,
            secret,
            opts,
            ..
        } => {
            if opts
                .security
                .token
                .as_deref()
                .is_some_and(|t| !t.is_empty())
            {
                connect(&opts).await?.remove(&node_id).await?;
            } else {
                let key = admin_key(&secret)?;
                let tls = credentials(&opts.security)?.tls;
                ringkv::client::admin::remove(&opts.connect, key, tls.as_ref(), &node_id).await?;
            }
            if opts.json {
                print_json(&json!({"ok": true, "removed": node_id}))?;
            } else {
                out(format!("{node_id} removed from the cluster").as_bytes())?;
            }
            Ok(EXIT_OK)
        }
        Command::Dev(_) => unreachable!("dev is dispatched before"),
        Command::Token { op } => super::security_cmd::token(op),
        Command::Certs { op } => super::security_cmd::certs(op),
        Command::Health { ready, http, json } => super::ops_cmd::health(ready, http, json).await,
        Command::WaitHealthy {
            timeout,
            max_hints,
            members,
            opts,
        } => super::ops_cmd::wait_healthy(&opts, timeout, max_hints, members).await,
        Command::Transfers { opts } => {
            let client = connect(&opts).await?;
            super::ops_cmd::transfers(&client, opts.json).await
        }
        Command::Drain { secret, opts } => {
            let id = if opts
                .security
                .token
                .as_deref()
                .is_some_and(|t| !t.is_empty())
            {
                connect(&opts).await?.drain().await?
            } else {
                let key = admin_key(&secret)?;
                let tls = credentials(&opts.security)?.tls;
                ringkv::client::admin::drain(&opts.connect, key, tls.as_ref()).await?
            };
            if opts.json {
                print_json(&json!({"ok": true, "node_id": id}))?;
            } else {
                out(format!("{id} is draining: it stops once its requests finish").as_bytes())?;
            }
            Ok(EXIT_OK)
        }
        Command::Repair { partition, opts } => {
            let client = connect(&opts).await?;
            let r = client.repair(partition).await?;
            if opts.json {
                let v = serde_json::to_value(&r).map_err(|e| Failure::other(e.to_string()))?;
                print_json(&v)?;
            } else {
                out(format!(
                    "compared {} partition(s), {} differed, {} key(s) repaired, {} handed off, {} tombstone(s) reaped",
                    r.compared, r.exchanges, r.keys_repaired, r.handed_off, r.reaped
                )
                .as_bytes())?;
            }
            Ok(EXIT_OK)
        }
        Command::Status { opts } => {
            let client = connect(&opts).await?;
            let s = client.status().await?;
            if opts.json {
                let mut v = serde_json::to_value(&s).map_err(|e| Failure::other(e.to_string()))?;
                // Cluster figures sit at the top level, where scripts look for them.
                if let Some(obj) = v.as_object_mut()
                    && let Some(serde_json::Value::Object(cluster)) = obj.remove("cluster")
                {
                    obj.extend(cluster);
                }
                print_json(&v)?;
            } else {
                let lines = [
                    format!("node_id:      {}", s.node_id),
                    format!("address:      {}", s.address),
                    format!("version:      {}", s.version),
                    format!("data_dir:     {}", s.data_dir),
                    format!("sync:         {}", s.sync),
                    format!("ring_size:    {}", s.ring_size),
                    format!("generation:   {}", s.generation),
                    format!("keys (approx) {}", s.keys_approx),
                    format!("uptime:       {:.1} s", s.uptime_ms as f64 / 1000.0),
                    format!("ready:        {}", if s.ready { "yes" } else { "no" }),
                    format!(
                        "requests:     {} ({} refused)",
                        s.stats.requests, s.stats.request_errors
                    ),
                    format!(
                        "connections:  {} open, {} refused, {} closed for bad frames",
                        s.stats.connections_open, s.stats.connections_refused, s.stats.bad_frames
                    ),
                    format!(
                        "disk:         {}{}: {} bytes in {} file(s), {} live, {} merge(s), {} damaged value(s) dropped",
                        s.storage.backend,
                        if s.storage.poisoned {
                            " (POISONED: an fsync failed, writes refused until restart)"
                        } else {
                            ""
                        },
                        s.storage.disk_bytes,
                        s.storage.segment_files,
                        s.storage.live_bytes,
                        s.storage.merges,
                        s.storage.damaged_values_dropped
                    ),
                    format!(
                        "ring:         epoch {} (n={} r={} w={})",
                        s.cluster.ring_epoch, s.cluster.n, s.cluster.r, s.cluster.w
                    ),
                    format!(
                        "hints:        {} pending, {} stored, {} delivered",
                        s.cluster.hints_pending, s.cluster.hints_stored, s.cluster.hints_delivered
                    ),
                    format!(
                        "repair:       {} exchanges, {} keys repaired, {} B sent, {} B received, {} handoffs in flight, {} tombstones reaped",
                        s.repair.exchanges,
                        s.repair.keys_repaired,
                        s.repair.bytes_sent,
                        s.repair.bytes_received,
                        s.repair.handoffs_in_flight,
                        s.repair.tombstones_reaped
                    ),
                    format!(
                        "gossip:       {} datagrams in, {} rejected (auth), {} replayed, {} oversized, {} malformed",
                        s.cluster.gossip_in,
                        s.cluster.gossip_rejected_auth,
                        s.cluster.gossip_rejected_replay,
                        s.cluster.gossip_rejected_oversized,
                        s.cluster.gossip_rejected_malformed
                    ),
                ];
                for l in lines {
                    out(l.as_bytes())?;
                }
                for m in &s.cluster.members {
                    out(format!(
                        "member:       {} {} {} {}",
                        m.node_id, m.address, m.status, m.liveness
                    )
                    .as_bytes())?;
                }
            }
            Ok(EXIT_OK)
        }
    }
}

async fn bench(args: BenchArgs) -> Result<i32, Failure> {
    use ringkv::bench::{BenchConfig, BenchError, Distribution, FaultPlan, ProgressMode, Workload};
    let workload = Workload::parse(&args.workload).map_err(|e| Failure::usage(e.to_string()))?;
    let distribution = match &args.distribution {
        Some(d) => Distribution::parse(d).map_err(Failure::usage)?,
        None => workload.distribution(),
    };
    let fault = args.kill_node.clone().map(|node| FaultPlan {
        node,
        at: args.at.unwrap_or_default(),
        restart_at: args.restart_at,
    });
    let mut config = BenchConfig {
        workload,
        distribution,
        records: args.records,
        operations: match args.duration {
            Some(_) => None,
            None => Some(args.operations.unwrap_or(100_000)),
        },
        duration: args.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
        connections: args.connections,
        target_ops_per_sec: args.target,
        value_size: args.value_size,
        connect: args.connect.clone(),
        r: args.r,
        w: args.w,
        timeout_ms: args.timeout_ms,
        seed: args.seed,
        routing: !args.no_routing,
        load: !args.skip_load,
        fault,
        local_nodes: args.nodes,
        security: ringkv::bench::Security(credentials(&args.security)?),
        http: args.http.clone(),
    };
    // Refuse nonsense before starting anything.
    config
        .validate()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let progress = if args.quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };

    // A cluster of our own, if asked for: stopped (and its fresh directory removed)
    // when this function returns, also on Ctrl-C.
    let mut scratch = None;
    let cluster = match args.nodes {
        None => None,
        Some(nodes) => {
            let dir = match &args.data_dir {
                Some(d) => d.clone(),
                None => {
                    let d =
                        std::env::temp_dir().join(format!("ringkv-bench-{}", std::process::id()));
                    scratch = Some(Scratch(d.clone()));
                    d
                }
            };
            let mut c = super::local::LocalCluster::start(nodes, args.base_port, &dir, args.n)?;
            if let Some(node) = &args.kill_node {
                c.check_node(node).map_err(Failure::usage)?;
            }
            eprintln!(
                "started {nodes} nodes on 127.0.0.1:{}..{} (data and logs in {})",
                c.ports().0,
                c.ports().1,
                dir.display()
            );
            c.wait_formed().await.map_err(Failure::other)?;
            config.connect = c.addresses();
            Some(std::sync::Arc::new(std::sync::Mutex::new(c)))
        }
    };
    let control = cluster
        .clone()
        .map(|c| Box::new(super::local::Control(c)) as Box<dyn ringkv::bench::NodeControl>);
    let outcome = tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => Err(Failure::other("interrupted")),
        r = ringkv::bench::run(config, control, progress) => r.map_err(|e| match e {
            BenchError::Invalid { .. } | BenchError::Refused { .. } => Failure::usage(e.to_string()),
            BenchError::Client(c) => Failure::from(c),
        }),
    };
    if let Some(c) = cluster {
        c.lock().unwrap_or_else(|p| p.into_inner()).stop_all();
    }
    drop(scratch);
    let report = outcome?;
    print!("{report}");
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Failure::other(e.to_string()))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, ringkv::bench::svg(&report))
            .map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(EXIT_OK)
}

/// A directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
