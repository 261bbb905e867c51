//! sohofs-storage is the engine: chunk crypto and erasure coding (`codec`),
//! the shard stores a node keeps (`shard_store`) and the node service
//! (`node`), the metadata store and meta service (`kv`, `meta`), the RPC
//! transport (`rpc`, `peers`), shard placement (`placement`), repair planning
//! (`repair`, pure) and the heal service that carries it out in meta
//! (`heal`: rebuild, scrub), and the client volume API (`volume`) that the
//! FUSE and NFS adapters use, and fault injection (`fault`) for tests and
//! the fault benchmark, and the sealing of names and symlink targets of
//! protected directories (`names`, pure).
//!
//! The adapters may use only [`volume`] and [`error`]; everything else is the
//! engine's own. Byte layouts come from `sohofs-format` and nowhere else.

pub mod codec;
pub mod error;
pub mod fault;
pub mod heal;
pub mod keytable;
pub mod kv;
pub mod meta;
pub mod names;
pub mod node;
pub mod peers;
pub mod placement;
pub mod repair;
pub mod rpc;
pub mod shard_store;
pub mod volume;

pub use error::{FsError, FsResult};
