//! Revocations at the edge: the set, its encoding for Envoy shared data, and each VM's copy.
//!
//! - [`set`]: [`RevocationSet`], compact: every revoked value is kept as a 64-bit hash plus its
//!   `until` (and a `sub`'s `issued_before`) in sorted arrays, split into [`SHARDS`] shards by
//!   the hash — about 12 bytes an entry, no per-entry allocation; lookups are binary searches.
//!   Feed application and pruning.
//! - [`page`]: a feed answer read straight into rows ([`FeedPage`]), without an owned copy of
//!   every entry.
//! - [`codec`]: the fixed-width binary blobs in shared data (one per shard, plus a [`Meta`]).
//! - [`replica`]: a worker VM's copy, synced from the blobs all-or-nothing, and the fetcher's
//!   publication of a change.
//!
//! Hashing instead of keeping the values: two different values with the same hash make a token
//! that was not revoked look revoked (a 401, never a pass); with 1 000 000 entries the chance
//! that a given token collides with one is about 1 in 18 million million, and the values are
//! ids the issuer mints, which a client cannot choose. The issuer's feed format is unchanged.

pub mod codec;
pub mod page;
pub mod replica;
pub mod set;

pub use codec::{decode_shard, DecodeError, Meta, ShardBlob};
pub use page::FeedPage;
pub use replica::{InShared, Publication, Replica, SyncError};
pub use set::{
    entry_hash, fnv1a, Applied, ApplyError, Changed, RevocationSet, Revoked, Shard,
    MAX_VALUE_BYTES, SHARDS,
};
