//! `sohofs debug`: read-only views of meta's records for tests and for
//! looking into a cluster (no key: ids and placement only, never data).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use sohofs_format::messages::{MetaRequest, MetaResponse};
use sohofs_format::PieceBody;
use sohofs_storage::peers::MetaClient;
use sohofs_storage::rpc::Transport;

use crate::config::ClusterConfig;

/// Chunk records asked for per call.
const CHUNKS_PER_CALL: u32 = 256;

#[derive(Subcommand)]
pub enum DebugVerb {
    /// Every striped piece of every chunk record and where its shards are.
    Stripes {
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Try to decrypt every piece of a file with the keys one machine
    /// identity unwraps (whether or not it is approved now): which chunks
    /// that machine's key material can read. Reads shards, prints no data.
    Pieces {
        #[arg(long)]
        config: std::path::PathBuf,
        /// The machine identity to try (age identity file or SSH key).
        #[arg(long)]
        identity: Option<std::path::PathBuf>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// The file, as a path inside the volume (`/finance/report.txt`).
        path: String,
    },
}

#[derive(Serialize)]
struct PieceJson {
    chunk: u64,
    piece: String,
    policy: u64,
    epoch: u32,
    opened: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct ShardJson {
    index: u8,
    node: Option<u64>,
    host: Option<String>,
}

#[derive(Serialize)]
struct StripeJson {
    ino: u64,
    chunk: u64,
    piece: String,
    k: u8,
    m: u8,
    shards: Vec<ShardJson>,
}

pub async fn run(verb: DebugVerb) -> Result<()> {
    match verb {
        DebugVerb::Stripes { config, json } => stripes(&config, json).await,
        DebugVerb::Pieces {
            config,
            identity,
            json,
            path,
        } => pieces(&config, identity.as_deref(), &path, json).await,
    }
}

async fn pieces(config_path: &Path, identity: Option<&Path>, path: &str, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let volume = crate::mount::connect(&config, config_path, identity).await?;
    // The file is found by its inode: the identity may not be allowed to
    // look up its (sealed) name, so the admin's view of the path is not
    // used; PATH must be reachable with this identity or be given as
    // `inode:N`.
    let ino = match path.strip_prefix("inode:") {
        Some(number) => number.parse().with_context(|| format!("{path}: not an inode number"))?,
        None => crate::protect::resolve(&volume, path).await?.ino,
    };
    let checks = volume
        .check_pieces(ino)
        .await
        .with_context(|| format!("read the chunk records of {path}"))?;
    let rows: Vec<PieceJson> = checks
        .into_iter()
        .map(|check| PieceJson {
            chunk: check.index,
            piece: format!("{:032x}", check.piece_id),
            policy: check.policy,
            epoch: check.epoch,
            opened: check.error.is_none(),
            error: check.error.map(|e| e.to_string()),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for row in &rows {
        println!(
            "chunk {} piece {} policy {} epoch {}: {}",
            row.chunk,
            row.piece,
            row.policy,
            row.epoch,
            row.error.as_deref().unwrap_or("opens")
        );
    }
    Ok(())
}

async fn stripes(config_path: &Path, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let meta = MetaClient::new(&config.meta, Transport::default());
    let context = || format!("ask meta at {}", config.meta.join(", "));
    let hosts: HashMap<u64, String> = match meta.call(&MetaRequest::Nodes).await.with_context(context)? {
        MetaResponse::Nodes(nodes) => nodes.into_iter().map(|n| (n.record.id, n.record.host)).collect(),
        other => anyhow::bail!("meta answered Nodes with {other:?}"),
    };
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let request = MetaRequest::ListChunks {
            after,
            limit: CHUNKS_PER_CALL,
        };
        let chunks = match meta.call(&request).await.with_context(context)? {
            MetaResponse::ChunkList(chunks) => chunks,
            other => anyhow::bail!("meta answered ListChunks with {other:?}"),
        };
        let Some(last) = chunks.last() else { break };
        after = Some((last.0, last.1));
        for (ino, chunk, record) in chunks {
            for extent in record.extents {
                if let PieceBody::Striped {
                    data_shards,
                    parity_shards,
                    shards,
                    ..
                } = extent.piece.body
                {
                    out.push(StripeJson {
                        ino,
                        chunk,
                        piece: format!("{:032x}", extent.piece.id),
                        k: data_shards,
                        m: parity_shards,
                        shards: shards
                            .iter()
                            .enumerate()
                            .map(|(index, loc)| ShardJson {
                                index: index as u8,
                                node: loc.node,
                                host: loc.node.and_then(|n| hosts.get(&n).cloned()),
                            })
                            .collect(),
                    });
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).context("serialise stripes")?);
        return Ok(());
    }
    for stripe in &out {
        let nodes: Vec<String> = stripe
            .shards
            .iter()
            .map(|s| s.node.map_or_else(|| "-".to_string(), |n| n.to_string()))
            .collect();
        println!(
            "ino {} chunk {} piece {} {}+{}: nodes {}",
            stripe.ino,
            stripe.chunk,
            stripe.piece,
            stripe.k,
            stripe.m,
            nodes.join(" ")
        );
    }
    Ok(())
}
