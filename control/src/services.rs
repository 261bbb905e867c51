//! `sohofs meta serve` and `sohofs node serve`: the long-running services.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sohofs_storage::heal::{self, HealSettings};
use sohofs_storage::kv::RocksKv;
use sohofs_storage::meta::{self, Meta, VolumeParams};
use sohofs_storage::node::{self, NodeConfig, ScrubSchedule};
use sohofs_storage::shard_store::DiskShardStore;

pub const CHUNK_BYTES_DEFAULT: u32 = 4 * 1024 * 1024;
/// Files up to this size (one page) are kept inline, sealed, in their chunk
/// record at meta: a small file then costs one commit at meta instead of
/// k+m shard writes (each fsynced on its node) and the commit.
pub const INLINE_BYTES_MAX_DEFAULT: u32 = 4096;

#[derive(Subcommand)]
pub enum MetaVerb {
    /// Serve the namespace from a RocksDB database in DIR.
    Serve {
        /// Folder of the metadata database.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        /// Data shards per stripe, used when the volume is created.
        #[arg(long, default_value_t = 4)]
        k: u8,
        /// Parity shards per stripe, used when the volume is created.
        #[arg(long, default_value_t = 2)]
        m: u8,
        /// Shards that must be durable for a write to succeed (default k+1).
        #[arg(long)]
        write_quorum: Option<u8>,
        #[arg(long, default_value_t = CHUNK_BYTES_DEFAULT)]
        chunk_bytes: u32,
        /// Seconds a node may be silent before its shards are rebuilt elsewhere.
        #[arg(long, value_name = "SECS", default_value_t = heal::GRACE_PERIOD_DEFAULT.as_secs())]
        grace_period: u64,
        /// Shard bytes rebuilt (or moved by drains and rebalancing) per second at most.
        #[arg(long, default_value_t = heal::REBUILD_BYTES_PER_S_DEFAULT)]
        rebuild_bytes_per_s: u64,
        /// Seconds a shard that no record names must be old before it is collected.
        #[arg(long, value_name = "SECS", default_value_t = heal::ORPHAN_SAFETY_WINDOW_DEFAULT.as_secs())]
        orphan_safety_window: u64,
        /// Seconds between sweeps for orphan shards (0: never).
        #[arg(long, value_name = "SECS", default_value_t = heal::ORPHAN_SWEEP_INTERVAL_DEFAULT.as_secs())]
        orphan_sweep_interval: u64,
    },
}

/// `sohofs node serve`: a storage node that joins the cluster by
/// heartbeating to meta (meta registers it at its first heartbeat).
#[derive(Args, Debug)]
pub struct NodeServeArgs {
    /// Node id, unique in the cluster (a removed node's id is never taken again).
    #[arg(long)]
    pub id: u64,
    /// The donated folder.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: String,
    /// Meta service address (repeat for several).
    #[arg(long, required = true)]
    pub meta: Vec<String>,
    /// Failure domain name (the machine); defaults to this host's name.
    #[arg(long)]
    pub host: Option<String>,
    /// Seconds between scrubs of every shard (0: only on `sohofs scrub`).
    #[arg(long, value_name = "SECS", default_value_t = node::SCRUB_INTERVAL_DEFAULT.as_secs())]
    pub scrub_interval: u64,
    /// Shard bytes a scrub reads per second at most.
    #[arg(long, default_value_t = node::SCRUB_BYTES_PER_S_DEFAULT)]
    pub scrub_bytes_per_s: u64,
}

pub fn default_write_quorum(k: u8, m: u8) -> u8 {
    if m == 0 {
        k
    } else {
        k + 1
    }
}

pub fn check_geometry(k: u8, m: u8, write_quorum: u8, chunk_bytes: u32) -> Result<()> {
    anyhow::ensure!(k >= 1, "k must be at least 1");
    anyhow::ensure!(k as u32 + m as u32 <= 255, "k + m must be at most 255");
    anyhow::ensure!(
        write_quorum >= k && write_quorum <= k + m,
        "write quorum {write_quorum} must be between k ({k}) and k+m ({})",
        k + m
    );
    anyhow::ensure!(
        (64 * 1024..=64 * 1024 * 1024).contains(&chunk_bytes),
        "chunk size must be between 64 KiB and 64 MiB"
    );
    Ok(())
}

pub async fn meta(verb: MetaVerb) -> Result<()> {
    let MetaVerb::Serve {
        dir,
        listen,
        k,
        m,
        write_quorum,
        chunk_bytes,
        grace_period,
        rebuild_bytes_per_s,
        orphan_safety_window,
        orphan_sweep_interval,
    } = verb;
    let write_quorum = write_quorum.unwrap_or_else(|| default_write_quorum(k, m));
    check_geometry(k, m, write_quorum, chunk_bytes)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let db_path = dir.join("db");
    let meta = tokio::task::spawn_blocking(move || -> Result<Meta> {
        let kv = Arc::new(RocksKv::open(&db_path)?);
        let params = VolumeParams {
            data_shards: k,
            parity_shards: m,
            write_quorum,
            chunk_bytes,
            inline_bytes_max: INLINE_BYTES_MAX_DEFAULT,
        };
        let heal = HealSettings {
            grace_period: Duration::from_secs(grace_period),
            rebuild_bytes_per_s,
            orphan_safety_window: Duration::from_secs(orphan_safety_window),
            orphan_sweep_interval: (orphan_sweep_interval > 0).then(|| Duration::from_secs(orphan_sweep_interval)),
        };
        Ok(Meta::open(kv, Some(params), meta::NODE_DOWN_AFTER_DEFAULT)?.with_heal(heal))
    })
    .await??;
    let meta = Arc::new(meta);
    tokio::select! {
        served = meta::run_meta(meta, &listen) => served.with_context(|| format!("serve meta on {listen}")),
        _ = crate::up::terminated() => Ok(()),
    }
}

pub async fn node(args: NodeServeArgs) -> Result<()> {
    let NodeServeArgs {
        id,
        dir,
        listen,
        meta,
        host,
        scrub_interval,
        scrub_bytes_per_s,
    } = args;
    let host = match host {
        Some(host) => host,
        None => nix::unistd::gethostname()
            .context("read this machine's host name")?
            .to_string_lossy()
            .into_owned(),
    };
    let store = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || DiskShardStore::open(&dir)).await??
    };
    let scrub = ScrubSchedule {
        interval: (scrub_interval > 0).then(|| Duration::from_secs(scrub_interval)),
        bytes_per_s: scrub_bytes_per_s,
    };
    let config = NodeConfig {
        id,
        advertise: listen.clone(),
        listen,
        host,
        meta_addrs: meta,
    };
    tokio::select! {
        served = node::run_node_with(config, Arc::new(store), scrub) => served.context("serve node"),
        _ = crate::up::terminated() => Ok(()),
    }
}
