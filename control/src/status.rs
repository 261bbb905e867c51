//! `sohofs status`: nodes and volume health, as a table or JSON.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sohofs_format::messages::{MetaRequest, MetaResponse};
use sohofs_storage::peers::MetaClient;
use sohofs_storage::rpc::Transport;
use sohofs_storage::volume::VolumeStatus;
use sohofs_storage::FsError;

use crate::config::ClusterConfig;

#[derive(Serialize)]
struct NodeJson {
    id: u64,
    addr: String,
    host: String,
    state: &'static str,
    /// Silent past the grace period: its shards are being rebuilt elsewhere.
    lost: bool,
    /// Marked by `sohofs node drain`: its shards are moving to other hosts
    /// (`sohofs node list` shows how many are left).
    draining: bool,
    capacity_bytes: u64,
    used_bytes: u64,
    free_bytes: u64,
    shards: u64,
}

#[derive(Serialize)]
struct VolumeJson {
    k: u8,
    m: u8,
    files: u64,
    bytes: u64,
    chunks_total: u64,
    chunks_healthy: u64,
    chunks_degraded: u64,
    chunks_unreadable: u64,
    rebuild: RebuildJson,
}

#[derive(Serialize)]
struct RebuildJson {
    chunks_left: u64,
    bytes_left: u64,
    bytes_per_s: u64,
    chunks_unrecoverable: u64,
    /// Seconds left at the current speed; null when idle or not yet measured.
    eta_s: Option<u64>,
}

#[derive(Serialize)]
struct StatusJson {
    nodes: Vec<NodeJson>,
    volume: VolumeJson,
}

async fn call(meta: &MetaClient, request: MetaRequest) -> Result<MetaResponse, FsError> {
    meta.call(&request).await
}

pub async fn run(config_path: &Path, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let meta = MetaClient::new(&config.meta, Transport::default());
    let context = || format!("ask meta at {}", config.meta.join(", "));
    let nodes = match call(&meta, MetaRequest::Nodes).await.with_context(context)? {
        MetaResponse::Nodes(nodes) => nodes,
        other => anyhow::bail!("meta answered Nodes with {other:?}"),
    };
    let health: VolumeStatus = match call(&meta, MetaRequest::Status).await.with_context(context)? {
        MetaResponse::Status(status) => status,
        other => anyhow::bail!("meta answered Status with {other:?}"),
    };
    let rebuild = match call(&meta, MetaRequest::Rebuild).await.with_context(context)? {
        MetaResponse::Rebuild(rebuild) => rebuild,
        other => anyhow::bail!("meta answered Rebuild with {other:?}"),
    };
    // The volume's own k and m, not the config's copy (which may be edited).
    let volume = match call(&meta, MetaRequest::Volume).await.with_context(context)? {
        MetaResponse::Volume(volume) => volume,
        other => anyhow::bail!("meta answered Volume with {other:?}"),
    };
    let draining = match call(&meta, MetaRequest::Draining).await.with_context(context)? {
        MetaResponse::Draining(ids) => ids,
        other => anyhow::bail!("meta answered Draining with {other:?}"),
    };
    let report = StatusJson {
        nodes: nodes
            .into_iter()
            .map(|n| NodeJson {
                id: n.record.id,
                addr: n.record.addr,
                host: n.record.host,
                state: if n.up { "up" } else { "down" },
                lost: rebuild.nodes_lost.contains(&n.record.id),
                draining: draining.contains(&n.record.id),
                capacity_bytes: n.record.capacity_bytes,
                used_bytes: n.record.used_bytes,
                free_bytes: n.record.free_bytes,
                shards: n.record.shards,
            })
            .collect(),
        volume: VolumeJson {
            k: volume.data_shards,
            m: volume.parity_shards,
            files: health.files,
            bytes: health.bytes,
            chunks_total: health.chunks_total,
            chunks_healthy: health.chunks_healthy,
            chunks_degraded: health.chunks_degraded,
            chunks_unreadable: health.chunks_unreadable,
            rebuild: RebuildJson {
                chunks_left: rebuild.chunks_left,
                bytes_left: rebuild.bytes_left,
                bytes_per_s: rebuild.bytes_per_s,
                chunks_unrecoverable: rebuild.chunks_unrecoverable,
                eta_s: (rebuild.bytes_left > 0 && rebuild.bytes_per_s > 0)
                    .then(|| rebuild.bytes_left.div_ceil(rebuild.bytes_per_s)),
            },
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialise status")?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<22} {:<12} {:<11} {:>12} {:>12} {:>8}",
        "id", "addr", "host", "state", "used", "capacity", "shards"
    );
    for node in &report.nodes {
        let state = if node.lost { "lost" } else { node.state };
        println!(
            "{:>4}  {:<22} {:<12} {:<11} {:>12} {:>12} {:>8}",
            node.id,
            node.addr,
            node.host,
            if node.draining {
                format!("{state},drain")
            } else {
                state.to_string()
            },
            human_bytes(node.used_bytes),
            human_bytes(node.capacity_bytes),
            node.shards
        );
    }
    let v = &report.volume;
    println!(
        "volume {}+{}: {} files, {}; chunks {} total, {} healthy, {} degraded, {} unreadable",
        v.k,
        v.m,
        v.files,
        human_bytes(v.bytes),
        v.chunks_total,
        v.chunks_healthy,
        v.chunks_degraded,
        v.chunks_unreadable
    );
    let r = &v.rebuild;
    if r.chunks_left > 0 || r.chunks_unrecoverable > 0 {
        let eta = match r.eta_s {
            Some(seconds) => format!("ETA {}", human_duration(seconds)),
            None => "ETA unknown".into(),
        };
        println!(
            "rebuild: {} chunks, {} left at {}/s, {eta}{}",
            r.chunks_left,
            human_bytes(r.bytes_left),
            human_bytes(r.bytes_per_s),
            if r.chunks_unrecoverable > 0 {
                format!("; {} chunks have too few shards to rebuild now", r.chunks_unrecoverable)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn human_duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
