//! A worker VM's copy of the shared revocation set, and the fetcher's publication.
//!
//! Publication protocol (single writer: the elected fetcher): write every changed shard blob
//! (each carrying the generation it belongs to), then the meta blob listing each shard's
//! generation. A reader ([`Replica`]) reads the meta, re-reads only the shards whose
//! generation changed, and installs them only if every shard blob carries the generation the
//! meta promised; otherwise (a write in progress) it keeps its copy and retries on the next tick.

use super::codec::{decode_shard, DecodeError, Meta};
use super::set::{RevocationSet, Shard, SHARDS};

/// A worker VM's decoded copy of the shared set, and what it last installed.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    pub set: RevocationSet,
    /// The meta this copy reflects (`None` before the first successful sync).
    pub meta: Option<Meta>,
}

/// Why a sync did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("shard {0} is missing from shared data")]
    MissingShard(usize),
    #[error("shard {index} is at generation {found}, the meta promised {wanted}; a write is in progress")]
    Torn {
        index: usize,
        found: u64,
        wanted: u64,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Replica {
    /// The generation of the installed copy (0 before the first sync).
    pub fn generation(&self) -> u64 {
        self.meta.as_ref().map_or(0, |meta| meta.generation)
    }

    /// Shards whose generation in `meta` differs from the installed copy.
    pub fn stale_shards(&self, meta: &Meta) -> Vec<usize> {
        meta.shard_generations
            .iter()
            .enumerate()
            .filter(|(index, generation)| {
                let mine = self
                    .meta
                    .as_ref()
                    .and_then(|held| held.shard_generations.get(*index))
                    .copied()
                    .unwrap_or(0);
                mine != **generation
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// Installs `meta` with the blobs of its stale shards (`read(index)` returns a shard's blob
    /// from shared data). All-or-nothing: on error the copy is unchanged.
    ///
    /// # Errors
    /// [`SyncError`] when a blob is missing, torn (older or newer than the meta says) or
    /// malformed: keep serving the current copy and try again on the next tick.
    pub fn sync(
        &mut self,
        meta: Meta,
        mut read: impl FnMut(usize) -> Option<Vec<u8>>,
    ) -> Result<(), SyncError> {
        let mut fresh = Vec::new();
        for index in self.stale_shards(&meta) {
            let wanted = meta.shard_generations.get(index).copied().unwrap_or(0);
            let shard = if wanted == 0 {
                Shard::default()
            } else {
                let bytes = read(index).ok_or(SyncError::MissingShard(index))?;
                let blob = decode_shard(&bytes)?;
                if blob.generation != wanted || blob.index != index {
                    return Err(SyncError::Torn {
                        index,
                        found: blob.generation,
                        wanted,
                    });
                }
                blob.shard
            };
            fresh.push((index, shard));
        }
        for (index, shard) in fresh {
            self.set.install_shard(index, shard);
        }
        self.set.seq = meta.seq;
        self.meta = Some(meta);
        Ok(())
    }

    /// For the writer: the shards and meta that publish the `changed` shards of `self.set` (the
    /// caller already mutated it) at `last_ok_ms`. Updates `self.meta` to the new meta.
    /// A new generation is above both ours and the one in shared data, so it is never reused.
    /// With nothing changed only `seq` and `last_ok_ms` move. Every shard is written again when
    /// shared data holds what another writer published (see [`InShared`]).
    pub fn publish(&mut self, changed: &[usize], last_ok_ms: u64, shared: InShared) -> Publication {
        let previous = self.meta.clone().unwrap_or(Meta {
            generation: 0,
            seq: 0,
            last_ok_ms: 0,
            shard_generations: vec![0; SHARDS],
            entries: 0,
        });
        let mut meta = previous.clone();
        let mut shards = Vec::new();
        // Someone else published since we did: rewrite every shard so that no reader is left
        // with a mix of their shards and ours.
        let rewrite_all = shared.foreign || shared.generation > previous.generation;
        if rewrite_all || !changed.is_empty() || self.meta.is_none() {
            meta.generation = previous.generation.max(shared.generation).saturating_add(1);
            let mut mark = |index: usize| {
                if let Some(slot) = meta.shard_generations.get_mut(index) {
                    *slot = meta.generation;
                    shards.push(index);
                }
            };
            if rewrite_all {
                (0..SHARDS).for_each(&mut mark);
            } else {
                changed.iter().copied().for_each(&mut mark);
            }
        }
        meta.seq = self.set.seq;
        meta.last_ok_ms = last_ok_ms;
        meta.entries = u32::try_from(self.set.len()).unwrap_or(u32::MAX);
        self.meta = Some(meta.clone());
        Publication { shards, meta }
    }
}

/// What the writer knows of the meta in shared data as it publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InShared {
    /// The generation published there (0 when none).
    pub generation: u64,
    /// Another writer wrote the meta since this one last did (wasm: its CAS moved) — a writer
    /// of an older build during a plugin update, or one that held the lease before. Shards
    /// are then all written again even when both wrote the same generation number, which the
    /// generation alone cannot tell apart.
    pub foreign: bool,
}

/// What the writer puts in shared data: the shard blobs first, then the meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The shards to rewrite, at `meta.generation`.
    pub shards: Vec<usize>,
    pub meta: Meta,
}

impl Publication {
    /// The shard blobs, encoded one at a time from `set` (the writer's): a full rewrite of a
    /// large set never holds every blob at once.
    pub fn blobs<'a>(
        &'a self,
        set: &'a RevocationSet,
    ) -> impl Iterator<Item = (usize, Vec<u8>)> + 'a {
        self.shards
            .iter()
            .map(move |&index| (index, set.encode_shard(index, self.meta.generation)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::set::tests::{claims, entry, feed, shard_index, NOW};
    use crate::revocation::Revoked;
    use std::collections::HashMap;
    use weauth_token::revocation::{Entry, EntryKind};

    /// A fake shared-data store: shard index → blob.
    type Store = HashMap<usize, Vec<u8>>;

    /// Writes `publication`'s shard blobs of `set` to `store`, as the fetching VM does.
    fn write(store: &mut Store, publication: &Publication, set: &RevocationSet) {
        for (index, blob) in publication.blobs(set) {
            store.insert(index, blob);
        }
    }

    /// `writer` applies the feed answer `seq` (`full` or a delta) holding `entry`, at [`NOW`],
    /// and publishes it at `seq` ms; the blobs are not written yet.
    fn apply_and_publish(writer: &mut Replica, seq: u64, full: bool, entry: Entry) -> Publication {
        let applied = writer
            .set
            .apply(&feed(seq, full, vec![entry]), NOW)
            .unwrap();
        writer.publish(&applied.changed, seq, InShared::default())
    }

    /// Where the sync tests start: a writer that published jti `a` at seq 1, the store holding
    /// its blobs, a reader synced to it, and that first publication.
    fn writer_store_reader() -> (Replica, Store, Replica, Publication) {
        let mut writer = Replica::default();
        let mut store = Store::new();
        let first = apply_and_publish(
            &mut writer,
            1,
            true,
            entry(1, EntryKind::Jti, "a", NOW + 100),
        );
        write(&mut store, &first, &writer.set);
        let mut reader = Replica::default();
        reader
            .sync(first.meta.clone(), |i| store.get(&i).cloned())
            .unwrap();
        (writer, store, reader, first)
    }

    #[test]
    fn replica_sync_reads_only_changed_shards() {
        let (mut writer, mut store, mut reader, _) = writer_store_reader();
        assert_eq!(reader.set, writer.set);

        let second = apply_and_publish(
            &mut writer,
            2,
            false,
            entry(2, EntryKind::Sid, "s", NOW + 100),
        );
        write(&mut store, &second, &writer.set);
        let mut reads = Vec::new();
        reader
            .sync(second.meta.clone(), |i| {
                reads.push(i);
                store.get(&i).cloned()
            })
            .unwrap();
        assert_eq!(reads, vec![shard_index(EntryKind::Sid, "s")]);
        assert_eq!(reader.set, writer.set);
        assert_eq!(reader.set.seq, 2);
    }

    #[test]
    fn replica_sync_torn_write_keeps_copy() {
        let (mut writer, store, mut reader, first) = writer_store_reader();

        let second = apply_and_publish(
            &mut writer,
            2,
            true,
            entry(2, EntryKind::Jti, "b", NOW + 100),
        );
        // Meta visible but shard blobs not yet written.
        let err = reader
            .sync(second.meta.clone(), |i| store.get(&i).cloned())
            .unwrap_err();
        assert!(
            matches!(err, SyncError::Torn { .. } | SyncError::MissingShard(_)),
            "{err:?}"
        );
        assert_eq!(reader.generation(), first.meta.generation);
        assert_eq!(
            reader.set.check(&claims("a", "s", "u", NOW)),
            Some(Revoked::Jti)
        );
    }

    /// The shard's blob there, but of the generation before (the new one not yet written):
    /// torn, not installed as the new generation.
    #[test]
    fn replica_sync_old_blob_of_a_changed_shard_is_torn() {
        let (mut writer, store, mut reader, first) = writer_store_reader();
        let target = shard_index(EntryKind::Jti, "a");
        let same_shard = (0..)
            .map(|i| format!("b{i}"))
            .find(|v| shard_index(EntryKind::Jti, v) == target)
            .unwrap();
        let second = apply_and_publish(
            &mut writer,
            2,
            false,
            entry(2, EntryKind::Jti, &same_shard, NOW + 100),
        );
        let err = reader
            .sync(second.meta.clone(), |i| store.get(&i).cloned())
            .unwrap_err();
        assert_eq!(
            err,
            SyncError::Torn {
                index: target,
                found: first.meta.generation,
                wanted: second.meta.generation
            }
        );
        assert_eq!(reader.generation(), first.meta.generation);
        assert_eq!(Replica::default().generation(), 0);
    }

    #[test]
    fn publish_without_change_keeps_generation() {
        let mut writer = Replica::default();
        let first = writer.publish(&[], 1, InShared::default());
        let second = writer.publish(&[], 2, InShared::default());
        assert_eq!(first.meta.generation, second.meta.generation);
        assert_eq!(second.meta.last_ok_ms, 2);
        assert!(second.shards.is_empty());
    }

    #[test]
    fn publish_generation_above_floor() {
        let mut writer = Replica::default();
        let shared = InShared {
            generation: 41,
            foreign: false,
        };
        let publication = writer.publish(&[3], 1, shared);
        assert_eq!(publication.meta.generation, 42);
        assert_eq!(publication.meta.shard_generations[3], 42);
        // A foreign generation was seen: every shard is rewritten.
        assert_eq!(publication.shards.len(), SHARDS);
    }

    #[test]
    fn publish_over_another_writer_of_the_same_generation_rewrites_every_shard() {
        let mut writer = Replica::default();
        let first = writer.publish(&[3], 1, InShared::default());
        assert_eq!(first.shards, vec![3]);
        // Another writer published generation 1 too (its own shard 5): the generation cannot
        // tell, the meta's CAS did.
        let shared = InShared {
            generation: 1,
            foreign: true,
        };
        let second = writer.publish(&[4], 2, shared);
        assert_eq!(second.meta.generation, 2);
        assert_eq!(second.shards, (0..SHARDS).collect::<Vec<_>>());
        assert!(second.meta.shard_generations.iter().all(|&g| g == 2));
        // Once ours again: only what changed.
        let third = writer.publish(
            &[4],
            3,
            InShared {
                generation: 2,
                foreign: false,
            },
        );
        assert_eq!(third.shards, vec![4]);
    }
}
