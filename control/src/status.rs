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
    let report = StatusJson {
        nodes: nodes
            .into_iter()
            .map(|n| NodeJson {
                id: n.record.id,
                addr: n.record.addr,
                host: n.record.host,
                state: if n.up { "up" } else { "down" },
                capacity_bytes: n.record.capacity_bytes,
                used_bytes: n.record.used_bytes,
                free_bytes: n.record.free_bytes,
                shards: n.record.shards,
            })
            .collect(),
        volume: VolumeJson {
            k: config.volume.k,
            m: config.volume.m,
            files: health.files,
            bytes: health.bytes,
            chunks_total: health.chunks_total,
            chunks_healthy: health.chunks_healthy,
            chunks_degraded: health.chunks_degraded,
            chunks_unreadable: health.chunks_unreadable,
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialise status")?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<22} {:<12} {:<5} {:>12} {:>12} {:>8}",
        "id", "addr", "host", "state", "used", "capacity", "shards"
    );
    for node in &report.nodes {
        println!(
            "{:>4}  {:<22} {:<12} {:<5} {:>12} {:>12} {:>8}",
            node.id,
            node.addr,
            node.host,
            node.state,
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
    Ok(())
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
