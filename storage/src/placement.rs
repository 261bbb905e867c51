//! Shard placement: a pure decision over a view of the cluster.

use std::collections::HashSet;

use sohofs_format::NodeId;

/// What placement needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub host: String,
    pub free_bytes: u64,
    pub up: bool,
}

/// Chooses up to `width` nodes on distinct hosts, most free space first,
/// skipping nodes that are down, listed in `avoid_nodes`, or on a host in
/// `avoid_hosts`. `rotation` spreads ties between equally free nodes (pass a
/// per-write random number); the result is otherwise deterministic.
pub fn choose_nodes(
    nodes: &[NodeView],
    width: usize,
    avoid_nodes: &HashSet<NodeId>,
    avoid_hosts: &HashSet<String>,
    rotation: u64,
) -> Vec<NodeId> {
    let mut candidates: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.up && !avoid_nodes.contains(&n.id) && !avoid_hosts.contains(&n.host))
        .collect();
    // Free space in 1 GiB steps: nodes within a step count as equally free and
    // are taken in rotated order, so small differences do not pin every write
    // to the same nodes.
    let step = |n: &NodeView| n.free_bytes >> 30;
    let count = candidates.len().max(1) as u64;
    candidates.sort_by_key(|n| (std::cmp::Reverse(step(n)), (n.id.wrapping_add(rotation)) % count, n.id));
    let mut hosts = HashSet::new();
    let mut chosen = Vec::with_capacity(width);
    for node in candidates {
        if chosen.len() == width {
            break;
        }
        if hosts.insert(node.host.as_str()) {
            chosen.push(node.id);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, host: &str, free_gib: u64, up: bool) -> NodeView {
        NodeView {
            id,
            host: host.into(),
            free_bytes: free_gib << 30,
            up,
        }
    }

    #[test]
    fn one_shard_per_host_most_free_first() {
        let nodes = vec![
            node(1, "a", 10, true),
            node(2, "a", 50, true),
            node(3, "b", 20, true),
            node(4, "c", 5, true),
            node(5, "d", 100, false),
        ];
        let chosen = choose_nodes(&nodes, 3, &HashSet::new(), &HashSet::new(), 0);
        assert_eq!(chosen, vec![2, 3, 4]);
    }

    #[test]
    fn too_few_hosts_gives_fewer_nodes() {
        let nodes = vec![node(1, "a", 10, true), node(2, "a", 10, true), node(3, "b", 10, true)];
        assert_eq!(choose_nodes(&nodes, 6, &HashSet::new(), &HashSet::new(), 0).len(), 2);
    }

    #[test]
    fn avoided_nodes_and_hosts_are_skipped_and_rotation_spreads_ties() {
        let nodes: Vec<NodeView> = (1..=6).map(|i| node(i, &format!("h{i}"), 10, true)).collect();
        let avoid: HashSet<NodeId> = [1].into();
        let hosts: HashSet<String> = ["h2".to_string()].into();
        let chosen = choose_nodes(&nodes, 4, &avoid, &hosts, 0);
        assert_eq!(chosen.len(), 4);
        assert!(!chosen.contains(&1) && !chosen.contains(&2));
        let first = choose_nodes(&nodes, 2, &HashSet::new(), &HashSet::new(), 0);
        let rotated = choose_nodes(&nodes, 2, &HashSet::new(), &HashSet::new(), 3);
        assert_ne!(first, rotated);
    }
}
