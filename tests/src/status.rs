//! The JSON that `sohofs status --json` prints, as the CLI contract defines
//! it. Fields beyond these are allowed; a missing or mistyped field fails the
//! parse, and so the test.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    pub volume: VolumeStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeStatus {
    pub id: u32,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub state: NodeState,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub shards: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VolumeStatus {
    pub k: u32,
    pub m: u32,
    /// Regular files in the volume.
    pub files: u64,
    /// Their logical size in bytes, added up (not the stored size with parity).
    pub bytes: u64,
    pub chunks_total: u64,
    pub chunks_healthy: u64,
    pub chunks_degraded: u64,
    pub chunks_unreadable: u64,
}

impl Status {
    pub fn parse(json: &[u8]) -> Result<Status, String> {
        serde_json::from_slice(json).map_err(|error| {
            format!(
                "status --json printed what the contract does not allow ({error}):\n{}",
                String::from_utf8_lossy(json)
            )
        })
    }

    /// Node id to state, for comparing against an expected map in one assert.
    pub fn node_states(&self) -> BTreeMap<u32, NodeState> {
        self.nodes.iter().map(|node| (node.id, node.state)).collect()
    }

    pub fn node(&self, id: u32) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.id == id)
    }
}

impl NodeStatus {
    /// The address, checked to be a loopback socket address as the contract
    /// says (`127.0.0.1:P`).
    pub fn loopback_addr(&self) -> Result<SocketAddr, String> {
        let addr: SocketAddr = self
            .addr
            .parse()
            .map_err(|error| format!("node {} addr {:?}: {error}", self.id, self.addr))?;
        if !addr.ip().is_loopback() || addr.port() == 0 {
            return Err(format!("node {} addr {addr} is not 127.0.0.1:PORT", self.id));
        }
        Ok(addr)
    }
}

/// The states expected when the nodes in `down` are down and the rest of
/// `1..=nodes` are up.
pub fn expected_states(nodes: u32, down: &[u32]) -> BTreeMap<u32, NodeState> {
    (1..=nodes)
        .map(|id| {
            let state = if down.contains(&id) {
                NodeState::Down
            } else {
                NodeState::Up
            };
            (id, state)
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_the_contract_example_and_ignores_extra_fields() {
        let json = br#"{"nodes":[{"id":1,"addr":"127.0.0.1:4100","state":"up","capacity_bytes":10,"used_bytes":2,"shards":3,"extra":true},
                                 {"id":2,"addr":"127.0.0.1:4101","state":"down","capacity_bytes":10,"used_bytes":0,"shards":0}],
                        "volume":{"k":1,"m":1,"files":4,"bytes":5,"chunks_total":6,"chunks_healthy":3,"chunks_degraded":2,"chunks_unreadable":1}}"#;
        let status = Status::parse(json).expect("parse");
        assert_eq!(status.node_states(), expected_states(2, &[2]));
        assert_eq!(status.node(1).unwrap().loopback_addr().unwrap().port(), 4100);
        assert_eq!(status.volume.chunks_unreadable, 1);
    }

    #[test]
    fn rejects_an_unknown_state_and_a_missing_field() {
        let bad_state = br#"{"nodes":[{"id":1,"addr":"127.0.0.1:1","state":"sleepy","capacity_bytes":0,"used_bytes":0,"shards":0}],
                             "volume":{"k":1,"m":1,"files":0,"bytes":0,"chunks_total":0,"chunks_healthy":0,"chunks_degraded":0,"chunks_unreadable":0}}"#;
        assert!(Status::parse(bad_state).is_err());
        let no_volume = br#"{"nodes":[]}"#;
        assert!(Status::parse(no_volume).is_err());
    }
}
