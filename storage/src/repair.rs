//! Repair planning: a pure decision over a view of the cluster. It takes
//! what meta knows (nodes and their liveness, the stripes of every chunk
//! record, shards reported corrupt) and returns a plan: which shards to
//! rebuild, from which sources, onto which nodes. The heal service
//! (`heal.rs`) carries the plan out; tests assert plans.
//!
//! Rules:
//! - a shard is *missing* when the write could not place it (no node), when
//!   its node is lost (silent past the grace period) or unknown, or when it
//!   was reported corrupt (then it is rewritten in place on its own node,
//!   which keeps the host layout as it is);
//! - a shard on a node that is only unreachable (within the grace period)
//!   is neither a source nor missing: a workstation that reboots causes no
//!   rebuild, and its host stays taken;
//! - a missing shard goes to a node on a host that holds no other shard of
//!   the stripe (the host is the failure domain), most free space first;
//! - never onto a node where the GC queue still holds the same piece;
//! - stripes with the least redundancy left come first.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sohofs_format::messages::ShardRef;
use sohofs_format::{Ino, NodeId, ShardLoc};

use crate::placement::{choose_nodes, NodeView};

/// What repair needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    pub id: NodeId,
    pub host: String,
    pub free_bytes: u64,
    /// Heartbeated recently: it can serve shards and take new ones.
    pub reachable: bool,
    /// Silent for longer than the grace period: its shards are rebuilt.
    pub lost: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeHealth>,
    /// Shards reported corrupt (by scrub or by reads) and not yet repaired.
    pub suspects: HashSet<ShardRef>,
    /// Shards waiting in the GC queue. A shard is never rebuilt onto a node
    /// that still has its piece queued for deletion there: the collector
    /// would delete the new copy (a shard moved away from a node that was
    /// lost and came back, then moved back to it).
    pub gc_pending: HashSet<ShardRef>,
}

/// One striped piece of one chunk, as its chunk record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeView {
    pub ino: Ino,
    pub chunk_index: u64,
    pub piece_id: u128,
    pub sealed_len: u32,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub shards: Vec<ShardLoc>,
}

/// Put a rebuilt shard on `to`; `from` is where the record says it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMove {
    pub shard_index: u8,
    pub from: Option<NodeId>,
    pub to: NodeId,
}

/// Rebuild some shards of one stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairCommand {
    pub ino: Ino,
    pub chunk_index: u64,
    pub piece_id: u128,
    pub sealed_len: u32,
    pub data_shards: u8,
    pub parity_shards: u8,
    /// Every shard's hash from the record: sources and rebuilt shards are
    /// checked against it.
    pub hashes: Vec<[u8; 32]>,
    /// Readable shards (index, node), data shards first; any k of them do.
    pub sources: Vec<(u8, NodeId)>,
    pub moves: Vec<ShardMove>,
    /// Readable shards beyond k (0: one more loss makes the stripe unreadable).
    pub redundancy_left: u32,
    /// Bytes of one shard.
    pub shard_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// Least redundancy left first.
    pub commands: Vec<RepairCommand>,
    /// Chunks with at least one shard missing (placeable now or not).
    pub chunks_left: u64,
    /// Bytes of all missing shards.
    pub bytes_left: u64,
    /// Chunks with a stripe that has fewer than k readable shards now.
    pub chunks_unrecoverable: u64,
    /// Suspects that no stripe references (the shard was replaced or its
    /// record changed): nothing to repair, forget them.
    pub stale_suspects: Vec<ShardRef>,
}

impl RepairCommand {
    /// Shard bytes this command writes.
    pub fn bytes(&self) -> u64 {
        self.shard_bytes * self.moves.len() as u64
    }
}

enum ShardState {
    Source(NodeId),
    /// On a node that is unreachable but within its grace period.
    Waiting(NodeId),
    Missing(Option<NodeId>),
    /// Reported corrupt, on a reachable node: rewritten in place.
    Corrupt(NodeId),
}

/// Plans the repair of `stripes` over `view`. Deterministic: the same view
/// gives the same plan.
pub fn plan_repairs(view: &ClusterView, stripes: &[StripeView]) -> RepairPlan {
    let nodes: BTreeMap<NodeId, &NodeHealth> = view.nodes.iter().map(|n| (n.id, n)).collect();
    let candidates: Vec<NodeView> = view
        .nodes
        .iter()
        .map(|n| NodeView {
            id: n.id,
            host: n.host.clone(),
            free_bytes: n.free_bytes,
            up: n.reachable && !n.lost,
        })
        .collect();
    let mut plan = RepairPlan::default();
    let mut chunks_left = BTreeSet::new();
    let mut chunks_unrecoverable = BTreeSet::new();
    let mut referenced_suspects = HashSet::new();
    for stripe in stripes {
        let (k, m) = (stripe.data_shards as usize, stripe.parity_shards as usize);
        if k == 0 || stripe.shards.len() != k + m {
            continue;
        }
        let states: Vec<ShardState> = stripe
            .shards
            .iter()
            .enumerate()
            .map(|(index, loc)| {
                let Some(id) = loc.node else {
                    return ShardState::Missing(None);
                };
                let suspect = ShardRef {
                    node: id,
                    piece_id: stripe.piece_id,
                    shard_index: index as u8,
                };
                let is_suspect = view.suspects.contains(&suspect);
                if is_suspect {
                    referenced_suspects.insert(suspect);
                }
                match nodes.get(&id) {
                    None => ShardState::Missing(Some(id)),
                    Some(node) if node.lost => ShardState::Missing(Some(id)),
                    Some(node) if !node.reachable => ShardState::Waiting(id),
                    Some(_) if is_suspect => ShardState::Corrupt(id),
                    Some(_) => ShardState::Source(id),
                }
            })
            .collect();
        let broken = states
            .iter()
            .filter(|s| matches!(s, ShardState::Missing(_) | ShardState::Corrupt(_)))
            .count();
        if broken == 0 {
            continue;
        }
        let shard_bytes = crate::codec::shard_len(stripe.sealed_len as usize, k) as u64;
        let chunk = (stripe.ino, stripe.chunk_index);
        chunks_left.insert(chunk);
        plan.bytes_left += shard_bytes * broken as u64;
        let sources: Vec<(u8, NodeId)> = states
            .iter()
            .enumerate()
            .filter_map(|(index, s)| match s {
                ShardState::Source(id) => Some((index as u8, *id)),
                _ => None,
            })
            .collect();
        if sources.len() < k {
            chunks_unrecoverable.insert(chunk);
            continue;
        }
        // Hosts that keep a shard of this stripe: a rebuilt shard goes elsewhere.
        let mut taken_hosts: HashSet<String> = HashSet::new();
        let mut taken_nodes: HashSet<NodeId> = HashSet::new();
        for state in &states {
            if let ShardState::Source(id) | ShardState::Waiting(id) | ShardState::Corrupt(id) = state {
                taken_nodes.insert(*id);
                if let Some(node) = nodes.get(id) {
                    taken_hosts.insert(node.host.clone());
                }
            }
        }
        let missing: Vec<(u8, Option<NodeId>)> = states
            .iter()
            .enumerate()
            .filter_map(|(index, s)| match s {
                ShardState::Missing(from) => Some((index as u8, *from)),
                _ => None,
            })
            .collect();
        for pending in view.gc_pending.iter().filter(|g| g.piece_id == stripe.piece_id) {
            taken_nodes.insert(pending.node);
        }
        let targets = choose_nodes(
            &candidates,
            missing.len(),
            &taken_nodes,
            &taken_hosts,
            stripe.piece_id as u64,
        );
        let mut moves: Vec<ShardMove> = states
            .iter()
            .enumerate()
            .filter_map(|(index, s)| match s {
                ShardState::Corrupt(id) => Some(ShardMove {
                    shard_index: index as u8,
                    from: Some(*id),
                    to: *id,
                }),
                _ => None,
            })
            .collect();
        moves.extend(
            missing
                .iter()
                .zip(targets)
                .map(|(&(shard_index, from), to)| ShardMove { shard_index, from, to }),
        );
        moves.sort_by_key(|mv| mv.shard_index);
        if moves.is_empty() {
            continue;
        }
        plan.commands.push(RepairCommand {
            ino: stripe.ino,
            chunk_index: stripe.chunk_index,
            piece_id: stripe.piece_id,
            sealed_len: stripe.sealed_len,
            data_shards: stripe.data_shards,
            parity_shards: stripe.parity_shards,
            hashes: stripe.shards.iter().map(|s| s.hash).collect(),
            redundancy_left: (sources.len() - k) as u32,
            sources,
            moves,
            shard_bytes,
        });
    }
    plan.commands
        .sort_by_key(|c| (c.redundancy_left, c.ino, c.chunk_index, c.piece_id));
    plan.chunks_left = chunks_left.len() as u64;
    plan.chunks_unrecoverable = chunks_unrecoverable.len() as u64;
    let mut stale: Vec<ShardRef> = view
        .suspects
        .iter()
        .filter(|s| !referenced_suspects.contains(s))
        .copied()
        .collect();
    stale.sort();
    plan.stale_suspects = stale;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, host: &str) -> NodeHealth {
        NodeHealth {
            id,
            host: host.into(),
            free_bytes: 100 << 30,
            reachable: true,
            lost: false,
        }
    }

    /// Seven nodes, each its own host `h<id>`.
    fn seven() -> Vec<NodeHealth> {
        (1..=7).map(|id| node(id, &format!("h{id}"))).collect()
    }

    fn stripe(piece_id: u128, nodes: &[Option<NodeId>]) -> StripeView {
        StripeView {
            ino: 10,
            chunk_index: piece_id as u64,
            piece_id,
            sealed_len: 4000,
            data_shards: 4,
            parity_shards: 2,
            shards: nodes
                .iter()
                .enumerate()
                .map(|(i, node)| ShardLoc {
                    node: *node,
                    hash: [i as u8; 32],
                })
                .collect(),
        }
    }

    fn all_on(first: NodeId) -> Vec<Option<NodeId>> {
        (first..first + 6).map(Some).collect()
    }

    fn lose(nodes: &mut [NodeHealth], id: NodeId) {
        let node = nodes.iter_mut().find(|n| n.id == id).unwrap();
        node.reachable = false;
        node.lost = true;
    }

    #[test]
    fn healthy_stripes_need_nothing() {
        let view = ClusterView {
            nodes: seven(),
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &all_on(1)), stripe(2, &all_on(2))]);
        assert_eq!(plan, RepairPlan::default());
    }

    #[test]
    fn a_lost_node_is_rebuilt_on_the_one_free_host() {
        let mut nodes = seven();
        lose(&mut nodes, 3);
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &all_on(1))]);
        assert_eq!(plan.commands.len(), 1);
        let command = &plan.commands[0];
        assert_eq!(
            command.moves,
            vec![ShardMove {
                shard_index: 2,
                from: Some(3),
                to: 7
            }]
        );
        assert_eq!(command.sources, vec![(0, 1), (1, 2), (3, 4), (4, 5), (5, 6)]);
        assert_eq!(command.redundancy_left, 1);
        assert_eq!(command.shard_bytes, 1000);
        assert_eq!(
            (plan.chunks_left, plan.bytes_left, plan.chunks_unrecoverable),
            (1, 1000, 0)
        );
    }

    #[test]
    fn an_unreachable_node_within_grace_causes_no_rebuild() {
        let mut nodes = seven();
        nodes[2].reachable = false;
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &all_on(1))]);
        assert_eq!(plan, RepairPlan::default());
    }

    #[test]
    fn unplaced_shards_are_added_and_never_share_a_host() {
        // Nodes 6 and 7 share host "h6": only one of them may take a shard.
        let mut nodes = seven();
        nodes[6].host = "h6".into();
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &[Some(1), Some(2), Some(3), Some(4), None, None])]);
        let moves = &plan.commands[0].moves;
        assert_eq!(moves.len(), 2, "{moves:?}");
        let hosts: HashSet<&str> = moves
            .iter()
            .map(|mv| view.nodes.iter().find(|n| n.id == mv.to).unwrap().host.as_str())
            .collect();
        assert_eq!(hosts.len(), 2);
        assert!(hosts.contains("h5") && hosts.contains("h6"));
        assert_eq!(plan.commands[0].redundancy_left, 0);
    }

    #[test]
    fn with_no_free_host_the_shard_stays_missing_and_is_counted() {
        // Six hosts, one lost: a 4+2 stripe can place only five shards.
        let mut nodes: Vec<NodeHealth> = seven().into_iter().take(6).collect();
        lose(&mut nodes, 6);
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &all_on(1))]);
        assert!(plan.commands.is_empty());
        assert_eq!((plan.chunks_left, plan.bytes_left), (1, 1000));
    }

    #[test]
    fn least_redundancy_first_and_too_few_sources_is_unrecoverable() {
        let mut nodes: Vec<NodeHealth> = (1..=8).map(|id| node(id, &format!("h{id}"))).collect();
        lose(&mut nodes, 1);
        lose(&mut nodes, 2);
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let one_lost = stripe(1, &all_on(2)); // nodes 2..=7: loses node 2
        let two_lost = stripe(2, &all_on(1)); // nodes 1..=6: loses 1 and 2
        let three_lost = stripe(3, &[Some(1), Some(2), None, Some(3), Some(4), Some(5)]);
        let plan = plan_repairs(&view, &[one_lost, two_lost, three_lost]);
        let order: Vec<u128> = plan.commands.iter().map(|c| c.piece_id).collect();
        assert_eq!(order, vec![2, 1]);
        assert_eq!(plan.commands[0].redundancy_left, 0);
        assert_eq!(plan.commands[1].redundancy_left, 1);
        let targets: BTreeSet<NodeId> = plan.commands[0].moves.iter().map(|mv| mv.to).collect();
        assert_eq!(targets, [7, 8].into());
        assert_eq!(plan.commands[1].moves[0].to, 8);
        assert_eq!((plan.chunks_left, plan.chunks_unrecoverable), (3, 1));
    }

    #[test]
    fn a_corrupt_shard_is_rewritten_in_place_and_stale_suspects_are_dropped() {
        let corrupt = ShardRef {
            node: 4,
            piece_id: 1,
            shard_index: 3,
        };
        let stale = ShardRef {
            node: 4,
            piece_id: 99,
            shard_index: 0,
        };
        let view = ClusterView {
            nodes: seven(),
            suspects: [corrupt, stale].into(),
            gc_pending: HashSet::new(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &all_on(1))]);
        assert_eq!(
            plan.commands[0].moves,
            vec![ShardMove {
                shard_index: 3,
                from: Some(4),
                to: 4
            }]
        );
        assert!(!plan.commands[0].sources.iter().any(|(index, _)| *index == 3));
        assert_eq!(plan.stale_suspects, vec![stale]);
    }

    #[test]
    fn never_onto_a_node_that_still_has_the_piece_queued_for_deletion() {
        // Shard 2 once moved from node 7 to node 3; node 7 came back with
        // its old copy queued for GC, and now node 3 is lost.
        let mut nodes = seven();
        lose(&mut nodes, 3);
        nodes.push(node(8, "h8"));
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: [ShardRef {
                node: 7,
                piece_id: 1,
                shard_index: 2,
            }]
            .into(),
        };
        let plan = plan_repairs(&view, &[stripe(1, &all_on(1))]);
        assert_eq!(plan.commands[0].moves[0].to, 8);
    }

    #[test]
    fn plans_are_deterministic() {
        let mut nodes = seven();
        lose(&mut nodes, 5);
        let view = ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        };
        let stripes: Vec<StripeView> = (1..=20).map(|p| stripe(p, &all_on(1 + (p as u64 % 2)))).collect();
        assert_eq!(plan_repairs(&view, &stripes), plan_repairs(&view, &stripes));
    }
}
