//! The end-to-end harness: runs the real `sohofs` binary against real FUSE
//! mounts and gives the tests in `tests/tests/` what they share.
//!
//! It owns the life of every process and mount a test makes. A [`Cluster`] is
//! `sohofs up` in its own process group under a scratch directory; a [`Client`]
//! is a second `sohofs mount` of it. Dropping either — also while a test
//! panics — stops it with SIGTERM, then SIGKILLs whatever is left (found by a
//! tag in the environment, so children that left the process group are found
//! too) and lazily unmounts anything still mounted, so no test leaves a mount
//! or a process behind. Tests that start clusters run one at a time across
//! threads and processes (a file lock), since a 2-core machine cannot hold two.
//!
//! [`Slapd`] is a real OpenLDAP server on a scratch config for the keyring
//! tests.
//!
//! The harness relies only on the CLI contract of `sohofs` (see
//! `tests/README.md`) and on `SOHOFS_LOG`; it never reads the engine's files
//! except the node pid files the contract names.

pub mod cluster;
pub mod diff;
pub mod gateway;
pub mod manifest;
pub mod mounts;
pub mod process;
pub mod slapd;
pub mod status;
pub mod tree;
pub mod wait;

pub use cluster::{sohofs_bin, Client, Cluster, ClusterOptions};
pub use slapd::{Slapd, SlapdOptions};
pub use status::{NodeState, Status};
pub use tree::{assert_trees_equal, hash_tree, Entry, Tree};
pub use wait::{bounded, wait_until};
