//! `sohofs scrub`: every node re-hashes its shards (no key needed) and meta
//! rebuilds the corrupt ones from the other shards of their stripes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sohofs_format::messages::{MetaRequest, MetaResponse};
use sohofs_storage::heal::SCRUB_CALL_TIMEOUT;
use sohofs_storage::peers::MetaClient;
use sohofs_storage::rpc::Transport;

use crate::config::ClusterConfig;

#[derive(Serialize)]
struct ScrubJson {
    nodes_scrubbed: u64,
    shards_checked: u64,
    shards_corrupt: u64,
    shards_repaired: u64,
    /// Corrupt shards that no chunk references (garbage or a write in
    /// flight): nothing to repair.
    shards_unreferenced: u64,
}

/// `now`: read at full speed instead of each node's scrub bandwidth.
pub async fn run(config_path: &Path, now: bool, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    // The answer comes when every node has scrubbed and the repairs are done.
    let timeout = SCRUB_CALL_TIMEOUT + Duration::from_secs(3600);
    let meta = MetaClient::with_call_timeout(&config.meta, Transport::default(), timeout);
    let bytes_per_s = if now { u64::MAX } else { 0 };
    let report = match meta
        .call(&MetaRequest::Scrub { bytes_per_s })
        .await
        .with_context(|| format!("scrub through meta at {}", config.meta.join(", ")))?
    {
        MetaResponse::Scrub(report) => report,
        other => anyhow::bail!("meta answered Scrub with {other:?}"),
    };
    let out = ScrubJson {
        nodes_scrubbed: report.nodes_scrubbed,
        shards_checked: report.shards_checked,
        shards_corrupt: report.shards_corrupt,
        shards_repaired: report.shards_repaired,
        shards_unreferenced: report.shards_unreferenced,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("serialise scrub report")?
        );
    } else {
        println!(
            "scrub: {} nodes, {} shards checked, {} corrupt or missing, {} repaired, {} unreferenced (garbage, not repaired)",
            out.nodes_scrubbed, out.shards_checked, out.shards_corrupt, out.shards_repaired, out.shards_unreferenced
        );
    }
    let unrepaired = out
        .shards_corrupt
        .saturating_sub(out.shards_repaired + out.shards_unreferenced);
    if unrepaired > 0 {
        anyhow::bail!(
            "{unrepaired} corrupt shards are not repaired yet (too few readable shards, or no node to take them); meta keeps trying"
        );
    }
    Ok(())
}
