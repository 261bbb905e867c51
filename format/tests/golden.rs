//! Golden vectors: the bytes of fixed values of every layout this crate owns,
//! stored in `tests/vectors/`. The stored bytes must decode to the value built
//! here, and that value must encode to the stored bytes, so any change that
//! would make old bytes read differently fails here before it ships.
//!
//! A new vector (for a new type or a variant added at the end of an enum) is
//! written by blessing:
//!
//! ```text
//! SOHOFS_BLESS=1 cargo test -p sohofs-format --test golden -- --nocapture
//! ```
//!
//! Blessing rewrites only the files whose bytes differ and names each one. An
//! existing vector that changes means stored data or a peer on the old build
//! can no longer be read: do that only together with a version bump.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use sohofs_format::frame::{decode_body, encode_body, FrameKind};
use sohofs_format::messages::{
    ChunkOp, ChunkWrite, DirEntry, ErrorKind, ListedShard, Member, MetaRequest, MetaResponse, NewInode, NodeRequest,
    NodeResponse, NodeStatus, RebuildStatus, ScrubReport, SetAttr, ShardRef, TimeSet, VolumeStatus,
};
use sohofs_format::{
    ChunkRecord, DecodeError, Dentry, EnvelopeRecipient, Extent, FileKind, FrameHeader, GcRecord, Inode, KeyEnvelope,
    NodeRecord, Piece, PieceBody, PolicyRecord, ShardHeader, ShardLoc, VolumeRecord, FRAME_BODY_BYTES_MAX,
    FRAME_DATA_BYTES_MAX, FRAME_HEADER_BYTES, ROOT_INO, SHARD_HEADER_BYTES,
};

const BLESS_VAR: &str = "SOHOFS_BLESS";

/// How a layout starts and ends, which decides how it must fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Fixed size: 4-byte magic, then a 2-byte little-endian version. Bytes
    /// after the header are the caller's (a shard payload, a frame body).
    Header { bytes: usize },
    /// Stored record: 2-byte magic, 1-byte version, postcard body, nothing after.
    Record,
    /// Message body: postcard, starting with the enum variant, nothing after.
    Body,
}

impl Layout {
    fn magic_bytes(self) -> usize {
        match self {
            Layout::Header { .. } => 4,
            Layout::Record => 2,
            Layout::Body => 0,
        }
    }
}

/// One stored vector: the value it holds and the codec of that value's type.
struct Case<T> {
    file: &'static str,
    layout: Layout,
    expected: T,
    encode: fn(&T) -> Vec<u8>,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
}

/// What decoding some bytes gave, compared with a case's expected value.
enum Outcome {
    Expected,
    /// Decoded, but to another value (its Debug form is kept).
    Other(String),
    Refused(DecodeError),
    Panicked,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Expected => write!(f, "the expected value"),
            Outcome::Other(value) => write!(f, "another value: {value}"),
            Outcome::Refused(error) => write!(f, "an error: {error:?}"),
            Outcome::Panicked => write!(f, "a panic"),
        }
    }
}

/// A [`Case`] with its type erased, so that every case fits in one list.
trait Vector {
    fn file(&self) -> &'static str;
    fn layout(&self) -> Layout;
    fn encode_expected(&self) -> Vec<u8>;
    /// Decodes `bytes`, turning a panic into [`Outcome::Panicked`].
    fn decode(&self, bytes: &[u8]) -> Outcome;
}

impl<T: PartialEq + Debug> Vector for Case<T> {
    fn file(&self) -> &'static str {
        self.file
    }

    fn layout(&self) -> Layout {
        self.layout
    }

    fn encode_expected(&self) -> Vec<u8> {
        (self.encode)(&self.expected)
    }

    fn decode(&self, bytes: &[u8]) -> Outcome {
        match catch_unwind(AssertUnwindSafe(|| (self.decode)(bytes))) {
            Err(_) => Outcome::Panicked,
            Ok(Err(error)) => Outcome::Refused(error),
            Ok(Ok(decoded)) if decoded == self.expected => Outcome::Expected,
            Ok(Ok(decoded)) => Outcome::Other(format!("{decoded:?}")),
        }
    }
}

fn header<T: PartialEq + Debug + 'static>(
    file: &'static str,
    bytes: usize,
    expected: T,
    encode: fn(&T) -> Vec<u8>,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
) -> Box<dyn Vector> {
    Box::new(Case {
        file,
        layout: Layout::Header { bytes },
        expected,
        encode,
        decode,
    })
}

fn record<T: PartialEq + Debug + 'static>(
    file: &'static str,
    expected: T,
    encode: fn(&T) -> Vec<u8>,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
) -> Box<dyn Vector> {
    Box::new(Case {
        file,
        layout: Layout::Record,
        expected,
        encode,
        decode,
    })
}

fn body<T>(file: &'static str, expected: T) -> Box<dyn Vector>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug + 'static,
{
    Box::new(Case {
        file,
        layout: Layout::Body,
        expected,
        encode: encode_body::<T>,
        decode: |bytes| decode_body(bytes),
    })
}

// Fixed values. They are chosen to reach the corners of the encodings: varints
// of every width up to the widest, negative times (zigzag), `None` and `Some`,
// empty and non-empty sequences, and every variant of `PieceBody` and `ChunkOp`.

const PIECE_ID: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
const NOW_NS: i64 = 1_700_000_000_123_456_789;

fn hash_pattern(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_add((i as u8).wrapping_mul(37)))
}

fn shard_header() -> ShardHeader {
    ShardHeader {
        piece_id: PIECE_ID,
        shard_index: 5,
        payload_len: 1 << 20,
        payload_hash: hash_pattern(1),
    }
}

fn inode_file() -> Inode {
    Inode {
        ino: 4242,
        generation: 7,
        kind: FileKind::File,
        perm: 0o644,
        uid: 1000,
        gid: 100,
        nlink: 1,
        size: 5_000_000_000,
        atime: NOW_NS,
        mtime: NOW_NS + 1,
        ctime: NOW_NS + 2,
        rdev: 0,
        parent: ROOT_INO,
        next_seq: 0,
        symlink: Vec::new(),
        policy: 0,
    }
}

fn inode_symlink() -> Inode {
    Inode {
        ino: u64::MAX - 1,
        generation: 0,
        kind: FileKind::Symlink,
        perm: 0o777,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 14,
        atime: -1,
        mtime: i64::MIN,
        ctime: 0,
        rdev: 0,
        parent: 77,
        next_seq: 3,
        symlink: b"../target/file".to_vec(),
        policy: u64::MAX,
    }
}

fn striped_extent() -> Extent {
    let mut shards: Vec<ShardLoc> = (0..6u8)
        .map(|index| ShardLoc {
            node: Some(10 + u64::from(index)),
            hash: hash_pattern(index),
        })
        .collect();
    // A degraded write: one parity shard found no node.
    shards[5].node = None;
    Extent {
        offset: 0,
        len: 65_536,
        piece: Piece {
            id: PIECE_ID,
            base: 0,
            plain_len: 65_536,
            key_id: 0x0102_0304_0506_0708,
            key_epoch: 2,
            body: PieceBody::Striped {
                sealed_len: 65_552,
                data_shards: 4,
                parity_shards: 2,
                shards,
            },
        },
    }
}

fn inline_extent() -> Extent {
    Extent {
        offset: 100,
        len: 20,
        piece: Piece {
            id: 9,
            base: 90,
            plain_len: 40,
            key_id: 0,
            key_epoch: 0,
            body: PieceBody::Inline {
                sealed: (0..56u8).collect(),
            },
        },
    }
}

fn chunk_record() -> ChunkRecord {
    ChunkRecord {
        extents: vec![striped_extent(), inline_extent()],
    }
}

/// The age bytes are opaque to this crate: a recognisable stand-in will do.
fn key_envelope() -> KeyEnvelope {
    KeyEnvelope {
        policy_id: 7,
        epoch: 2,
        recipients: vec![
            EnvelopeRecipient {
                machine: "cn=ws-alpha,ou=machines,dc=example,dc=org".into(),
                recipient: "age1r6cdtdgzp2phkf6723n9xhscvt5dze7fum7mdcc6v7ye4jgw7faskzyzlz".into(),
            },
            EnvelopeRecipient {
                machine: "cn=ws-beta,ou=machines,dc=example,dc=org".into(),
                recipient: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGMk3qFVhnfpdvXrUq0yhgdVlyb6PcMhYy6sxePwmcDf".into(),
            },
        ],
        age: b"age-encryption.org/v1\n-> X25519 stand-in\n--- mac\n\x00\x01\x02".to_vec(),
    }
}

fn policy_record() -> PolicyRecord {
    PolicyRecord {
        id: 7,
        group: "cn=finance-machines,ou=groups,dc=example,dc=org".into(),
        dir: 4242,
        current_epoch: 3,
        live_epochs: vec![2, 3],
        created: NOW_NS,
    }
}

/// Inode records of version 1 (before `policy`): stored volumes hold them,
/// so they must keep decoding, as the standard tier.
const LEGACY_VECTORS: [&str; 2] = ["record_inode_v1_file.bin", "record_inode_v1_symlink.bin"];

#[test]
fn version_1_inodes_decode_into_the_standard_tier() {
    for (file, expected) in LEGACY_VECTORS.iter().zip([inode_file(), inode_symlink()]) {
        let bytes = std::fs::read(vectors_dir().join(file)).unwrap();
        assert_eq!(bytes[2], 1, "{file} is a version 1 record");
        let decoded = Inode::decode(&bytes).unwrap();
        assert_eq!(decoded, Inode { policy: 0, ..expected }, "{file}");
        assert_eq!(Inode::decode(&decoded.encode()).unwrap(), decoded);
    }
}

fn node_record() -> NodeRecord {
    NodeRecord {
        id: 3,
        addr: "127.0.0.1:7410".to_owned(),
        host: "node-c".to_owned(),
        capacity_bytes: 4 << 40,
        free_bytes: 3 << 40,
        used_bytes: 1 << 40,
        shards: 123_456,
    }
}

fn cases() -> Vec<Box<dyn Vector>> {
    vec![
        header(
            "shard_header.bin",
            SHARD_HEADER_BYTES,
            shard_header(),
            |value| value.encode().to_vec(),
            ShardHeader::decode,
        ),
        header(
            "frame_header_request.bin",
            FRAME_HEADER_BYTES,
            FrameHeader {
                kind: FrameKind::Request,
                request_id: 0x0102_0304_0506_0708,
                body_len: 300,
                data_len: 0,
            },
            |value| value.encode().to_vec(),
            FrameHeader::decode,
        ),
        // The bounds themselves are accepted.
        header(
            "frame_header_response.bin",
            FRAME_HEADER_BYTES,
            FrameHeader {
                kind: FrameKind::Response,
                request_id: u64::MAX,
                body_len: FRAME_BODY_BYTES_MAX,
                data_len: FRAME_DATA_BYTES_MAX,
            },
            |value| value.encode().to_vec(),
            FrameHeader::decode,
        ),
        record("record_inode_v2_file.bin", inode_file(), Inode::encode, Inode::decode),
        record(
            "record_inode_v2_symlink.bin",
            inode_symlink(),
            Inode::encode,
            Inode::decode,
        ),
        record(
            "record_dentry.bin",
            Dentry {
                ino: 4242,
                kind: FileKind::Dir,
                seq: u64::MAX,
            },
            Dentry::encode,
            Dentry::decode,
        ),
        record(
            "record_volume.bin",
            VolumeRecord {
                volume_id: !PIECE_ID,
                data_shards: 4,
                parity_shards: 2,
                write_quorum: 5,
                chunk_bytes: 64 << 20,
                inline_bytes_max: 4096,
                created: NOW_NS,
            },
            VolumeRecord::encode,
            VolumeRecord::decode,
        ),
        record(
            "record_chunk.bin",
            chunk_record(),
            ChunkRecord::encode,
            ChunkRecord::decode,
        ),
        record(
            "record_chunk_empty.bin",
            ChunkRecord::default(),
            ChunkRecord::encode,
            ChunkRecord::decode,
        ),
        record("record_node.bin", node_record(), NodeRecord::encode, NodeRecord::decode),
        record(
            "record_key_envelope.bin",
            key_envelope(),
            KeyEnvelope::encode,
            KeyEnvelope::decode,
        ),
        record(
            "record_gc.bin",
            GcRecord {
                node: 3,
                piece_id: PIECE_ID,
                shard_index: 2,
                queued: NOW_NS,
            },
            GcRecord::encode,
            GcRecord::decode,
        ),
        record(
            "record_policy.bin",
            policy_record(),
            PolicyRecord::encode,
            PolicyRecord::decode,
        ),
        body(
            "meta_request_protect.bin",
            MetaRequest::Protect {
                dir: 4242,
                group: "cn=finance,ou=groups,dc=example,dc=org".into(),
                envelope: key_envelope(),
                names: key_envelope(),
            },
        ),
        body(
            "meta_request_put_envelope.bin",
            MetaRequest::PutEnvelope {
                envelope: key_envelope(),
                expect_epoch: 3,
            },
        ),
        body(
            "meta_request_rekey_chunk.bin",
            MetaRequest::RekeyChunk {
                ino: 4242,
                index: 2,
                expect: vec![PIECE_ID, !PIECE_ID],
                extents: vec![inline_extent()],
            },
        ),
        body(
            "meta_response_policies.bin",
            MetaResponse::Policies(vec![policy_record()]),
        ),
        body("meta_request_volume.bin", MetaRequest::Volume),
        body(
            "meta_request_create.bin",
            MetaRequest::Create {
                parent: ROOT_INO,
                name: b"hello.txt".to_vec(),
                inode: NewInode {
                    kind: FileKind::File,
                    perm: 0o640,
                    uid: 1000,
                    gid: 100,
                    rdev: 0,
                    symlink: Vec::new(),
                },
            },
        ),
        body(
            "meta_request_set_attr.bin",
            MetaRequest::SetAttr {
                ino: 4242,
                attr: SetAttr {
                    perm: Some(0o600),
                    uid: None,
                    gid: None,
                    size: Some(0),
                    atime: Some(TimeSet::Now),
                    mtime: Some(TimeSet::At(-NOW_NS)),
                },
            },
        ),
        body(
            "meta_request_rename.bin",
            MetaRequest::Rename {
                parent: 77,
                name: b"old".to_vec(),
                new_parent: ROOT_INO,
                new_name: b"new".to_vec(),
                flags: 1,
            },
        ),
        body(
            "meta_request_commit_write.bin",
            MetaRequest::CommitWrite {
                ino: 4242,
                writes: vec![
                    ChunkWrite {
                        index: 0,
                        op: ChunkOp::Replace(striped_extent()),
                    },
                    ChunkWrite {
                        index: 1,
                        op: ChunkOp::Overlay(inline_extent()),
                    },
                ],
                size_at_least: 65_556,
                mtime: NOW_NS,
            },
        ),
        body(
            "meta_request_heartbeat.bin",
            MetaRequest::Heartbeat { node: node_record() },
        ),
        body("meta_request_sync.bin", MetaRequest::Sync),
        body("meta_response_ok.bin", MetaResponse::Ok),
        body("meta_response_inode.bin", MetaResponse::Inode(inode_file())),
        body(
            "meta_response_entries.bin",
            MetaResponse::Entries(vec![
                DirEntry {
                    name: b"a".to_vec(),
                    ino: 4242,
                    kind: FileKind::File,
                    seq: 3,
                },
                DirEntry {
                    name: b"sub".to_vec(),
                    ino: 4243,
                    kind: FileKind::Dir,
                    seq: 4,
                },
            ]),
        ),
        body(
            "meta_response_xattr_names.bin",
            MetaResponse::XattrNames(vec![b"user.a".to_vec(), b"user.mime".to_vec()]),
        ),
        body(
            "meta_response_chunks.bin",
            MetaResponse::Chunks(vec![(0, chunk_record()), (1, ChunkRecord::default())]),
        ),
        body(
            "meta_response_nodes.bin",
            MetaResponse::Nodes(vec![NodeStatus {
                record: node_record(),
                up: true,
                last_seen_ms_ago: 250,
            }]),
        ),
        body(
            "meta_response_status.bin",
            MetaResponse::Status(VolumeStatus {
                files: 10,
                bytes: 5_000_000_000,
                chunks_total: 80,
                chunks_healthy: 77,
                chunks_degraded: 2,
                chunks_unreadable: 1,
            }),
        ),
        body("meta_response_error.bin", MetaResponse::Error(ErrorKind::NotEmpty)),
        body(
            "node_request_put_shard.bin",
            NodeRequest::PutShard {
                piece_id: PIECE_ID,
                shard_index: 3,
                hash: hash_pattern(3),
            },
        ),
        body(
            "node_request_get_shard.bin",
            NodeRequest::GetShard {
                piece_id: 1,
                shard_index: 0,
            },
        ),
        body("node_request_stat.bin", NodeRequest::Stat),
        body("node_response_shard.bin", NodeResponse::Shard),
        body(
            "node_response_stat.bin",
            NodeResponse::Stat {
                capacity_bytes: 4 << 40,
                free_bytes: 3 << 40,
                used_bytes: 1 << 40,
                shards: 123_456,
            },
        ),
        body("node_response_error.bin", NodeResponse::Error(ErrorKind::Corrupt)),
        body("node_request_scrub.bin", NodeRequest::Scrub { bytes_per_s: 64 << 20 }),
        body(
            "node_response_scrubbed.bin",
            NodeResponse::Scrubbed {
                shards_checked: 1000,
                corrupt: vec![(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10, 5)],
            },
        ),
        body("meta_request_rebuild.bin", MetaRequest::Rebuild),
        body(
            "meta_request_report_corrupt.bin",
            MetaRequest::ReportCorrupt {
                shards: vec![ShardRef {
                    node: 3,
                    piece_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
                    shard_index: 4,
                }],
            },
        ),
        body("meta_request_scrub.bin", MetaRequest::Scrub { bytes_per_s: 0 }),
        body(
            "meta_request_list_chunks.bin",
            MetaRequest::ListChunks {
                after: Some((4242, 7)),
                limit: 64,
            },
        ),
        body(
            "meta_response_rebuild.bin",
            MetaResponse::Rebuild(RebuildStatus {
                chunks_left: 12,
                bytes_left: 12 << 20,
                bytes_per_s: 50 << 20,
                chunks_unrecoverable: 1,
                nodes_lost: vec![2, 5],
            }),
        ),
        body(
            "meta_response_scrub.bin",
            MetaResponse::Scrub(ScrubReport {
                nodes_scrubbed: 6,
                shards_checked: 6000,
                shards_corrupt: 7,
                shards_repaired: 6,
                shards_unreferenced: 1,
            }),
        ),
        body(
            "meta_response_chunk_list.bin",
            MetaResponse::ChunkList(vec![(4242, 7, chunk_record())]),
        ),
        body("meta_request_members.bin", MetaRequest::Members),
        body("meta_request_drain.bin", MetaRequest::Drain { node: 3 }),
        body("meta_request_remove_node.bin", MetaRequest::RemoveNode { node: 300 }),
        body("meta_request_draining.bin", MetaRequest::Draining),
        body(
            "meta_response_members.bin",
            MetaResponse::Members(vec![Member {
                record: node_record(),
                up: true,
                lost: false,
                draining: true,
                shards_referenced: 17,
                shards_queued_for_gc: 40_000,
            }]),
        ),
        body("meta_response_draining.bin", MetaResponse::Draining(vec![3, 300])),
        body(
            "node_request_list_shards.bin",
            NodeRequest::ListShards {
                after: Some((PIECE_ID, 4)),
                limit: 16_384,
            },
        ),
        body(
            "node_response_shards.bin",
            NodeResponse::Shards(vec![
                ListedShard {
                    piece_id: PIECE_ID,
                    shard_index: 5,
                    age_s: 3601,
                },
                ListedShard {
                    piece_id: 1,
                    shard_index: 0,
                    age_s: 0,
                },
            ]),
        ),
    ]
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Panics with every failure at once, so that one run shows all that changed.
fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(failures.is_empty(), "{what}:\n{}", failures.join("\n"));
}

#[test]
fn stored_bytes_decode_to_the_expected_values_and_back() {
    let bless = std::env::var(BLESS_VAR).is_ok_and(|value| value == "1");
    let mut failures = Vec::new();
    for case in cases() {
        let path = vectors_dir().join(case.file());
        let encoded = case.encode_expected();
        let stored = std::fs::read(&path).ok();
        if bless && stored.as_deref() != Some(encoded.as_slice()) {
            std::fs::create_dir_all(vectors_dir()).expect("create tests/vectors");
            std::fs::write(&path, &encoded).expect("write a golden vector");
            eprintln!("blessed {} ({} bytes)", case.file(), encoded.len());
        }
        let Some(stored) = std::fs::read(&path).ok() else {
            failures.push(format!("{}: missing; write it with {BLESS_VAR}=1", case.file()));
            continue;
        };
        match case.decode(&stored) {
            Outcome::Expected => {}
            outcome => failures.push(format!("{}: stored bytes gave {outcome}", case.file())),
        }
        if encoded != stored {
            failures.push(format!(
                "{}: encoding changed\n  stored {}\n  now    {}",
                case.file(),
                hex(&stored),
                hex(&encoded)
            ));
        }
    }
    assert_no_failures("golden vectors", &failures);
}

#[test]
fn every_stored_vector_is_checked() {
    let all_cases = cases();
    let files: BTreeSet<&str> = all_cases.iter().map(|case| case.file()).collect();
    assert_eq!(files.len(), all_cases.len(), "two cases share a file");
    let Ok(entries) = std::fs::read_dir(vectors_dir()) else {
        // Nothing stored yet: the test above reports each missing file.
        return;
    };
    let unchecked: Vec<String> = entries
        .map(|entry| entry.expect("list tests/vectors").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        // Dot files are git's (`.gitattributes` keeps the vectors binary).
        .filter(|name| {
            !name.starts_with('.') && !files.contains(name.as_str()) && !LEGACY_VECTORS.contains(&name.as_str())
        })
        .collect();
    assert!(unchecked.is_empty(), "vectors no case checks: {unchecked:?}");
}

#[test]
fn every_truncation_is_refused() {
    let mut failures = Vec::new();
    for case in cases() {
        let encoded = case.encode_expected();
        for len in 0..encoded.len() {
            let outcome = case.decode(&encoded[..len]);
            let refused_as_expected = match (&outcome, case.layout()) {
                (Outcome::Refused(DecodeError::Truncated { needed, .. }), Layout::Header { bytes }) => *needed == bytes,
                (Outcome::Refused(DecodeError::Truncated { needed: 3, .. }), Layout::Record) => len < 3,
                (Outcome::Refused(DecodeError::Malformed { .. }), Layout::Record) => len >= 3,
                (Outcome::Refused(DecodeError::Malformed { .. }), Layout::Body) => true,
                _ => false,
            };
            if !refused_as_expected {
                failures.push(format!(
                    "{}: first {len} of {} bytes gave {outcome}",
                    case.file(),
                    encoded.len()
                ));
            }
        }
    }
    assert_no_failures("truncated input", &failures);
}

#[test]
fn a_flipped_magic_byte_is_refused() {
    let mut failures = Vec::new();
    for case in cases() {
        let encoded = case.encode_expected();
        for at in 0..case.layout().magic_bytes() {
            let mut bytes = encoded.clone();
            bytes[at] ^= 0x01;
            let outcome = case.decode(&bytes);
            if !matches!(outcome, Outcome::Refused(DecodeError::BadMagic { .. })) {
                failures.push(format!("{}: magic byte {at} flipped gave {outcome}", case.file()));
            }
        }
    }
    assert_no_failures("flipped magic", &failures);
}

#[test]
fn a_newer_version_is_refused() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut bytes = case.encode_expected();
        match case.layout() {
            Layout::Header { .. } => {
                let version = u16::from_le_bytes([bytes[4], bytes[5]]);
                bytes[4..6].copy_from_slice(&(version + 1).to_le_bytes());
            }
            Layout::Record => bytes[2] += 1,
            // A body's version is its frame's.
            Layout::Body => continue,
        }
        let outcome = case.decode(&bytes);
        if !matches!(outcome, Outcome::Refused(DecodeError::UnsupportedVersion { .. })) {
            failures.push(format!("{}: version + 1 gave {outcome}", case.file()));
        }
    }
    assert_no_failures("newer version", &failures);
}

#[test]
fn an_unknown_message_variant_is_refused() {
    let mut failures = Vec::new();
    for case in cases().iter().filter(|case| case.layout() == Layout::Body) {
        let mut bytes = case.encode_expected();
        // Every message enum has fewer than 127 variants, so its tag is one byte.
        bytes[0] = 0x7f;
        let outcome = case.decode(&bytes);
        if !matches!(outcome, Outcome::Refused(DecodeError::Malformed { .. })) {
            failures.push(format!("{}: variant 127 gave {outcome}", case.file()));
        }
    }
    assert_no_failures("unknown variant", &failures);
}

#[test]
fn trailing_bytes_are_refused_except_after_a_header() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut bytes = case.encode_expected();
        bytes.push(0);
        let outcome = case.decode(&bytes);
        let as_expected = match case.layout() {
            // The shard payload or frame body follows the header directly.
            Layout::Header { .. } => matches!(outcome, Outcome::Expected),
            Layout::Record | Layout::Body => {
                matches!(outcome, Outcome::Refused(DecodeError::Malformed { .. }))
            }
        };
        if !as_expected {
            failures.push(format!("{}: one byte appended gave {outcome}", case.file()));
        }
    }
    assert_no_failures("trailing bytes", &failures);
}
