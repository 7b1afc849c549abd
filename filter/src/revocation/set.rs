//! The revocation set: lookups, feed application, and its encoding for Envoy shared data.
//!
//! [`RevocationSet`] answers "is this token revoked?" with O(1) hash lookups by `jti`, `sid` and
//! `sub` (+ `issued_before`). It is split into [`SHARDS`] shards by a stable hash of
//! (kind, value), because Envoy's shared data has no delete and no key listing: the set is
//! stored under a fixed, bounded set of keys — one blob per shard plus a [`Meta`] blob — and a
//! feed delta rewrites only the shards it touched.
//!
//! Publication protocol (single writer: the elected fetcher): write every changed shard blob
//! (each carrying the generation it belongs to), then the meta blob listing each shard's
//! generation. A reader ([`Replica`]) reads the meta, re-reads only the shards whose
//! generation changed, and installs them only if every shard blob carries the generation the
//! meta promised; otherwise (a write in progress) it keeps its copy and retries on the next tick.
//!
//! Entries are dropped once `until < now` ([`RevocationSet::prune`]). Pure: time is an argument.

use std::collections::HashMap;

use weauth_token::revocation::{EntryKind, FeedResponse};
use weauth_token::Claims;

/// Number of shard blobs in shared data.
pub const SHARDS: usize = 32;
/// Longest revoked value (`jti`, `sid`, `sub`) kept; longer feed entries are skipped.
pub const MAX_VALUE_BYTES: usize = 512;

const SHARD_MAGIC: &[u8; 4] = b"WRS1";
const META_MAGIC: &[u8; 4] = b"WRM1";

/// Why a revocation blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("revocation blob is truncated")]
    Truncated,
    #[error("revocation blob has an unknown format (bad magic)")]
    BadMagic,
    #[error("revocation blob has an unknown entry kind {0}")]
    BadKind(u8),
    #[error("revocation blob has a value that is not UTF-8")]
    BadValue,
    #[error("revocation blob has trailing bytes")]
    Trailing,
    #[error("revocation blob is for shard {0}, outside 0..{SHARDS}")]
    BadShard(usize),
}

/// Why a feed response could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("feed delta goes back from seq {held} to {got}; starting over from a full set")]
    SeqWentBack { held: u64, got: u64 },
}

/// Which rule revoked a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Jti,
    Sid,
    Sub,
}

impl Revoked {
    /// Stable reason for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Revoked::Jti => "revoked_jti",
            Revoked::Sid => "revoked_sid",
            Revoked::Sub => "revoked_sub",
        }
    }
}

/// One shard: the three maps, value → `until` (and `issued_before` for `sub`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    jti: HashMap<String, i64>,
    sid: HashMap<String, i64>,
    /// sub → (issued_before, until)
    sub: HashMap<String, (i64, i64)>,
}

impl Shard {
    fn len(&self) -> usize {
        self.jti.len() + self.sid.len() + self.sub.len()
    }

    fn insert(&mut self, kind: EntryKind, value: String, issued_before: i64, until: i64) {
        match kind {
            EntryKind::Jti => {
                let slot = self.jti.entry(value).or_insert(until);
                *slot = (*slot).max(until);
            }
            EntryKind::Sid => {
                let slot = self.sid.entry(value).or_insert(until);
                *slot = (*slot).max(until);
            }
            EntryKind::Sub => {
                // Two bans of one user merge into the later cut-off and the later `until`: every
                // token issued before the later cut-off expires by that entry's own `until`.
                let slot = self.sub.entry(value).or_insert((issued_before, until));
                *slot = (slot.0.max(issued_before), slot.1.max(until));
            }
        }
    }

    /// Drops entries past `until`; returns whether anything was dropped.
    fn prune(&mut self, now: i64) -> bool {
        let before = self.len();
        self.jti.retain(|_, until| *until >= now);
        self.sid.retain(|_, until| *until >= now);
        self.sub.retain(|_, (_, until)| *until >= now);
        self.len() != before
    }
}

/// Stable FNV-1a hash, identical in every VM (std's hasher is randomly seeded).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Jti => 1,
        EntryKind::Sid => 2,
        EntryKind::Sub => 3,
    }
}

fn shard_of(kind: EntryKind, value: &str) -> usize {
    // SHARDS is a small constant, so the remainder always fits in usize.
    usize::try_from(fnv1a(&[&[kind_byte(kind)], value.as_bytes()]) % SHARDS as u64).unwrap_or(0)
}

/// The revoked jtis, sids and subs, plus the feed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSet {
    /// The feed `seq` this set reflects (`since` for the next poll; 0 = fetch a full set).
    pub seq: u64,
    shards: Vec<Shard>,
}

impl Default for RevocationSet {
    fn default() -> Self {
        RevocationSet {
            seq: 0,
            shards: vec![Shard::default(); SHARDS],
        }
    }
}

/// Which shards changed (indices), so only those are rewritten.
pub type Changed = Vec<usize>;

impl RevocationSet {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, kind: EntryKind, value: &str) -> Option<&Shard> {
        self.shards.get(shard_of(kind, value))
    }

    /// Whether the token is revoked, checking `jti`, then `sid`, then `sub`/`issued_before`.
    pub fn check(&self, claims: &Claims) -> Option<Revoked> {
        if self
            .shard(EntryKind::Jti, &claims.jti)
            .is_some_and(|shard| shard.jti.contains_key(&claims.jti))
        {
            return Some(Revoked::Jti);
        }
        if self
            .shard(EntryKind::Sid, &claims.sid)
            .is_some_and(|shard| shard.sid.contains_key(&claims.sid))
        {
            return Some(Revoked::Sid);
        }
        let banned = self
            .shard(EntryKind::Sub, &claims.sub)
            .and_then(|shard| shard.sub.get(&claims.sub))
            .is_some_and(|(issued_before, _)| claims.iat < *issued_before);
        banned.then_some(Revoked::Sub)
    }

    /// Applies a feed response at local time `now`: a full response replaces the set, a delta
    /// adds to it. Entries already past `until`, `sub` entries without `issued_before` and values
    /// longer than [`MAX_VALUE_BYTES`] are skipped (counted in the result). Then prunes.
    ///
    /// # Errors
    /// [`ApplyError::SeqWentBack`] when a delta's `seq` is below ours (the issuer lost state):
    /// the set's `seq` is reset to 0 so that the next poll asks for a full set.
    pub fn apply(&mut self, feed: &FeedResponse, now: i64) -> Result<Applied, ApplyError> {
        let mut changed = [false; SHARDS];
        if !feed.full && feed.seq < self.seq {
            let held = self.seq;
            self.seq = 0;
            return Err(ApplyError::SeqWentBack {
                held,
                got: feed.seq,
            });
        }
        let before = feed
            .full
            .then(|| std::mem::replace(&mut self.shards, vec![Shard::default(); SHARDS]));
        let mut skipped = 0;
        for entry in &feed.entries {
            let issued_before = match (entry.kind, entry.issued_before) {
                (EntryKind::Sub, None) => {
                    skipped += 1;
                    continue;
                }
                (_, value) => value.unwrap_or(0),
            };
            if !entry.is_live(now) || entry.value.is_empty() || entry.value.len() > MAX_VALUE_BYTES
            {
                skipped += 1;
                continue;
            }
            let index = shard_of(entry.kind, &entry.value);
            if let Some(shard) = self.shards.get_mut(index) {
                shard.insert(entry.kind, entry.value.clone(), issued_before, entry.until);
                if let Some(flag) = changed.get_mut(index) {
                    *flag = true;
                }
            }
        }
        if let Some(before) = before {
            // A full set: a shard changed when its content differs from what we held.
            for (index, (old, new)) in before.iter().zip(&self.shards).enumerate() {
                if let Some(flag) = changed.get_mut(index) {
                    *flag = old != new;
                }
            }
        }
        self.seq = feed.seq;
        for index in self.prune(now) {
            if let Some(flag) = changed.get_mut(index) {
                *flag = true;
            }
        }
        Ok(Applied {
            changed: changed
                .iter()
                .enumerate()
                .filter_map(|(index, flag)| flag.then_some(index))
                .collect(),
            skipped,
        })
    }

    /// Drops entries past their `until`; returns the shards that changed.
    pub fn prune(&mut self, now: i64) -> Changed {
        self.shards
            .iter_mut()
            .enumerate()
            .filter_map(|(index, shard)| shard.prune(now).then_some(index))
            .collect()
    }

    /// Encodes one shard as a blob stamped with `generation`.
    ///
    /// Layout (little endian): `WRS1`, generation u64, shard u16, count u32, then per entry:
    /// kind u8 (1 jti, 2 sid, 3 sub), until i64, [issued_before i64 for sub], len u16, value.
    pub fn encode_shard(&self, index: usize, generation: u64) -> Vec<u8> {
        let empty = Shard::default();
        let shard = self.shards.get(index).unwrap_or(&empty);
        let mut out = Vec::with_capacity(18 + shard.len() * 48);
        out.extend_from_slice(SHARD_MAGIC);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&u16::try_from(index).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(shard.len()).unwrap_or(u32::MAX).to_le_bytes());
        let mut put = |kind: EntryKind, value: &str, until: i64, issued_before: Option<i64>| {
            out.push(kind_byte(kind));
            out.extend_from_slice(&until.to_le_bytes());
            if let Some(issued_before) = issued_before {
                out.extend_from_slice(&issued_before.to_le_bytes());
            }
            // Values are capped at MAX_VALUE_BYTES on the way in, far below u16::MAX.
            let len = u16::try_from(value.len()).unwrap_or(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(value.as_bytes().get(..usize::from(len)).unwrap_or(&[]));
        };
        for (value, until) in &shard.jti {
            put(EntryKind::Jti, value, *until, None);
        }
        for (value, until) in &shard.sid {
            put(EntryKind::Sid, value, *until, None);
        }
        for (value, (issued_before, until)) in &shard.sub {
            put(EntryKind::Sub, value, *until, Some(*issued_before));
        }
        out
    }

    /// Replaces one shard (from [`decode_shard`]).
    pub fn install_shard(&mut self, index: usize, shard: Shard) {
        if let Some(slot) = self.shards.get_mut(index) {
            *slot = shard;
        }
    }
}

/// The result of [`RevocationSet::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Shards to rewrite.
    pub changed: Changed,
    /// Entries ignored (already expired, malformed).
    pub skipped: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let head = self.bytes.get(..n).ok_or(DecodeError::Truncated)?;
        self.bytes = self.bytes.get(n..).unwrap_or(&[]);
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

/// A decoded shard blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardBlob {
    pub generation: u64,
    pub index: usize,
    pub shard: Shard,
}

/// Decodes a blob written by [`RevocationSet::encode_shard`].
///
/// # Errors
/// [`DecodeError`] on any malformed or truncated input.
pub fn decode_shard(bytes: &[u8]) -> Result<ShardBlob, DecodeError> {
    let mut reader = Reader { bytes };
    if reader.take(4)? != SHARD_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let generation = reader.u64()?;
    let index = usize::from(reader.u16()?);
    if index >= SHARDS {
        return Err(DecodeError::BadShard(index));
    }
    let count = reader.u32()?;
    let mut shard = Shard::default();
    for _ in 0..count {
        let kind = match reader.u8()? {
            1 => EntryKind::Jti,
            2 => EntryKind::Sid,
            3 => EntryKind::Sub,
            other => return Err(DecodeError::BadKind(other)),
        };
        let until = reader.i64()?;
        let issued_before = if kind == EntryKind::Sub {
            reader.i64()?
        } else {
            0
        };
        let len = usize::from(reader.u16()?);
        let value = std::str::from_utf8(reader.take(len)?).map_err(|_| DecodeError::BadValue)?;
        shard.insert(kind, value.to_string(), issued_before, until);
    }
    reader.end()?;
    Ok(ShardBlob {
        generation,
        index,
        shard,
    })
}

/// The meta blob: what generation each shard is at, the feed position and freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Bumped on every publication that changes a shard.
    pub generation: u64,
    /// Feed `seq` of the published set.
    pub seq: u64,
    /// Host time (unix ms) of the last successful feed response.
    pub last_ok_ms: u64,
    /// Generation of each shard (0 = never written, empty).
    pub shard_generations: Vec<u64>,
    /// Number of entries in the whole set.
    pub entries: u32,
}

impl Meta {
    /// Layout: `WRM1`, generation u64, seq u64, last_ok_ms u64, entries u32, shards u16,
    /// then one u64 generation per shard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(34 + 8 * self.shard_generations.len());
        out.extend_from_slice(META_MAGIC);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.last_ok_ms.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        let count = u16::try_from(self.shard_generations.len()).unwrap_or(0);
        out.extend_from_slice(&count.to_le_bytes());
        for generation in self.shard_generations.iter().take(usize::from(count)) {
            out.extend_from_slice(&generation.to_le_bytes());
        }
        out
    }

    /// # Errors
    /// [`DecodeError`] on malformed input or a shard count other than [`SHARDS`].
    pub fn decode(bytes: &[u8]) -> Result<Meta, DecodeError> {
        let mut reader = Reader { bytes };
        if reader.take(4)? != META_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let generation = reader.u64()?;
        let seq = reader.u64()?;
        let last_ok_ms = reader.u64()?;
        let entries = reader.u32()?;
        let count = usize::from(reader.u16()?);
        if count != SHARDS {
            return Err(DecodeError::BadShard(count));
        }
        let shard_generations = (0..count)
            .map(|_| reader.u64())
            .collect::<Result<Vec<_>, _>>()?;
        reader.end()?;
        Ok(Meta {
            generation,
            seq,
            last_ok_ms,
            shard_generations,
            entries,
        })
    }
}

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

    /// For the writer: the blobs and meta that publish the `changed` shards of `self.set` (the
    /// caller already mutated it) at `last_ok_ms`. Updates `self.meta` to the new meta.
    /// A new generation is above both ours and `floor` (the generation currently in shared
    /// data), so it is never reused. With nothing changed only `seq` and `last_ok_ms` move.
    pub fn publish(&mut self, changed: &[usize], last_ok_ms: u64, floor: u64) -> Publication {
        let previous = self.meta.clone().unwrap_or(Meta {
            generation: 0,
            seq: 0,
            last_ok_ms: 0,
            shard_generations: vec![0; SHARDS],
            entries: 0,
        });
        let mut meta = previous.clone();
        let mut blobs = Vec::new();
        // Someone else published a generation we never installed: rewrite every shard so that
        // no reader is left with a mix of their shards and ours.
        let all: Vec<usize> = (0..SHARDS).collect();
        let changed = if floor > previous.generation {
            &all[..]
        } else {
            changed
        };
        if !changed.is_empty() || self.meta.is_none() {
            meta.generation = previous.generation.max(floor).saturating_add(1);
            for &index in changed {
                if let Some(slot) = meta.shard_generations.get_mut(index) {
                    *slot = meta.generation;
                    blobs.push((index, self.set.encode_shard(index, meta.generation)));
                }
            }
        }
        meta.seq = self.set.seq;
        meta.last_ok_ms = last_ok_ms;
        meta.entries = u32::try_from(self.set.len()).unwrap_or(u32::MAX);
        self.meta = Some(meta.clone());
        Publication { blobs, meta }
    }
}

/// What the writer puts in shared data: the shard blobs first, then the meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub blobs: Vec<(usize, Vec<u8>)>,
    pub meta: Meta,
}

#[cfg(test)]
mod tests {
    use super::*;
    use weauth_token::revocation::Entry;
    use weauth_token::Audience;

    const NOW: i64 = 1_700_000_000;

    fn claims(jti: &str, sid: &str, sub: &str, iat: i64) -> Claims {
        Claims {
            iss: "i".into(),
            aud: Audience::One("a".into()),
            sub: sub.into(),
            sid: sid.into(),
            jti: jti.into(),
            iat,
            nbf: iat,
            exp: iat + 900,
            openid: "o".into(),
            unionid: None,
            appid: "w".into(),
            scope: None,
        }
    }

    fn entry(seq: u64, kind: EntryKind, value: &str, until: i64) -> Entry {
        Entry {
            seq,
            kind,
            value: value.into(),
            issued_before: (kind == EntryKind::Sub).then_some(NOW),
            until,
        }
    }

    fn feed(seq: u64, full: bool, entries: Vec<Entry>) -> FeedResponse {
        FeedResponse {
            seq,
            full,
            now: NOW,
            entries,
        }
    }

    fn set_with(entries: Vec<Entry>) -> RevocationSet {
        let mut set = RevocationSet::default();
        set.apply(&feed(10, true, entries), NOW).unwrap();
        set
    }

    #[test]
    fn check_jti_revoked() {
        let set = set_with(vec![entry(1, EntryKind::Jti, "j1", NOW + 100)]);
        assert_eq!(set.check(&claims("j1", "s", "u", NOW)), Some(Revoked::Jti));
        assert_eq!(set.check(&claims("j2", "s", "u", NOW)), None);
    }

    #[test]
    fn check_sid_revoked() {
        let set = set_with(vec![entry(1, EntryKind::Sid, "s1", NOW + 100)]);
        assert_eq!(set.check(&claims("j", "s1", "u", NOW)), Some(Revoked::Sid));
        assert_eq!(set.check(&claims("j", "s2", "u", NOW)), None);
    }

    #[test]
    fn check_sub_only_before_cutoff() {
        let set = set_with(vec![entry(1, EntryKind::Sub, "u1", NOW + 100)]);
        assert_eq!(
            set.check(&claims("j", "s", "u1", NOW - 1)),
            Some(Revoked::Sub)
        );
        // Issued at the cut-off or later: a fresh login after the ban/logout-everywhere.
        assert_eq!(set.check(&claims("j", "s", "u1", NOW)), None);
        assert_eq!(set.check(&claims("j", "s", "u2", NOW - 1)), None);
    }

    #[test]
    fn apply_full_replaces_set() {
        let mut set = set_with(vec![entry(1, EntryKind::Jti, "old", NOW + 100)]);
        let applied = set
            .apply(
                &feed(20, true, vec![entry(2, EntryKind::Jti, "new", NOW + 100)]),
                NOW,
            )
            .unwrap();
        assert_eq!(set.check(&claims("old", "s", "u", NOW)), None);
        assert_eq!(set.check(&claims("new", "s", "u", NOW)), Some(Revoked::Jti));
        assert_eq!(set.seq, 20);
        assert!(!applied.changed.is_empty());
    }

    #[test]
    fn apply_delta_adds_and_moves_seq() {
        let mut set = set_with(vec![entry(1, EntryKind::Jti, "a", NOW + 100)]);
        set.apply(
            &feed(11, false, vec![entry(11, EntryKind::Sid, "s", NOW + 100)]),
            NOW,
        )
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.seq, 11);
    }

    #[test]
    fn apply_delta_changes_only_touched_shard() {
        let mut set = set_with(vec![]);
        let applied = set
            .apply(
                &feed(11, false, vec![entry(11, EntryKind::Sid, "s", NOW + 100)]),
                NOW,
            )
            .unwrap();
        assert_eq!(applied.changed, vec![shard_of(EntryKind::Sid, "s")]);
    }

    #[test]
    fn apply_empty_delta_changes_nothing() {
        let mut set = set_with(vec![entry(1, EntryKind::Jti, "a", NOW + 100)]);
        let applied = set.apply(&feed(10, false, vec![]), NOW).unwrap();
        assert!(applied.changed.is_empty());
    }

    #[test]
    fn apply_delta_seq_back_resets_to_full() {
        let mut set = set_with(vec![]);
        let err = set.apply(&feed(3, false, vec![]), NOW).unwrap_err();
        assert_eq!(err, ApplyError::SeqWentBack { held: 10, got: 3 });
        assert_eq!(set.seq, 0);
    }

    #[test]
    fn apply_expired_entry_skipped() {
        let mut set = RevocationSet::default();
        let applied = set
            .apply(
                &feed(1, true, vec![entry(1, EntryKind::Jti, "j", NOW - 1)]),
                NOW,
            )
            .unwrap();
        assert_eq!(applied.skipped, 1);
        assert!(set.is_empty());
    }

    #[test]
    fn apply_sub_without_issued_before_skipped() {
        let mut bad = entry(1, EntryKind::Sub, "u", NOW + 10);
        bad.issued_before = None;
        let mut set = RevocationSet::default();
        assert_eq!(
            set.apply(&feed(1, true, vec![bad]), NOW).unwrap().skipped,
            1
        );
        assert!(set.is_empty());
    }

    #[test]
    fn prune_drops_past_until() {
        let mut set = set_with(vec![
            entry(1, EntryKind::Jti, "short", NOW + 10),
            entry(2, EntryKind::Sid, "long", NOW + 1000),
        ]);
        let changed = set.prune(NOW + 11);
        assert_eq!(changed, vec![shard_of(EntryKind::Jti, "short")]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.check(&claims("short", "s", "u", NOW)), None);
    }

    #[test]
    fn sub_entries_merge_to_later_cutoff() {
        let mut early = entry(1, EntryKind::Sub, "u", NOW + 100);
        early.issued_before = Some(NOW - 50);
        let mut late = entry(2, EntryKind::Sub, "u", NOW + 50);
        late.issued_before = Some(NOW);
        let set = set_with(vec![early, late]);
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.check(&claims("j", "s", "u", NOW - 10)),
            Some(Revoked::Sub)
        );
    }

    #[test]
    fn shard_encoding_roundtrip() {
        let set = set_with(
            (0..200)
                .map(|i| {
                    let kind = [EntryKind::Jti, EntryKind::Sid, EntryKind::Sub][i % 3];
                    entry(i as u64, kind, &format!("v{i}"), NOW + i as i64)
                })
                .collect(),
        );
        let mut copy = RevocationSet::default();
        for index in 0..SHARDS {
            let blob = decode_shard(&set.encode_shard(index, 7)).unwrap();
            assert_eq!(blob.generation, 7);
            assert_eq!(blob.index, index);
            copy.install_shard(index, blob.shard);
        }
        copy.seq = set.seq;
        assert_eq!(copy, set);
    }

    #[test]
    fn decode_shard_truncated_refused() {
        let set = set_with(vec![entry(1, EntryKind::Jti, "j", NOW + 100)]);
        let index = shard_of(EntryKind::Jti, "j");
        let blob = set.encode_shard(index, 1);
        for cut in 0..blob.len() {
            assert!(decode_shard(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn decode_shard_bad_magic_refused() {
        let mut blob = RevocationSet::default().encode_shard(0, 1);
        blob[0] = b'X';
        assert_eq!(decode_shard(&blob), Err(DecodeError::BadMagic));
    }

    #[test]
    fn decode_shard_trailing_refused() {
        let mut blob = RevocationSet::default().encode_shard(0, 1);
        blob.push(0);
        assert_eq!(decode_shard(&blob), Err(DecodeError::Trailing));
    }

    #[test]
    fn meta_roundtrip() {
        let meta = Meta {
            generation: 3,
            seq: 99,
            last_ok_ms: 1234,
            shard_generations: (0..SHARDS as u64).collect(),
            entries: 5,
        };
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
    }

    #[test]
    fn meta_wrong_shard_count_refused() {
        let meta = Meta {
            generation: 1,
            seq: 1,
            last_ok_ms: 1,
            shard_generations: vec![0; SHARDS - 1],
            entries: 0,
        };
        assert!(Meta::decode(&meta.encode()).is_err());
    }

    /// A fake shared-data store: key → bytes.
    fn write(store: &mut HashMap<usize, Vec<u8>>, publication: &Publication) {
        for (index, blob) in &publication.blobs {
            store.insert(*index, blob.clone());
        }
    }

    #[test]
    fn replica_sync_reads_only_changed_shards() {
        let mut writer = Replica::default();
        let mut store = HashMap::new();
        let applied = writer
            .set
            .apply(
                &feed(1, true, vec![entry(1, EntryKind::Jti, "a", NOW + 100)]),
                NOW,
            )
            .unwrap();
        let first = writer.publish(&applied.changed, 1, 0);
        write(&mut store, &first);
        let mut reader = Replica::default();
        reader
            .sync(first.meta.clone(), |i| store.get(&i).cloned())
            .unwrap();
        assert_eq!(reader.set, writer.set);

        let applied = writer
            .set
            .apply(
                &feed(2, false, vec![entry(2, EntryKind::Sid, "s", NOW + 100)]),
                NOW,
            )
            .unwrap();
        let second = writer.publish(&applied.changed, 2, 0);
        write(&mut store, &second);
        let mut reads = Vec::new();
        reader
            .sync(second.meta.clone(), |i| {
                reads.push(i);
                store.get(&i).cloned()
            })
            .unwrap();
        assert_eq!(reads, vec![shard_of(EntryKind::Sid, "s")]);
        assert_eq!(reader.set, writer.set);
        assert_eq!(reader.set.seq, 2);
    }

    #[test]
    fn replica_sync_torn_write_keeps_copy() {
        let mut writer = Replica::default();
        let mut store = HashMap::new();
        let applied = writer
            .set
            .apply(
                &feed(1, true, vec![entry(1, EntryKind::Jti, "a", NOW + 100)]),
                NOW,
            )
            .unwrap();
        let first = writer.publish(&applied.changed, 1, 0);
        write(&mut store, &first);
        let mut reader = Replica::default();
        reader
            .sync(first.meta.clone(), |i| store.get(&i).cloned())
            .unwrap();

        let applied = writer
            .set
            .apply(
                &feed(2, true, vec![entry(2, EntryKind::Jti, "b", NOW + 100)]),
                NOW,
            )
            .unwrap();
        let second = writer.publish(&applied.changed, 2, 0);
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

    #[test]
    fn publish_without_change_keeps_generation() {
        let mut writer = Replica::default();
        let first = writer.publish(&[], 1, 0);
        let second = writer.publish(&[], 2, 0);
        assert_eq!(first.meta.generation, second.meta.generation);
        assert_eq!(second.meta.last_ok_ms, 2);
        assert!(second.blobs.is_empty());
    }

    #[test]
    fn publish_generation_above_floor() {
        let mut writer = Replica::default();
        let publication = writer.publish(&[3], 1, 41);
        assert_eq!(publication.meta.generation, 42);
        assert_eq!(publication.meta.shard_generations[3], 42);
        // A foreign generation was seen: every shard is rewritten.
        assert_eq!(publication.blobs.len(), SHARDS);
    }

    #[test]
    fn apply_identical_full_changes_nothing() {
        let entries = vec![entry(1, EntryKind::Jti, "a", NOW + 100)];
        let mut set = set_with(entries.clone());
        let applied = set.apply(&feed(10, true, entries), NOW).unwrap();
        assert!(applied.changed.is_empty());
    }

    #[test]
    fn fnv1a_is_stable() {
        // Known FNV-1a-like value pinned so that VMs built at different times agree.
        assert_eq!(fnv1a(&[b"abc"]), fnv1a(&[b"abc"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
