//! `sohofs up`: a whole cluster under one folder, mounted, in the foreground.
//!
//! Layout of DIR: `sohofs.toml` (the config), `volume.key` (0600),
//! `meta/` (database and log), `nodes/<i>/` (`data/`, `node.log`, `node.pid`).
//!
//! Membership while `up` runs: `sohofs node add` appends a node to
//! `sohofs.toml` and `sohofs node remove` moves one to `removed_nodes`; `up`
//! re-reads the file every second ([`CONFIG_POLL_INTERVAL`]), starts the
//! nodes it does not run yet and stops the ones removed. A restart of `up`
//! keeps both changes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::process::{Child, Command};

use crate::config::{self, ClusterConfig, NodeSection, VolumeSection, CONFIG_FILE, KEY_FILE};
use crate::services::{check_geometry, default_write_quorum, CHUNK_BYTES_DEFAULT, INLINE_BYTES_MAX_DEFAULT};

/// How long `up` waits for meta to answer and for nodes to register.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `up` re-reads `sohofs.toml` for nodes added or removed.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of storage nodes.
    #[arg(long, default_value_t = 6)]
    pub nodes: u32,
    /// Data shards per stripe.
    #[arg(long, default_value_t = 4)]
    pub k: u8,
    /// Parity shards per stripe.
    #[arg(long, default_value_t = 2)]
    pub m: u8,
    /// Shards that must be durable for a write to succeed (default k+1).
    #[arg(long)]
    pub write_quorum: Option<u8>,
    /// Folder that holds the whole cluster.
    #[arg(long, default_value = "./sohofs-data")]
    pub dir: PathBuf,
    /// Where to mount the volume.
    #[arg(long, default_value = "./sohofs-mnt")]
    pub mount: PathBuf,
    /// Seconds a node may be silent before its shards are rebuilt on other
    /// hosts (kept in DIR/sohofs.toml; default 600).
    #[arg(long, value_name = "SECS")]
    pub grace_period: Option<u64>,
    /// This machine's identity for protected directories (age identity file
    /// or SSH ed25519 key; default: the config's `identity`, else the SSH
    /// host key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // Without signal handlers the process still dies by the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// How many times `up` moves nodes whose port was taken between picking it
/// and binding it.
const NODE_PORT_RETRIES_MAX: u32 = 3;

/// Whether a node that exited at start did so because its port was taken.
fn lost_its_port(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| {
        let last_lines: Vec<&str> = text.lines().rev().take(20).collect();
        last_lines
            .iter()
            .any(|line| line.contains("Address already in use") || line.contains("os error 98"))
    })
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("read the current folder")?.join(path))
    }
}

/// Makes or updates DIR/sohofs.toml. Ports are chosen afresh at every start;
/// the volume geometry of an existing cluster is kept and must match.
/// A volume's data was sealed with its key: a new key would make every
/// file unreadable (EIO) and, were the old key found again, every file
/// written meanwhile. So `up` makes a key only for a folder that holds no
/// volume yet (no config, no meta database).
fn refuse_a_new_key_for_an_existing_volume(dir: &Path, config_path: &Path) -> Result<()> {
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        return Ok(());
    }
    let meta_dir = dir.join("meta");
    let meta_has_data = std::fs::read_dir(&meta_dir).is_ok_and(|mut entries| entries.next().is_some());
    if config_path.exists() || meta_has_data {
        bail!(
            "{} holds a volume but its key {} is missing; without the key no file can be read. \
             Put the volume's key file back (a backup of {KEY_FILE}); sohofs will not make a new one for an existing volume",
            dir.display(),
            key_path.display()
        );
    }
    Ok(())
}

pub(crate) fn prepare(args: &UpArgs, dir: &Path) -> Result<ClusterConfig> {
    let write_quorum = args
        .write_quorum
        .unwrap_or_else(|| default_write_quorum(args.k, args.m));
    check_geometry(args.k, args.m, write_quorum, CHUNK_BYTES_DEFAULT)?;
    if args.k as u32 + args.m as u32 > args.nodes {
        bail!(
            "k+m = {} shards per stripe need at least {} nodes on distinct hosts, but --nodes is {}",
            args.k as u32 + args.m as u32,
            args.k as u32 + args.m as u32,
            args.nodes
        );
    }
    if args.m == 0 {
        eprintln!("sohofs: warning: --m 0 keeps no parity; losing any node loses data");
    }
    let config_path = dir.join(CONFIG_FILE);
    refuse_a_new_key_for_an_existing_volume(dir, &config_path)?;
    std::fs::create_dir_all(dir.join("meta")).with_context(|| format!("create {}", dir.display()))?;
    let volume = if config_path.exists() {
        let existing = ClusterConfig::load(&config_path)?;
        if existing.volume.k != args.k || existing.volume.m != args.m {
            bail!(
                "{} holds a {}+{} volume; start it with --k {} --m {}",
                dir.display(),
                existing.volume.k,
                existing.volume.m,
                existing.volume.k,
                existing.volume.m
            );
        }
        existing.volume
    } else {
        VolumeSection {
            k: args.k,
            m: args.m,
            write_quorum,
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            inline_bytes_max: INLINE_BYTES_MAX_DEFAULT,
        }
    };
    config::create_key(&dir.join(KEY_FILE))?;
    let previous = if config_path.exists() {
        Some(ClusterConfig::load(&config_path)?)
    } else {
        None
    };
    // Keep the addresses of the last run where they are still free, so that
    // clients mounted with the old config reconnect after a restart.
    let reuse = |old: Option<&String>| -> Result<String> {
        match old {
            Some(addr) if TcpListener::bind(addr.as_str()).is_ok() => Ok(addr.clone()),
            _ => Ok(format!("127.0.0.1:{}", free_port()?)),
        }
    };
    let removed: Vec<u64> = previous.as_ref().map(|p| p.removed_nodes.clone()).unwrap_or_default();
    // Nodes 1..=N, less the removed ones, plus the ones `node add` made.
    let mut ids: Vec<u64> = (1..=args.nodes as u64).collect();
    if let Some(previous) = &previous {
        ids.extend(previous.nodes.iter().map(|n| n.id).filter(|id| *id > args.nodes as u64));
    }
    ids.retain(|id| !removed.contains(id));
    let mut nodes = Vec::new();
    for id in ids {
        let node_dir = format!("nodes/{id}");
        std::fs::create_dir_all(dir.join(&node_dir).join("data"))
            .with_context(|| format!("create {}", dir.join(&node_dir).display()))?;
        let old = previous.as_ref().and_then(|p| p.nodes.iter().find(|n| n.id == id));
        nodes.push(NodeSection {
            id,
            listen: reuse(old.map(|n| &n.listen))?,
            dir: node_dir,
            host: old.map_or_else(|| format!("local-{id}"), |n| n.host.clone()),
        });
    }
    let mut heal = previous.as_ref().map(|p| p.heal.clone()).unwrap_or_default();
    if let Some(grace_period) = args.grace_period {
        heal.grace_period_s = grace_period;
    }
    let config = ClusterConfig {
        meta: vec![reuse(previous.as_ref().and_then(|p| p.meta.first()))?],
        data_key_file: KEY_FILE.into(),
        volume,
        nodes,
        removed_nodes: removed,
        heal,
        // An [ldap] table the administrator added survives restarts.
        ldap: previous.as_ref().and_then(|p| p.ldap.clone()),
        identity: previous.as_ref().and_then(|p| p.identity.clone()),
        audit_log: previous.as_ref().and_then(|p| p.audit_log.clone()),
    };
    config.save(&config_path)?;
    Ok(config)
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))
}

fn spawn_child(args: &[String], log: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("find the sohofs executable")?;
    let out = log_file(log)?;
    let err = out.try_clone().context("duplicate log handle")?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            // A child must not outlive `up`, even when `up` is SIGKILLed.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    command.spawn().with_context(|| format!("start {}", args.join(" ")))
}

struct Children {
    meta: Option<Child>,
    nodes: Vec<(u64, Child)>,
}

impl Children {
    async fn stop(&mut self) {
        let mut all: Vec<&mut Child> = self.nodes.iter_mut().map(|(_, c)| c).collect();
        if let Some(meta) = self.meta.as_mut() {
            all.push(meta);
        }
        for child in all.iter() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for child in all {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// The arguments of `sohofs meta serve` for the meta of an `up` cluster.
pub(crate) fn meta_args(config: &ClusterConfig, dir: &Path) -> Vec<String> {
    let volume = &config.volume;
    vec![
        "meta".into(),
        "serve".into(),
        "--dir".into(),
        dir.join("meta").display().to_string(),
        "--listen".into(),
        config.meta[0].clone(),
        "--k".into(),
        volume.k.to_string(),
        "--m".into(),
        volume.m.to_string(),
        "--write-quorum".into(),
        volume.write_quorum.to_string(),
        "--chunk-bytes".into(),
        volume.chunk_bytes.to_string(),
        "--grace-period".into(),
        config.heal.grace_period_s.to_string(),
        "--rebuild-bytes-per-s".into(),
        config.heal.rebuild_bytes_per_s.to_string(),
        "--orphan-safety-window".into(),
        config.heal.orphan_safety_window_s.to_string(),
        "--orphan-sweep-interval".into(),
        config.heal.orphan_sweep_interval_s.to_string(),
    ]
}

/// The arguments of `sohofs node serve` for one node of an `up` cluster.
pub(crate) fn node_args(config: &ClusterConfig, dir: &Path, node: &NodeSection) -> Vec<String> {
    let node_dir = dir.join(&node.dir);
    vec![
        "node".into(),
        "serve".into(),
        "--id".into(),
        node.id.to_string(),
        "--dir".into(),
        node_dir.join("data").display().to_string(),
        "--listen".into(),
        node.listen.clone(),
        "--meta".into(),
        config.meta[0].clone(),
        "--host".into(),
        node.host.clone(),
        "--scrub-interval".into(),
        config.heal.scrub_interval_s.to_string(),
        "--scrub-bytes-per-s".into(),
        config.heal.scrub_bytes_per_s.to_string(),
    ]
}

/// Starts node `node` of the cluster in `dir` as a child; writes its pid file.
fn start_node(config: &ClusterConfig, dir: &Path, node: &NodeSection) -> Result<Child> {
    let node_dir = dir.join(&node.dir);
    std::fs::create_dir_all(node_dir.join("data")).with_context(|| format!("create {}", node_dir.display()))?;
    let child = spawn_child(&node_args(config, dir, node), &node_dir.join("node.log"))?;
    if let Some(pid) = child.id() {
        std::fs::write(node_dir.join("node.pid"), format!("{pid}\n"))
            .with_context(|| format!("write {}", node_dir.join("node.pid").display()))?;
    }
    Ok(child)
}

/// Starts the nodes `sohofs node add` put in the config and stops the ones
/// `sohofs node remove` took out.
async fn follow_membership(config_path: &Path, dir: &Path, children: &mut Children) {
    let Ok(config) = ClusterConfig::load(config_path) else {
        return; // being replaced right now, or broken: try again next time
    };
    for node in &config.nodes {
        if children.nodes.iter().any(|(id, _)| *id == node.id) || config.removed_nodes.contains(&node.id) {
            continue;
        }
        match start_node(&config, dir, node) {
            Ok(child) => {
                tracing::info!(node = node.id, listen = %node.listen, "node added; started");
                children.nodes.push((node.id, child));
            }
            Err(error) => tracing::error!(node = node.id, "cannot start an added node: {error:#}"),
        }
    }
    let (removed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut children.nodes)
        .into_iter()
        .partition(|(id, _)| config.removed_nodes.contains(id));
    children.nodes = kept;
    for (id, mut child) in removed {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        tracing::info!(node = id, "node removed; stopped");
    }
}

/// Waits for SIGINT/SIGTERM, saying once when a child process ends: `up` does
/// not restart it (a node down is what the volume is built to survive).
/// Meanwhile it follows nodes added and removed in the config.
async fn watch_children(children: &mut Children, config_path: &Path, dir: &Path) {
    let stop = terminated();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(CONFIG_POLL_INTERVAL);
    let mut reported = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        follow_membership(config_path, dir, children).await;
        if let Some(meta) = children.meta.as_mut() {
            if let Ok(Some(status)) = meta.try_wait() {
                if reported.insert(0u64) {
                    tracing::error!(%status, "meta exited: the volume is unavailable until `sohofs up` is restarted");
                }
            }
        }
        for (id, child) in children.nodes.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                if reported.insert(*id) {
                    tracing::warn!(node = *id, %status, "node exited; the volume runs degraded until `sohofs up` is restarted");
                }
            }
        }
    }
}

pub(crate) async fn wait_for_port(addr: &str, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited ({status}) while starting; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} in time; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Holds `DIR/up.lock` for as long as `up` runs: one cluster per folder.
fn lock_folder(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            anyhow::anyhow!("another `sohofs up` is running in {}", dir.display())
        } else {
            anyhow::anyhow!("lock {}: {errno}", path.display())
        }
    })
}

pub async fn run(args: UpArgs) -> Result<()> {
    let dir = absolute(&args.dir)?;
    let mountpoint = absolute(&args.mount)?;
    if dir.exists() && !dir.is_dir() {
        bail!("--dir {} is not a directory", dir.display());
    }
    let _lock = lock_folder(&dir)?;
    crate::mount::check_mountpoint(&mountpoint)?;
    let config = prepare(&args, &dir)?;
    let config_path = dir.join(CONFIG_FILE);
    let mut children = Children {
        meta: None,
        nodes: Vec::new(),
    };
    let result = run_cluster(
        &config,
        &config_path,
        &dir,
        &mountpoint,
        args.identity.as_deref(),
        &mut children,
    )
    .await;
    children.stop().await;
    if result.is_ok() {
        println!("sohofs: stopped; the volume's data stays in {}", dir.display());
    }
    result
}

async fn run_cluster(
    config: &ClusterConfig,
    config_path: &Path,
    dir: &Path,
    mountpoint: &Path,
    identity: Option<&Path>,
    children: &mut Children,
) -> Result<()> {
    let meta_addr = config.meta[0].clone();
    let meta_log = dir.join("meta").join("meta.log");
    let meta_args = meta_args(config, dir);
    let meta_child = children.meta.insert(spawn_child(&meta_args, &meta_log)?);
    wait_for_port(&meta_addr, meta_child, "meta", &meta_log).await?;
    for node in &config.nodes {
        let child = start_node(config, dir, node)?;
        children.nodes.push((node.id, child));
    }
    let volume = crate::mount::connect(config, config_path, identity).await?;
    let wanted = config.nodes.len();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut port_retries = 0;
    loop {
        let up = volume.nodes().await?.iter().filter(|n| n.up).count();
        if up >= wanted {
            break;
        }
        for (id, child) in children.nodes.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = dir.join("nodes").join(id.to_string()).join("node.log");
                if port_retries < NODE_PORT_RETRIES_MAX && lost_its_port(&log) {
                    // The port was free when it was picked and taken before
                    // the node bound it (another program's ephemeral port):
                    // pick another one.
                    port_retries += 1;
                    let mut moved = ClusterConfig::load(config_path)?;
                    let node = moved
                        .nodes
                        .iter_mut()
                        .find(|n| n.id == *id)
                        .context("a started node is in the config")?;
                    node.listen = format!("127.0.0.1:{}", free_port()?);
                    tracing::warn!(node = *id, listen = %node.listen, "node's port was taken; starting it on another");
                    let node = node.clone();
                    moved.save(config_path)?;
                    *child = start_node(&moved, dir, &node)?;
                    continue;
                }
                bail!("node {id} exited ({status}) while starting; see {}", log.display());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "only {up} of {wanted} nodes registered in time; see the logs under {}/nodes",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The table the client loaded at connect time predates the nodes' first
    // heartbeats (and, after a restart, their new addresses).
    volume.refresh_nodes().await?;
    let session = crate::mount::mount_volume(volume, mountpoint)?;
    println!(
        "sohofs: {} nodes, {}+{} erasure coding; mounted at {}",
        config.nodes.len(),
        config.volume.k,
        config.volume.m,
        mountpoint.display()
    );
    println!(
        "sohofs: config {}; stop with Ctrl-C (or SIGTERM)",
        config_path.display()
    );
    watch_children(children, config_path, dir).await;
    println!("sohofs: stopping");
    crate::mount::unmount(session, mountpoint).await;
    Ok(())
}
