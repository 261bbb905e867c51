//! Typed clients for the two services: meta and node.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sohofs_format::frame::{decode_body, encode_body};
use sohofs_format::messages::{ListedShard, MetaRequest, MetaResponse, NodeRequest, NodeResponse, SHARDS_LISTED_MAX};

use crate::error::{FsError, FsResult};
use crate::rpc::{RpcClient, Transport};
use crate::shard_store::ShardKey;

/// A client of the meta service. It takes a list of addresses and uses the
/// first that answers, so that a replicated meta needs no change here.
#[derive(Debug, Clone)]
pub struct MetaClient {
    peers: Arc<Vec<RpcClient>>,
}

impl MetaClient {
    pub fn new(addrs: &[String], transport: Transport) -> Self {
        Self::with_call_timeout(addrs, transport, crate::rpc::CALL_TIMEOUT_DEFAULT)
    }

    /// For calls that are answered when long work is done (`Scrub`).
    pub fn with_call_timeout(addrs: &[String], transport: Transport, timeout: Duration) -> Self {
        MetaClient {
            peers: Arc::new(
                addrs
                    .iter()
                    .map(|a| RpcClient::new(a.clone(), transport.clone()).with_call_timeout(timeout))
                    .collect(),
            ),
        }
    }

    /// Sends `request`; an error answer becomes `Err` of its kind.
    pub async fn call(&self, request: &MetaRequest) -> FsResult<MetaResponse> {
        let body = encode_body(request);
        let mut last_error = FsError::Unavailable("no meta address configured".into());
        for peer in self.peers.iter() {
            match peer.call(&body, &[]).await {
                Ok(frame) => {
                    return match decode_body::<MetaResponse>(&frame.body)
                        .map_err(|e| FsError::Protocol(format!("meta answer: {e}")))?
                    {
                        MetaResponse::Error(kind) => Err(FsError::from_kind(kind)),
                        response => Ok(response),
                    };
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }
}

/// How long a client waits for one shard before reading parity instead.
pub const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one storage node.
#[derive(Debug)]
pub struct NodeClient {
    rpc: RpcClient,
}

impl NodeClient {
    pub fn new(addr: impl Into<String>, transport: Transport) -> Self {
        NodeClient {
            rpc: RpcClient::new(addr, transport).with_call_timeout(SHARD_CALL_TIMEOUT),
        }
    }

    /// A client whose calls may take `timeout` (a whole scrub).
    pub fn with_call_timeout(addr: impl Into<String>, transport: Transport, timeout: Duration) -> Self {
        NodeClient {
            rpc: RpcClient::new(addr, transport).with_call_timeout(timeout),
        }
    }

    pub fn addr(&self) -> &str {
        self.rpc.addr()
    }

    /// Has the node re-hash every shard; returns how many it checked and the
    /// ones that failed.
    pub async fn scrub(&self, bytes_per_s: u64) -> FsResult<(u64, Vec<ShardKey>)> {
        match self.call(&NodeRequest::Scrub { bytes_per_s }, &[]).await? {
            (
                NodeResponse::Scrubbed {
                    shards_checked,
                    corrupt,
                },
                _,
            ) => Ok((
                shards_checked,
                corrupt
                    .into_iter()
                    .map(|(piece_id, shard_index)| ShardKey { piece_id, shard_index })
                    .collect(),
            )),
            _ => Err(FsError::Protocol("unexpected answer to Scrub".into())),
        }
    }

    /// Every shard the node holds, with its age, page by page.
    pub async fn list_all_shards(&self) -> FsResult<Vec<ListedShard>> {
        let mut all: Vec<ListedShard> = Vec::new();
        loop {
            let after = all.last().map(|s| (s.piece_id, s.shard_index));
            let request = NodeRequest::ListShards {
                after,
                limit: SHARDS_LISTED_MAX,
            };
            match self.call(&request, &[]).await? {
                (NodeResponse::Shards(page), _) => {
                    if page.is_empty() {
                        return Ok(all);
                    }
                    all.extend(page);
                }
                _ => return Err(FsError::Protocol("unexpected answer to ListShards".into())),
            }
        }
    }

    async fn call(&self, request: &NodeRequest, data: &[u8]) -> FsResult<(NodeResponse, Bytes)> {
        let frame = self.rpc.call(&encode_body(request), data).await?;
        match decode_body::<NodeResponse>(&frame.body).map_err(|e| FsError::Protocol(format!("node answer: {e}")))? {
            NodeResponse::Error(kind) => Err(FsError::from_kind(kind)),
            response => Ok((response, frame.data)),
        }
    }

    pub async fn put_shard(&self, key: ShardKey, payload: &[u8]) -> FsResult<()> {
        self.put_shard_hashed(key, payload, *blake3::hash(payload).as_bytes())
            .await
    }

    /// Like [`NodeClient::put_shard`], with the payload's BLAKE3 already known
    /// (the writer hashes every shard once, off the async reactor).
    pub async fn put_shard_hashed(&self, key: ShardKey, payload: &[u8], hash: [u8; 32]) -> FsResult<()> {
        let request = NodeRequest::PutShard {
            piece_id: key.piece_id,
            shard_index: key.shard_index,
            hash,
        };
        match self.call(&request, payload).await? {
            (NodeResponse::Ok, _) => Ok(()),
            _ => Err(FsError::Protocol("unexpected answer to PutShard".into())),
        }
    }

    pub async fn get_shard(&self, key: ShardKey) -> FsResult<Bytes> {
        let request = NodeRequest::GetShard {
            piece_id: key.piece_id,
            shard_index: key.shard_index,
        };
        match self.call(&request, &[]).await? {
            (NodeResponse::Shard, data) => Ok(data),
            _ => Err(FsError::Protocol("unexpected answer to GetShard".into())),
        }
    }

    pub async fn delete_shard(&self, key: ShardKey) -> FsResult<()> {
        let request = NodeRequest::DeleteShard {
            piece_id: key.piece_id,
            shard_index: key.shard_index,
        };
        match self.call(&request, &[]).await? {
            (NodeResponse::Ok, _) => Ok(()),
            _ => Err(FsError::Protocol("unexpected answer to DeleteShard".into())),
        }
    }
}
