//! Scrub: bytes flipped in shard files of up to m nodes per stripe, over
//! many stripes, are all found by `sohofs scrub --now`, all rebuilt from the
//! other shards, and a second scrub finds nothing; every file still reads
//! back byte-exact. Shard files deleted under their nodes are found and
//! rebuilt the same way.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sohofs_e2e::process::run_ok;
use sohofs_e2e::{assert_trees_equal, bounded, hash_tree, wait_until, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 6, k: 4, m: 2 };
/// The 64-byte header in front of every shard's payload.
const SHARD_HEADER_BYTES: u64 = 64;
/// Stripes whose shards the test damages.
const STRIPES_DAMAGED: usize = 24;
/// Stripes damaged afterwards for reads to find.
const READ_DAMAGED: usize = 4;

const COPY_TIMEOUT: Duration = Duration::from_secs(300);
const HASH_TIMEOUT: Duration = Duration::from_secs(300);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// One scrub of every node and its repairs.
const SCRUB_TIMEOUT: Duration = Duration::from_secs(300);
const VERB_TIMEOUT: Duration = Duration::from_secs(60);

struct Stripe {
    piece: String,
    /// (shard index, node) of every shard.
    shards: Vec<(u64, u64)>,
}

#[test]
fn scrub_finds_and_repairs_every_flipped_shard() {
    let cluster = Cluster::start(OPTIONS);
    let source = cluster.scratch_dir("source");
    let seed: u64 = rand::random();
    eprintln!("heal_scrub: random data seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..40 {
        let size = rng.gen_range(8 << 10..6 << 20);
        let mut bytes = vec![0u8; size];
        rng.fill_bytes(&mut bytes);
        fs::write(source.join(format!("{i}.bin")), bytes).unwrap();
    }
    let expected = hash_tree(&source).expect("snapshot the source tree");
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(source.join(".")).arg(cluster.mount_dir());
    run_ok(copy, cluster.tag(), COPY_TIMEOUT);
    wait_until("every chunk healthy", SETTLE_TIMEOUT, || {
        let status = cluster.status()?;
        match (status.volume.chunks_degraded, status.volume.chunks_total) {
            (0, total) if total > 0 => Ok(()),
            other => Err(format!("(degraded, total) = {other:?}")),
        }
    });

    // Damage one or two shards (never more than m = 2) of each of many
    // stripes, on nodes that change from stripe to stripe.
    let stripes = stripes(&cluster);
    assert!(
        stripes.len() >= STRIPES_DAMAGED + READ_DAMAGED,
        "only {} stripes",
        stripes.len()
    );
    let mut damaged: BTreeSet<PathBuf> = BTreeSet::new();
    for (number, stripe) in stripes.iter().take(STRIPES_DAMAGED).enumerate() {
        let per_stripe = 1 + number % 2;
        for (index, node) in stripe
            .shards
            .iter()
            .skip(number % 6)
            .chain(stripe.shards.iter())
            .take(per_stripe)
        {
            let path = shard_path(&cluster, *node, &stripe.piece, *index);
            flip_payload_byte(&path, &mut rng);
            assert!(damaged.insert(path), "a shard damaged twice");
        }
    }
    let corrupted = damaged.len() as u64;
    assert_eq!(corrupted, (STRIPES_DAMAGED + STRIPES_DAMAGED / 2) as u64);

    let first = scrub(&cluster);
    assert_eq!(number(&first, "nodes_scrubbed"), 6, "{first}");
    assert_eq!(number(&first, "shards_corrupt"), corrupted, "{first}");
    assert_eq!(number(&first, "shards_repaired"), corrupted, "{first}");
    assert_eq!(number(&first, "shards_unreferenced"), 0, "{first}");
    assert!(number(&first, "shards_checked") >= stripes.len() as u64 * 6, "{first}");

    let second = scrub(&cluster);
    assert_eq!(number(&second, "shards_corrupt"), 0, "{second}");
    assert_eq!(number(&second, "shards_repaired"), 0, "{second}");
    assert_eq!(
        number(&second, "shards_checked"),
        number(&first, "shards_checked"),
        "{second}"
    );

    let client = cluster.mount_client();
    let client_dir = client.mount_dir().to_path_buf();
    let actual = bounded("hash the tree through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read every file through a fresh client");
    assert_trees_equal(&expected, &actual, "after scrub repaired the flipped shards");
    client.stop();

    // Reads report the corrupt shards they meet: damage data shard 0 of a
    // few stripes, read everything through a fresh client (which decodes
    // with parity instead), and meta rewrites each damaged shard as it was.
    let mut originals = Vec::new();
    for stripe in stripes.iter().skip(STRIPES_DAMAGED).take(READ_DAMAGED) {
        let (index, node) = stripe.shards[0];
        let path = shard_path(&cluster, node, &stripe.piece, index);
        originals.push((path.clone(), fs::read(&path).unwrap()));
        flip_payload_byte(&path, &mut rng);
    }
    let client = cluster.mount_client();
    let client_dir = client.mount_dir().to_path_buf();
    let actual = bounded("hash the tree through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read every file through a fresh client");
    assert_trees_equal(&expected, &actual, "reading around shards damaged after the scrub");
    client.stop();
    wait_until("the shards reads found corrupt are rewritten", SCRUB_TIMEOUT, || {
        let left = originals
            .iter()
            .filter(|(path, original)| fs::read(path).ok().as_ref() != Some(original))
            .count();
        match left {
            0 => Ok(()),
            left => Err(format!("{left} of {} still damaged", originals.len())),
        }
    });
    let third = scrub(&cluster);
    assert_eq!(number(&third, "shards_corrupt"), 0, "{third}");

    // Shard files deleted under their nodes hash as nothing: the scrub
    // finds them by comparing the records with what each node holds, and
    // rebuilds them.
    let deleted = 3;
    for stripe in stripes.iter().take(deleted) {
        let (index, node) = stripe.shards[stripe.shards.len() - 1];
        fs::remove_file(shard_path(&cluster, node, &stripe.piece, index)).unwrap();
    }
    let fourth = scrub(&cluster);
    assert_eq!(number(&fourth, "shards_corrupt"), deleted as u64, "{fourth}");
    assert_eq!(number(&fourth, "shards_repaired"), deleted as u64, "{fourth}");
    let fifth = scrub(&cluster);
    assert_eq!(number(&fifth, "shards_corrupt"), 0, "{fifth}");
    let client = cluster.mount_client();
    let client_dir = client.mount_dir().to_path_buf();
    let actual = bounded("hash the tree through a fresh client", HASH_TIMEOUT, move || {
        hash_tree(&client_dir)
    })
    .expect("read every file through a fresh client");
    assert_trees_equal(&expected, &actual, "after scrub rebuilt the deleted shards");
    client.stop();
}

/// `DIR/nodes/<node>/data/shards/<first two hex digits>/<piece>.<index>`.
fn shard_path(cluster: &Cluster, node: u64, piece: &str, index: u64) -> PathBuf {
    cluster
        .nodes_dir()
        .join(node.to_string())
        .join("data/shards")
        .join(&piece[..2])
        .join(format!("{piece}.{index}"))
}

fn flip_payload_byte(path: &Path, rng: &mut StdRng) {
    let mut bytes = fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    assert!(
        bytes.len() as u64 > SHARD_HEADER_BYTES,
        "{} has no payload",
        path.display()
    );
    let at = rng.gen_range(SHARD_HEADER_BYTES as usize..bytes.len());
    bytes[at] ^= 1 << rng.gen_range(0..8);
    fs::write(path, bytes).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

fn scrub(cluster: &Cluster) -> Value {
    let output = cluster.run_verb(&["scrub", "--now", "--json"], SCRUB_TIMEOUT);
    assert!(
        output.status.success(),
        "scrub --now exited {}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("scrub --json prints JSON")
}

fn number(object: &Value, field: &str) -> u64 {
    object[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a number in {object}"))
}

fn stripes(cluster: &Cluster) -> Vec<Stripe> {
    let output = cluster.run_verb(&["debug", "stripes", "--json"], VERB_TIMEOUT);
    assert!(
        output.status.success(),
        "debug stripes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("debug stripes --json is JSON");
    value
        .as_array()
        .expect("a list of stripes")
        .iter()
        .map(|stripe| Stripe {
            piece: stripe["piece"].as_str().expect("piece id").to_string(),
            shards: stripe["shards"]
                .as_array()
                .expect("shards")
                .iter()
                .map(|shard| {
                    (
                        shard["index"].as_u64().expect("index"),
                        shard["node"].as_u64().expect("every shard placed"),
                    )
                })
                .collect(),
        })
        .collect()
}
