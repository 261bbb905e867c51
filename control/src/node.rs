//! `sohofs node`: serve a storage node, and change who is in the cluster.
//!
//! - `serve` runs a node. A node on another machine joins a cluster this
//!   way: `sohofs node serve --id ID --meta ADDR --dir DIR --listen ADDR`;
//!   meta registers it at its first heartbeat and rebalancing moves shards
//!   to it.
//! - `add` is for a cluster made by `sohofs up`: it picks the next free id, a
//!   folder under DIR/nodes and a port, and appends the node to
//!   `sohofs.toml`; the running `up` starts it (and every later `up` does).
//! - `drain ID` marks a node draining and follows the heal service moving
//!   its shards away until it holds none.
//! - `remove ID` takes a node out for good; meta refuses while any stripe
//!   still needs a shard on it.
//! - `list` shows every node with its state and shard counts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use sohofs_format::messages::{Member, MetaRequest, MetaResponse};
use sohofs_storage::error::FsError;
use sohofs_storage::peers::MetaClient;
use sohofs_storage::rpc::Transport;

use crate::config::{folder_of, ClusterConfig, NodeSection};
use crate::services::NodeServeArgs;

/// How often `drain` and `add` look at meta.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `drain` says once that it may be stuck after this long without progress.
const DRAIN_STALL_WARNING: Duration = Duration::from_secs(60);
/// How long `add` waits for the new node to heartbeat.
const ADD_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Subcommand)]
pub enum NodeVerb {
    /// Serve shards stored under DIR (joins the cluster by heartbeating to meta).
    Serve(NodeServeArgs),
    /// Add a node to a local cluster made by `sohofs up` (which starts it).
    Add {
        #[arg(long)]
        config: PathBuf,
        /// Failure domain name (default: local-<id>, a host of its own).
        #[arg(long)]
        host: Option<String>,
        /// Do not wait for the node to come up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move every shard off a node (no new shards go to it), and wait until it is empty.
    Drain {
        #[arg(long)]
        config: PathBuf,
        id: u64,
        /// Mark it draining and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a drained node out of the cluster (refused while it holds shards a stripe needs).
    Remove {
        #[arg(long)]
        config: PathBuf,
        id: u64,
    },
    /// Every node with its state and shard counts.
    List {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(verb: NodeVerb) -> Result<()> {
    match verb {
        NodeVerb::Serve(args) => crate::services::node(args).await,
        NodeVerb::Add { config, host, no_wait } => add(&config, host, no_wait).await,
        NodeVerb::Drain { config, id, no_wait } => drain(&config, id, no_wait).await,
        NodeVerb::Remove { config, id } => remove(&config, id).await,
        NodeVerb::List { config, json } => list(&config, json).await,
    }
}

fn meta_client(config: &ClusterConfig) -> MetaClient {
    MetaClient::new(&config.meta, Transport::default())
}

async fn members(meta: &MetaClient, config: &ClusterConfig) -> Result<Vec<Member>> {
    match meta
        .call(&MetaRequest::Members)
        .await
        .with_context(|| format!("ask meta at {}", config.meta.join(", ")))?
    {
        MetaResponse::Members(members) => Ok(members),
        other => bail!("meta answered Members with {other:?}"),
    }
}

/// A drained node: nothing names a shard on it and nothing waits to be
/// deleted there.
fn is_empty(member: &Member) -> bool {
    member.shards_referenced == 0 && member.shards_queued_for_gc == 0
}

fn state_of(member: &Member) -> &'static str {
    match (member.draining, is_empty(member)) {
        (true, true) => "drained",
        (true, false) => "draining",
        (false, _) => "active",
    }
}

#[derive(Serialize)]
struct MemberJson {
    id: u64,
    host: String,
    addr: String,
    up: bool,
    lost: bool,
    /// "active", "draining" or "drained" (draining and empty).
    state: &'static str,
    draining: bool,
    empty: bool,
    shards_referenced: u64,
    shards_queued_for_gc: u64,
    /// Shard files on the node's disk at its last heartbeat.
    shards_on_disk: u64,
}

async fn list(config_path: &Path, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let members = members(&meta_client(&config), &config).await?;
    if json {
        let out: Vec<MemberJson> = members
            .iter()
            .map(|m| MemberJson {
                id: m.record.id,
                host: m.record.host.clone(),
                addr: m.record.addr.clone(),
                up: m.up,
                lost: m.lost,
                state: state_of(m),
                draining: m.draining,
                empty: is_empty(m),
                shards_referenced: m.shards_referenced,
                shards_queued_for_gc: m.shards_queued_for_gc,
                shards_on_disk: m.record.shards,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<16} {:<22} {:<5} {:<9} {:>8} {:>9} {:>8}",
        "ID", "HOST", "ADDR", "LIVE", "STATE", "SHARDS", "GC-QUEUE", "ON-DISK"
    );
    for m in &members {
        let live = if m.lost {
            "lost"
        } else if m.up {
            "up"
        } else {
            "down"
        };
        println!(
            "{:>4}  {:<16} {:<22} {:<5} {:<9} {:>8} {:>9} {:>8}",
            m.record.id,
            m.record.host,
            m.record.addr,
            live,
            state_of(m),
            m.shards_referenced,
            m.shards_queued_for_gc,
            m.record.shards
        );
    }
    Ok(())
}

async fn drain(config_path: &Path, id: u64, no_wait: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let meta = meta_client(&config);
    match meta.call(&MetaRequest::Drain { node: id }).await {
        Ok(_) => {}
        Err(FsError::NotFound) => bail!("no node {id} in the cluster (see `sohofs node list`)"),
        Err(error) => return Err(error).with_context(|| format!("mark node {id} draining")),
    }
    println!("sohofs: node {id} is draining: no new shards go to it; its shards move to other hosts");
    if no_wait {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("node {msg} [{bar:30}] {pos}/{len} shards moved")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(id.to_string());
    let mut first_left = None;
    let mut last_left = u64::MAX;
    let mut last_progress = Instant::now();
    let mut warned = false;
    loop {
        let members = members(&meta, &config).await?;
        let Some(member) = members.iter().find(|m| m.record.id == id) else {
            bar.finish_and_clear();
            bail!("node {id} left the registry while draining");
        };
        let left = member.shards_referenced + member.shards_queued_for_gc;
        let total = *first_left.get_or_insert(left);
        bar.set_length(total);
        bar.set_position(total.saturating_sub(left.min(total)));
        if is_empty(member) {
            bar.finish_and_clear();
            println!(
                "sohofs: node {id} is empty (no stripe needs it); remove it with `sohofs node remove --config {} {id}`",
                config_path.display()
            );
            return Ok(());
        }
        if left < last_left {
            last_left = left;
            last_progress = Instant::now();
        } else if !warned && last_progress.elapsed() > DRAIN_STALL_WARNING && !member.up {
            warned = true;
            // Through stderr, not the bar: a hidden bar (no terminal)
            // prints nothing, and a script must see why it waits.
            bar.suspend(|| {
                eprintln!(
                    "sohofs: node {id} is down: its shards move once it is back, or are rebuilt elsewhere \
                     once it has been silent for the grace period"
                )
            });
        } else if !warned && last_progress.elapsed() > DRAIN_STALL_WARNING {
            warned = true;
            bar.suspend(|| {
                eprintln!(
                    "sohofs: node {id}: no progress for {} s; {} shards are still named by records. A shard \
                     moves only to an up node on a host that holds no other shard of its stripe: with k+m \
                     hosts and this one among them, add a node first (`sohofs node add`)",
                    DRAIN_STALL_WARNING.as_secs(),
                    member.shards_referenced
                )
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn remove(config_path: &Path, id: u64) -> Result<()> {
    let mut config = ClusterConfig::load(config_path)?;
    let meta = meta_client(&config);
    let shown = config_path.display();
    match meta.call(&MetaRequest::RemoveNode { node: id }).await {
        Ok(_) => {}
        Err(FsError::NotFound) => bail!("no node {id} in the cluster (see `sohofs node list`)"),
        Err(FsError::Invalid(_)) => bail!(
            "node {id} is active; drain it first (`sohofs node drain --config {shown} {id}`), even if it holds no \
             shard, so that no write is placing one on it while it goes"
        ),
        Err(FsError::NotEmpty) => {
            let held = members(&meta, &config)
                .await
                .ok()
                .and_then(|all| all.into_iter().find(|m| m.record.id == id))
                .map_or_else(|| "shards".to_string(), |m| format!("{} shards", m.shards_referenced));
            bail!(
                "node {id} still holds {held} that stripes need; drain it first \
                 (`sohofs node drain --config {shown} {id}`) and remove it once it is empty"
            );
        }
        Err(error) => return Err(error).with_context(|| format!("remove node {id}")),
    }
    // A node `up` runs: take it out of the config so that `up` stops it and
    // never starts it again.
    if config.nodes.iter().any(|n| n.id == id) {
        config.nodes.retain(|n| n.id != id);
        if !config.removed_nodes.contains(&id) {
            config.removed_nodes.push(id);
        }
        config.save(config_path)?;
    }
    println!("sohofs: node {id} removed from the cluster");
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a `sohofs up` holds the cluster folder now.
fn up_is_running(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(dir.join("up.lock")) else {
        return false;
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

async fn add(config_path: &Path, host: Option<String>, no_wait: bool) -> Result<()> {
    let mut config = ClusterConfig::load(config_path)?;
    let dir = folder_of(config_path);
    if config.nodes.is_empty() {
        bail!(
            "{} lists no local nodes: it is not a cluster made by `sohofs up`. On another machine, \
             join with `sohofs node serve --id ID --meta {} --dir DIR --listen ADDR`",
            config_path.display(),
            config.meta.join(",")
        );
    }
    let meta = meta_client(&config);
    let registered: HashSet<u64> = members(&meta, &config).await?.iter().map(|m| m.record.id).collect();
    let id = config
        .nodes
        .iter()
        .map(|n| n.id)
        .chain(config.removed_nodes.iter().copied())
        .chain(registered.iter().copied())
        .max()
        .unwrap_or(0)
        + 1;
    let section = NodeSection {
        id,
        listen: format!("127.0.0.1:{}", free_port()?),
        dir: format!("nodes/{id}"),
        host: host.unwrap_or_else(|| format!("local-{id}")),
    };
    let data = dir.join(&section.dir).join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    config.nodes.push(section.clone());
    config.save(config_path)?;
    if !up_is_running(&dir) {
        println!(
            "sohofs: node {id} (host {}) recorded in {}; it starts with the next `sohofs up`",
            section.host,
            config_path.display()
        );
        return Ok(());
    }
    println!(
        "sohofs: node {id} (host {}, {}) added; `sohofs up` starts it",
        section.host, section.listen
    );
    if no_wait {
        return Ok(());
    }
    let deadline = Instant::now() + ADD_TIMEOUT;
    loop {
        let members = members(&meta, &config).await?;
        if members.iter().any(|m| m.record.id == id && m.up) {
            println!("sohofs: node {id} is up; rebalancing moves shards to it");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {id} did not come up within {} s; see {}",
                ADD_TIMEOUT.as_secs(),
                dir.join(&section.dir).join("node.log").display()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
