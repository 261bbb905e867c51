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
//! - stripes with the least redundancy left come first;
//! - a shard on a *draining* node (`sohofs node drain`) is still a source,
//!   and moves to a host not already in its stripe; draining nodes take no
//!   shard. A move is a copy: the executor puts the new shard, commits the
//!   record, and only then is the old one queued for the collector, so a
//!   drain never lowers a stripe's redundancy;
//! - when nothing is missing and nothing drains, [`plan_rebalance`] moves
//!   shards from the fullest nodes (by shard count) to the emptiest, e.g.
//!   toward a node just added, under the same host rule.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use std::time::Duration;

use sohofs_format::messages::{ListedShard, ShardRef};
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
    /// Being drained: takes no shard; its shards move elsewhere.
    pub draining: bool,
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
    /// Shards that records still place on draining nodes.
    pub drain_shards_left: u64,
    /// Of those, shards with no host to go to now (every other host already
    /// holds a shard of the stripe, or is down).
    pub drain_shards_blocked: u64,
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
    /// Readable, on a draining node: copied elsewhere, then released.
    Evacuate(NodeId),
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
            up: n.reachable && !n.lost && !n.draining,
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
                    Some(node) if node.draining => ShardState::Evacuate(id),
                    Some(_) => ShardState::Source(id),
                }
            })
            .collect();
        let broken = states
            .iter()
            .filter(|s| matches!(s, ShardState::Missing(_) | ShardState::Corrupt(_)))
            .count();
        let evacuating = states.iter().filter(|s| matches!(s, ShardState::Evacuate(_))).count();
        plan.drain_shards_left += evacuating as u64;
        if broken == 0 && evacuating == 0 {
            continue;
        }
        let shard_bytes = crate::codec::shard_len(stripe.sealed_len as usize, k) as u64;
        let chunk = (stripe.ino, stripe.chunk_index);
        if broken > 0 {
            chunks_left.insert(chunk);
            plan.bytes_left += shard_bytes * broken as u64;
        }
        let sources: Vec<(u8, NodeId)> = states
            .iter()
            .enumerate()
            .filter_map(|(index, s)| match s {
                ShardState::Source(id) | ShardState::Evacuate(id) => Some((index as u8, *id)),
                _ => None,
            })
            .collect();
        if sources.len() < k {
            chunks_unrecoverable.insert(chunk);
            plan.drain_shards_blocked += evacuating as u64;
            continue;
        }
        // Hosts that keep a shard of this stripe: a rebuilt shard goes elsewhere.
        let mut taken_hosts: HashSet<String> = HashSet::new();
        let mut taken_nodes: HashSet<NodeId> = HashSet::new();
        for state in &states {
            if let ShardState::Source(id)
            | ShardState::Waiting(id)
            | ShardState::Corrupt(id)
            | ShardState::Evacuate(id) = state
            {
                taken_nodes.insert(*id);
                if let Some(node) = nodes.get(id) {
                    taken_hosts.insert(node.host.clone());
                }
            }
        }
        // Missing shards take the free hosts first; evacuations get the rest.
        let mut missing: Vec<(u8, Option<NodeId>)> = states
            .iter()
            .enumerate()
            .filter_map(|(index, s)| match s {
                ShardState::Missing(from) => Some((index as u8, *from)),
                _ => None,
            })
            .collect();
        missing.extend(states.iter().enumerate().filter_map(|(index, s)| match s {
            ShardState::Evacuate(id) => Some((index as u8, Some(*id))),
            _ => None,
        }));
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
        let missing_count = missing.len() - evacuating;
        let evacuations_placed = targets.len().saturating_sub(missing_count);
        plan.drain_shards_blocked += (evacuating - evacuations_placed) as u64;
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

/// The shards of `listed` (what `node` holds) to collect: named by no chunk
/// record, queued for no deletion, and older than `safety_window`. A write
/// puts its shards first and commits its record after, so a young shard
/// nothing names may be a write in flight: it is kept. The caller takes
/// `referenced` *after* the node listed its shards, so a shard committed
/// meanwhile is seen as referenced.
pub fn pick_orphans(
    node: NodeId,
    listed: &[ListedShard],
    referenced: &HashSet<ShardRef>,
    queued: &HashSet<ShardRef>,
    safety_window: Duration,
) -> Vec<(u128, u8)> {
    let mut orphans: Vec<(u128, u8)> = listed
        .iter()
        .filter(|shard| Duration::from_secs(shard.age_s) >= safety_window)
        .filter(|shard| {
            let key = ShardRef {
                node,
                piece_id: shard.piece_id,
                shard_index: shard.shard_index,
            };
            !referenced.contains(&key) && !queued.contains(&key)
        })
        .map(|shard| (shard.piece_id, shard.shard_index))
        .collect();
    orphans.sort();
    orphans
}

/// Shard moves one rebalancing plan holds at most: each pass plans afresh,
/// so the cluster converges over passes, at the rebuild bandwidth.
pub const REBALANCE_MOVES_PER_PASS_MAX: usize = 256;
/// Nodes whose shard counts differ by at most this, or by
/// [`REBALANCE_SLACK_PERCENT`] of the mean count if that is more, are even
/// enough: placement spreads new stripes at random, and chasing every
/// difference of a few shards would move data all day in a busy office.
pub const REBALANCE_SLACK_SHARDS: u64 = 1;
pub const REBALANCE_SLACK_PERCENT: u64 = 5;

/// How far apart two nodes' shard counts may be before rebalancing moves
/// shards, for `total` shards over `nodes` nodes.
pub fn rebalance_slack(total: u64, nodes: u64) -> u64 {
    let mean = total / nodes.max(1);
    REBALANCE_SLACK_SHARDS.max(mean * REBALANCE_SLACK_PERCENT / 100)
}

/// Plans moves from the nodes holding the most shards to those holding the
/// fewest (a node just added holds none), at most `moves_max`, one per
/// stripe, until the counts of the nodes that can take shards differ by at
/// most [`rebalance_slack`] or no move keeps one shard per host.
/// Only stripes with every shard on a reachable node move. Meant for a
/// cluster with nothing to repair or drain ([`plan_repairs`] first).
/// Deterministic: ties go to the lower node id and the earlier stripe.
pub fn plan_rebalance(view: &ClusterView, stripes: &[StripeView], moves_max: usize) -> Vec<RepairCommand> {
    let nodes: BTreeMap<NodeId, &NodeHealth> = view.nodes.iter().map(|n| (n.id, n)).collect();
    let takes_shards = |id: &NodeId| nodes.get(id).is_some_and(|n| n.reachable && !n.lost && !n.draining);
    let mut counts: BTreeMap<NodeId, u64> = view
        .nodes
        .iter()
        .filter(|n| takes_shards(&n.id))
        .map(|n| (n.id, 0))
        .collect();
    // Stripes that may move: complete, every shard on a node that takes shards.
    let mut movable: Vec<(usize, Vec<NodeId>)> = Vec::new();
    for (position, stripe) in stripes.iter().enumerate() {
        let placed: Vec<NodeId> = stripe.shards.iter().filter_map(|s| s.node).collect();
        for id in &placed {
            if let Some(count) = counts.get_mut(id) {
                *count += 1;
            }
        }
        let k = stripe.data_shards as usize;
        if k > 0
            && placed.len() == stripe.shards.len()
            && stripe.shards.len() == k + stripe.parity_shards as usize
            && placed.iter().all(takes_shards)
        {
            movable.push((position, placed));
        }
    }
    let slack = rebalance_slack(counts.values().sum(), counts.len() as u64);
    let mut moved_stripes: HashSet<usize> = HashSet::new();
    let mut exhausted: HashSet<NodeId> = HashSet::new();
    let mut commands = Vec::new();
    while commands.len() < moves_max {
        let mut order: Vec<(u64, NodeId)> = counts.iter().map(|(id, count)| (*count, *id)).collect();
        order.sort();
        let Some(&(most, donor)) = order.iter().rev().find(|(_, id)| !exhausted.contains(id)) else {
            break;
        };
        let receivers: Vec<NodeId> = order
            .iter()
            .filter(|(count, _)| *count + slack < most)
            .map(|(_, id)| *id)
            .collect();
        if receivers.is_empty() {
            break;
        }
        let found = receivers.iter().find_map(|receiver| {
            let receiver_host = &nodes[receiver].host;
            movable.iter().find_map(|(position, placed)| {
                if moved_stripes.contains(position) || !placed.contains(&donor) {
                    return None;
                }
                let host_taken = placed.iter().any(|id| &nodes[id].host == receiver_host);
                (!host_taken).then_some((*position, *receiver))
            })
        });
        let Some((position, receiver)) = found else {
            exhausted.insert(donor);
            continue;
        };
        moved_stripes.insert(position);
        *counts.get_mut(&donor).expect("donor is counted") -= 1;
        *counts.get_mut(&receiver).expect("receiver is counted") += 1;
        let stripe = &stripes[position];
        let k = stripe.data_shards as usize;
        let shard_index = stripe
            .shards
            .iter()
            .position(|s| s.node == Some(donor))
            .expect("the stripe holds a shard on the donor") as u8;
        let sources: Vec<(u8, NodeId)> = stripe
            .shards
            .iter()
            .enumerate()
            .filter_map(|(index, s)| s.node.map(|id| (index as u8, id)))
            .collect();
        commands.push(RepairCommand {
            ino: stripe.ino,
            chunk_index: stripe.chunk_index,
            piece_id: stripe.piece_id,
            sealed_len: stripe.sealed_len,
            data_shards: stripe.data_shards,
            parity_shards: stripe.parity_shards,
            hashes: stripe.shards.iter().map(|s| s.hash).collect(),
            redundancy_left: (sources.len() - k) as u32,
            sources,
            moves: vec![ShardMove {
                shard_index,
                from: Some(donor),
                to: receiver,
            }],
            shard_bytes: crate::codec::shard_len(stripe.sealed_len as usize, k) as u64,
        });
    }
    commands
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
            draining: false,
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

    fn view_of(nodes: Vec<NodeHealth>) -> ClusterView {
        ClusterView {
            nodes,
            suspects: HashSet::new(),
            gc_pending: HashSet::new(),
        }
    }

    fn drain(nodes: &mut [NodeHealth], id: NodeId) {
        nodes.iter_mut().find(|n| n.id == id).unwrap().draining = true;
    }

    #[test]
    fn a_draining_node_moves_every_shard_to_a_host_not_in_the_stripe() {
        let mut nodes = seven();
        drain(&mut nodes, 3);
        let view = view_of(nodes);
        let stripes = [
            stripe(1, &all_on(1)),
            stripe(2, &all_on(2)),
            stripe(3, &[Some(1), Some(2), Some(4), Some(5), Some(6), Some(7)]),
        ];
        let plan = plan_repairs(&view, &stripes);
        // Stripe 3 holds nothing on node 3; stripes 1 and 2 each move one shard.
        assert_eq!(plan.commands.len(), 2);
        assert_eq!(
            plan.commands[0].moves,
            vec![ShardMove {
                shard_index: 2,
                from: Some(3),
                to: 7
            }]
        );
        assert_eq!(
            plan.commands[1].moves,
            vec![ShardMove {
                shard_index: 1,
                from: Some(3),
                to: 1
            }]
        );
        // Nothing is missing: the draining shard stays a source, and redundancy is full.
        assert!(plan
            .commands
            .iter()
            .all(|c| c.redundancy_left == 2 && c.sources.iter().any(|s| s.1 == 3)));
        assert_eq!((plan.chunks_left, plan.bytes_left), (0, 0));
        assert_eq!((plan.drain_shards_left, plan.drain_shards_blocked), (2, 0));
    }

    #[test]
    fn a_drain_with_no_free_host_is_blocked_not_forced() {
        // Six hosts, 4+2: every host is in the stripe, so the shard cannot move.
        let mut nodes: Vec<NodeHealth> = seven().into_iter().take(6).collect();
        drain(&mut nodes, 2);
        let plan = plan_repairs(&view_of(nodes), &[stripe(1, &all_on(1))]);
        assert!(plan.commands.is_empty());
        assert_eq!((plan.drain_shards_left, plan.drain_shards_blocked), (1, 1));
    }

    #[test]
    fn a_missing_shard_takes_the_free_host_before_a_drain() {
        // Seven hosts; node 5 is lost and node 3 drains: one free host (7)
        // and two shards want it. The missing one gets it.
        let mut nodes = seven();
        lose(&mut nodes, 5);
        drain(&mut nodes, 3);
        let plan = plan_repairs(&view_of(nodes), &[stripe(1, &all_on(1))]);
        assert_eq!(
            plan.commands[0].moves,
            vec![ShardMove {
                shard_index: 4,
                from: Some(5),
                to: 7
            }]
        );
        assert_eq!(plan.commands[0].redundancy_left, 1);
        assert_eq!((plan.drain_shards_left, plan.drain_shards_blocked), (1, 1));
    }

    #[test]
    fn draining_nodes_take_no_rebuilt_shard() {
        let mut nodes = seven();
        lose(&mut nodes, 3);
        drain(&mut nodes, 7);
        nodes.push(node(8, "h8"));
        let plan = plan_repairs(&view_of(nodes), &[stripe(1, &all_on(1))]);
        assert_eq!(
            plan.commands[0].moves,
            vec![ShardMove {
                shard_index: 2,
                from: Some(3),
                to: 8
            }]
        );
    }

    #[test]
    fn rebalance_fills_a_new_node_evenly_and_keeps_one_shard_per_host() {
        // Six nodes hold 12 stripes of six shards: 12 shards each. Node 7 is new.
        let view = view_of(seven());
        let stripes: Vec<StripeView> = (1..=12).map(|p| stripe(p, &all_on(1))).collect();
        let commands = plan_rebalance(&view, &stripes, REBALANCE_MOVES_PER_PASS_MAX);
        // 72 shards over 7 nodes: 10 or 11 each; node 7 gets 10 or 11 shards.
        let mut counts: BTreeMap<NodeId, u64> = (1..=7).map(|id| (id, 0)).collect();
        let mut placed: BTreeMap<u128, Vec<Option<NodeId>>> = stripes
            .iter()
            .map(|s| (s.piece_id, s.shards.iter().map(|l| l.node).collect()))
            .collect();
        for command in &commands {
            assert_eq!(command.moves.len(), 1);
            let mv = command.moves[0];
            assert_eq!(mv.to, 7);
            let shards = placed.get_mut(&command.piece_id).unwrap();
            assert_eq!(shards[mv.shard_index as usize], mv.from);
            shards[mv.shard_index as usize] = Some(mv.to);
        }
        for shards in placed.values() {
            let distinct: HashSet<_> = shards.iter().collect();
            assert_eq!(distinct.len(), 6, "two shards of a stripe on one host: {shards:?}");
            for id in shards.iter().flatten() {
                *counts.get_mut(id).unwrap() += 1;
            }
        }
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert_eq!(rebalance_slack(72, 7), 1);
        assert!(max - min <= 1, "{counts:?}");
        assert_eq!(commands.len(), 10);
        // An even cluster needs nothing, and the plan is deterministic.
        assert_eq!(plan_rebalance(&view, &stripes, 256), commands);
        let six: Vec<NodeHealth> = seven().into_iter().take(6).collect();
        assert!(plan_rebalance(&view_of(six), &stripes, 256).is_empty());
    }

    #[test]
    fn orphans_are_old_unnamed_and_unqueued_shards_only() {
        let listed = |piece_id: u128, age_s: u64| ListedShard {
            piece_id,
            shard_index: 1,
            age_s,
        };
        let on_node = |piece_id: u128| ShardRef {
            node: 4,
            piece_id,
            shard_index: 1,
        };
        let shards = [
            listed(1, 7200), // named by a record: kept
            listed(2, 7200), // queued for the collector already: left to it
            listed(3, 7200), // an old orphan: collected
            listed(4, 10),   // a young orphan, maybe a write in flight: kept
            listed(5, 3600), // exactly the window: collected
        ];
        let referenced: HashSet<ShardRef> = [on_node(1), ShardRef { node: 5, ..on_node(3) }].into();
        let queued: HashSet<ShardRef> = [on_node(2)].into();
        let window = Duration::from_secs(3600);
        assert_eq!(
            pick_orphans(4, &shards, &referenced, &queued, window),
            vec![(3, 1), (5, 1)]
        );
    }

    #[test]
    fn small_differences_of_a_large_cluster_are_left_alone() {
        // 100 stripes: 600 shards, about 86 per node, with node 7 left out
        // of most stripes: far below the others, so shards move to it, but
        // only until every count is within the 5 % slack (4).
        assert_eq!(rebalance_slack(600, 7), 4);
        let view = view_of(seven());
        let mut stripes: Vec<StripeView> = Vec::new();
        for p in 1..=100u128 {
            // Rotate which of the seven hosts a stripe leaves out, but
            // leave node 7 out three times as often.
            let skip = if p % 3 == 0 { (p % 7) as u64 + 1 } else { 7 };
            let nodes: Vec<Option<NodeId>> = (1..=7).filter(|id| *id != skip).map(Some).collect();
            stripes.push(stripe(p, &nodes));
        }
        let commands = plan_rebalance(&view, &stripes, REBALANCE_MOVES_PER_PASS_MAX);
        assert!(!commands.is_empty());
        let mut counts: BTreeMap<NodeId, i64> = BTreeMap::new();
        for s in &stripes {
            for id in s.shards.iter().filter_map(|loc| loc.node) {
                *counts.entry(id).or_default() += 1;
            }
        }
        for c in &commands {
            *counts.get_mut(&c.moves[0].from.unwrap()).unwrap() -= 1;
            *counts.get_mut(&c.moves[0].to).unwrap() += 1;
        }
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert!(max - min <= 4, "{counts:?}");
        // Planned again from the result, nothing is left to do.
        let mut after = stripes.clone();
        for c in &commands {
            let s = after.iter_mut().find(|s| s.piece_id == c.piece_id).unwrap();
            s.shards[c.moves[0].shard_index as usize].node = Some(c.moves[0].to);
        }
        assert!(plan_rebalance(&view, &after, REBALANCE_MOVES_PER_PASS_MAX).is_empty());
    }

    #[test]
    fn rebalance_is_bounded_skips_unhealthy_stripes_and_draining_nodes() {
        let mut nodes = seven();
        nodes.push(node(8, "h8"));
        drain(&mut nodes, 8);
        let stripes: Vec<StripeView> = (1..=12).map(|p| stripe(p, &all_on(1))).collect();
        let view = view_of(nodes.clone());
        let commands = plan_rebalance(&view, &stripes, 3);
        assert_eq!(commands.len(), 3);
        assert!(commands.iter().all(|c| c.moves[0].to == 7));
        // A stripe with a shard on a node that is down does not move.
        nodes[0].reachable = false;
        let commands = plan_rebalance(&view_of(nodes), &stripes, 256);
        assert!(commands.is_empty(), "{commands:?}");
    }
}
