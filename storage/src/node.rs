//! The node service: serves one shard store over RPC and heartbeats to meta.
//! A node never sees a key: its shards are ciphertext.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sohofs_format::frame::{decode_body, encode_body};
use sohofs_format::messages::{MetaRequest, NodeRequest, NodeResponse};
use sohofs_format::{NodeId, NodeRecord};

use crate::error::{FsError, FsResult};
use crate::fault;
use crate::peers::MetaClient;
use crate::rpc::{self, Handler, Transport};
use crate::shard_store::{ShardKey, ShardStore};

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

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
}

impl NodeHandler {
    async fn answer(&self, request: NodeRequest, data: Bytes) -> FsResult<(NodeResponse, Bytes)> {
        let store = self.store.clone();
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

/// Runs a node until the future is dropped.
pub async fn run_node(config: NodeConfig, store: Arc<dyn ShardStore>) -> std::io::Result<()> {
    let transport = Transport::default();
    let listener = transport.bind(&config.listen).await?;
    tracing::info!(id = config.id, listen = %config.listen, host = %config.host, "node serving");
    let handler = Arc::new(NodeHandler { store: store.clone() });
    let heartbeat = heartbeat_loop(config, store, transport);
    tokio::select! {
        _ = rpc::serve(listener, handler) => Ok(()),
        _ = heartbeat => Ok(()),
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
