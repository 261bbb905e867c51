//! The node service: serves one shard store over RPC and heartbeats to meta.
//! A node never sees a key: its shards are ciphertext.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sohofs_format::frame::{decode_body, encode_body};
use sohofs_format::messages::{ListedShard, MetaRequest, NodeRequest, NodeResponse, ShardRef, SHARDS_LISTED_MAX};
use sohofs_format::{NodeId, NodeRecord};

use crate::error::{FsError, FsResult};
use crate::fault;
use crate::peers::MetaClient;
use crate::rpc::{self, Handler, Transport};
use crate::shard_store::{ShardKey, ShardStore};

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How fast a scrub reads shards unless configured otherwise: a fraction of
/// a workstation disk, so that its owner does not notice.
pub const SCRUB_BYTES_PER_S_DEFAULT: u64 = 32 * 1024 * 1024;
/// How often a node scrubs all its shards unless configured otherwise.
pub const SCRUB_INTERVAL_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);

/// When and how fast a node re-hashes its shards on its own.
#[derive(Debug, Clone, Copy)]
pub struct ScrubSchedule {
    /// `None`: only when asked (`sohofs scrub`).
    pub interval: Option<Duration>,
    pub bytes_per_s: u64,
}

impl Default for ScrubSchedule {
    fn default() -> Self {
        ScrubSchedule {
            interval: Some(SCRUB_INTERVAL_DEFAULT),
            bytes_per_s: SCRUB_BYTES_PER_S_DEFAULT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Address to listen on.
    pub listen: String,
    /// Address that clients use to reach this node (the listen address unless
    /// it is a wildcard).
    pub advertise: String,
    /// The failure domain this node belongs to.
    pub host: String,
    pub meta_addrs: Vec<String>,
}

struct NodeHandler {
    store: Arc<dyn ShardStore>,
    scrub: ScrubSchedule,
}

impl NodeHandler {
    async fn answer(&self, request: NodeRequest, data: Bytes) -> FsResult<(NodeResponse, Bytes)> {
        let store = self.store.clone();
        let scrub_bytes_per_s = self.scrub.bytes_per_s;
        let blocking = move || -> FsResult<(NodeResponse, Bytes)> {
            match request {
                NodeRequest::PutShard {
                    piece_id,
                    shard_index,
                    hash,
                } => {
                    if *blake3::hash(&data).as_bytes() != hash {
                        return Err(FsError::Corrupt("shard arrived damaged".into()));
                    }
                    store.put(ShardKey { piece_id, shard_index }, &data)?;
                    Ok((NodeResponse::Ok, Bytes::new()))
                }
                NodeRequest::GetShard { piece_id, shard_index } => {
                    let payload = store.get(ShardKey { piece_id, shard_index })?;
                    Ok((NodeResponse::Shard, Bytes::from(payload)))
                }
                NodeRequest::DeleteShard { piece_id, shard_index } => {
                    store.delete(ShardKey { piece_id, shard_index })?;
                    Ok((NodeResponse::Ok, Bytes::new()))
                }
                NodeRequest::Stat => {
                    let stat = store.stat()?;
                    Ok((
                        NodeResponse::Stat {
                            capacity_bytes: stat.capacity_bytes,
                            free_bytes: stat.free_bytes,
                            used_bytes: stat.used_bytes,
                            shards: stat.shards,
                        },
                        Bytes::new(),
                    ))
                }
                NodeRequest::ListShards { after, limit } => {
                    // Sorted so that pages follow each other. A page costs a
                    // listing of the store's folders, and a stat of the
                    // shards it returns.
                    let mut keys = store.list()?;
                    keys.sort();
                    let limit = limit.clamp(1, SHARDS_LISTED_MAX) as usize;
                    let mut page = Vec::with_capacity(limit);
                    for key in keys
                        .into_iter()
                        .filter(|key| after.is_none_or(|after| (key.piece_id, key.shard_index) > after))
                    {
                        if page.len() == limit {
                            break;
                        }
                        if let Some(age) = store.age(key)? {
                            page.push(ListedShard {
                                piece_id: key.piece_id,
                                shard_index: key.shard_index,
                                age_s: age.as_secs(),
                            });
                        }
                    }
                    Ok((NodeResponse::Shards(page), Bytes::new()))
                }
                NodeRequest::Scrub { bytes_per_s } => {
                    let rate = if bytes_per_s == 0 {
                        scrub_bytes_per_s
                    } else {
                        bytes_per_s
                    };
                    let outcome = crate::shard_store::scrub(store.as_ref(), rate)?;
                    if !outcome.corrupt.is_empty() {
                        tracing::warn!(corrupt = outcome.corrupt.len(), "scrub found corrupt shards");
                    }
                    Ok((
                        NodeResponse::Scrubbed {
                            shards_checked: outcome.shards_checked,
                            corrupt: outcome.corrupt.iter().map(|k| (k.piece_id, k.shard_index)).collect(),
                        },
                        Bytes::new(),
                    ))
                }
            }
        };
        tokio::task::spawn_blocking(blocking)
            .await
            .map_err(|e| FsError::Io(format!("shard store task failed: {e}")))?
    }
}

impl Handler for NodeHandler {
    async fn handle(&self, body: Vec<u8>, data: Bytes) -> (Vec<u8>, Bytes) {
        let request = match decode_body::<NodeRequest>(&body) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "undecodable node request");
                return (
                    encode_body(&NodeResponse::Error(FsError::Protocol(String::new()).kind())),
                    Bytes::new(),
                );
            }
        };
        match self.answer(request, data).await {
            Ok((response, data)) => (encode_body(&response), data),
            Err(error) => {
                if !matches!(error, FsError::NotFound) {
                    tracing::warn!(%error, "shard request failed");
                }
                (encode_body(&NodeResponse::Error(error.kind())), Bytes::new())
            }
        }
    }
}

/// Runs a node with the default scrub schedule until the future is dropped.
pub async fn run_node(config: NodeConfig, store: Arc<dyn ShardStore>) -> std::io::Result<()> {
    run_node_with(config, store, ScrubSchedule::default()).await
}

/// Runs a node until the future is dropped.
pub async fn run_node_with(
    config: NodeConfig,
    store: Arc<dyn ShardStore>,
    scrub: ScrubSchedule,
) -> std::io::Result<()> {
    let transport = Transport::default();
    let listener = transport.bind(&config.listen).await?;
    tracing::info!(id = config.id, listen = %config.listen, host = %config.host, "node serving");
    let handler = Arc::new(NodeHandler {
        store: store.clone(),
        scrub,
    });
    let scrubber = scrub_loop(config.clone(), store.clone(), scrub, transport.clone());
    let heartbeat = heartbeat_loop(config, store, transport);
    tokio::select! {
        _ = rpc::serve(listener, handler) => Ok(()),
        _ = heartbeat => Ok(()),
        _ = scrubber => Ok(()),
    }
}

/// Scrubs the store every `schedule.interval` and reports what fails its
/// hash to meta, which rebuilds it from the other shards of its stripe.
async fn scrub_loop(config: NodeConfig, store: Arc<dyn ShardStore>, schedule: ScrubSchedule, transport: Transport) {
    let Some(interval) = schedule.interval else {
        return std::future::pending().await;
    };
    let meta = MetaClient::new(&config.meta_addrs, transport);
    loop {
        tokio::time::sleep(interval).await;
        let store = store.clone();
        let outcome =
            tokio::task::spawn_blocking(move || crate::shard_store::scrub(store.as_ref(), schedule.bytes_per_s)).await;
        let corrupt = match outcome {
            Ok(Ok(outcome)) => {
                tracing::info!(
                    checked = outcome.shards_checked,
                    corrupt = outcome.corrupt.len(),
                    "scrub done"
                );
                outcome.corrupt
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "scrub failed");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "scrub task failed");
                continue;
            }
        };
        if corrupt.is_empty() {
            continue;
        }
        let shards = corrupt
            .into_iter()
            .map(|key| ShardRef {
                node: config.id,
                piece_id: key.piece_id,
                shard_index: key.shard_index,
            })
            .collect();
        if let Err(error) = meta.call(&MetaRequest::ReportCorrupt { shards }).await {
            tracing::warn!(%error, "cannot report corrupt shards to meta; the next scrub will");
        }
    }
}

async fn heartbeat_loop(config: NodeConfig, store: Arc<dyn ShardStore>, transport: Transport) {
    let meta = MetaClient::new(&config.meta_addrs, transport);
    let mut warned = false;
    loop {
        if fault::failpoint_async(fault::NODE_HEARTBEAT).await.is_err() {
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            continue;
        }
        let stat = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.stat()).await
        };
        match stat {
            Ok(Ok(stat)) => {
                let record = NodeRecord {
                    id: config.id,
                    addr: config.advertise.clone(),
                    host: config.host.clone(),
                    capacity_bytes: stat.capacity_bytes,
                    free_bytes: stat.free_bytes,
                    used_bytes: stat.used_bytes,
                    shards: stat.shards,
                };
                match meta.call(&MetaRequest::Heartbeat { node: record }).await {
                    Ok(_) => warned = false,
                    Err(error) if !warned => {
                        tracing::warn!(%error, "heartbeat to meta failed; retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot stat the shard store"),
            Err(error) => tracing::warn!(%error, "stat task failed"),
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
}
