//! The revocation set's blobs in Envoy shared data: one per shard, plus a meta blob.
//!
//! Shard blob (little endian, fixed width): `WRS2`, generation u64, shard u16, then the number
//! of `jti`, `sid` and `sub` entries (u32 each), then the `jti` records (hash u64, until u32),
//! the `sid` records (same) and the `sub` records (hash u64, until u32, issued_before i64),
//! each kind sorted by hash. Decoding checks the length before allocating, and refuses hashes
//! out of order, repeated, or of another shard, so a decoded blob re-encodes to itself.
//!
//! Meta blob: `WRM1`, generation u64, seq u64, last_ok_ms u64, entries u32, shards u16, then
//! one u64 generation per shard.

use super::set::{shard_of_hash, Column, RevocationSet, Shard, SHARDS};

const SHARD_MAGIC: &[u8; 4] = b"WRS2";
const META_MAGIC: &[u8; 4] = b"WRM1";
/// Bytes before the records of a shard blob.
const SHARD_HEADER: usize = 4 + 8 + 2 + 3 * 4;
/// Bytes of a `jti` or `sid` record.
const RECORD: usize = 8 + 4;
/// Bytes of a `sub` record.
const SUB_RECORD: usize = 8 + 4 + 8;

/// Why a revocation blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("revocation blob is truncated")]
    Truncated,
    #[error("revocation blob has an unknown format (bad magic)")]
    BadMagic,
    #[error("revocation blob has hashes out of order or repeated")]
    Unsorted,
    #[error("revocation blob has trailing bytes")]
    Trailing,
    #[error("revocation blob is for shard {0}, outside 0..{SHARDS}")]
    BadShard(usize),
    #[error("revocation blob for shard {0} holds an entry of another shard")]
    WrongShard(usize),
}

/// A decoded shard blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardBlob {
    pub generation: u64,
    pub index: usize,
    pub shard: Shard,
}

fn put_column(out: &mut Vec<u8>, column: &Column, with_cutoff: bool) {
    for (i, hash) in column.hashes.iter().enumerate() {
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&column.until.get(i).copied().unwrap_or(0).to_le_bytes());
        if with_cutoff {
            let issued_before = column.issued_before.get(i).copied().unwrap_or(0);
            out.extend_from_slice(&issued_before.to_le_bytes());
        }
    }
}

fn count(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

impl RevocationSet {
    /// Encodes one shard as a blob stamped with `generation` (layout: module docs).
    pub fn encode_shard(&self, index: usize, generation: u64) -> Vec<u8> {
        let empty = Shard::default();
        let shard = self.shard(index).unwrap_or(&empty);
        let mut out = Vec::with_capacity(
            SHARD_HEADER
                + (shard.jti.len() + shard.sid.len()) * RECORD
                + shard.sub.len() * SUB_RECORD,
        );
        out.extend_from_slice(SHARD_MAGIC);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&u16::try_from(index).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(&count(shard.jti.len()));
        out.extend_from_slice(&count(shard.sid.len()));
        out.extend_from_slice(&count(shard.sub.len()));
        put_column(&mut out, &shard.jti, false);
        put_column(&mut out, &shard.sid, false);
        put_column(&mut out, &shard.sub, true);
        out
    }
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

fn read_column(
    reader: &mut Reader<'_>,
    n: usize,
    with_cutoff: bool,
    index: usize,
) -> Result<Column, DecodeError> {
    let mut column = Column {
        hashes: Vec::with_capacity(n),
        until: Vec::with_capacity(n),
        issued_before: Vec::with_capacity(if with_cutoff { n } else { 0 }),
    };
    for _ in 0..n {
        let hash = reader.u64()?;
        if column.hashes.last().is_some_and(|last| *last >= hash) {
            return Err(DecodeError::Unsorted);
        }
        if shard_of_hash(hash) != index {
            return Err(DecodeError::WrongShard(index));
        }
        column.hashes.push(hash);
        column.until.push(reader.u32()?);
        if with_cutoff {
            column.issued_before.push(reader.i64()?);
        }
    }
    Ok(column)
}

/// Decodes a blob written by [`RevocationSet::encode_shard`].
///
/// # Errors
/// [`DecodeError`] on any malformed, truncated or non-canonical input.
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
    let as_len = |n: u32| usize::try_from(n).map_err(|_| DecodeError::Truncated);
    let jti = as_len(reader.u32()?)?;
    let sid = as_len(reader.u32()?)?;
    let sub = as_len(reader.u32()?)?;
    // Check the length before allocating anything a hostile count asks for.
    let want = jti
        .checked_add(sid)
        .and_then(|n| n.checked_mul(RECORD))
        .and_then(|n| sub.checked_mul(SUB_RECORD).and_then(|m| n.checked_add(m)))
        .ok_or(DecodeError::Truncated)?;
    match reader.bytes.len() {
        have if have < want => return Err(DecodeError::Truncated),
        have if have > want => return Err(DecodeError::Trailing),
        _ => {}
    }
    let shard = Shard {
        jti: read_column(&mut reader, jti, false, index)?,
        sid: read_column(&mut reader, sid, false, index)?,
        sub: read_column(&mut reader, sub, true, index)?,
    };
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
    /// When the feed last answered, on the fetcher's monotonic clock (ms): in the wasm build
    /// Envoy's process-wide steady clock, which every VM reading the meta shares
    /// (`host::WasmClock`; before the `rev3` keys, the wall clock).
    pub last_ok_ms: u64,
    /// Generation of each shard (0 = never written, empty).
    pub shard_generations: Vec<u64>,
    /// Number of entries in the whole set.
    pub entries: u32,
}

impl Meta {
    /// Layout: module docs.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::set::tests::{entry, set_with, shard_index, NOW};
    use weauth_token::revocation::EntryKind;

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
    fn shard_encoding_is_fixed_width() {
        let set = set_with(vec![
            entry(1, EntryKind::Jti, "j", NOW + 100),
            entry(2, EntryKind::Sub, "u", NOW + 100),
        ]);
        let total: usize = (0..SHARDS).map(|i| set.encode_shard(i, 1).len()).sum();
        assert_eq!(total, SHARDS * SHARD_HEADER + RECORD + SUB_RECORD);
    }

    #[test]
    fn decode_shard_truncated_refused() {
        let set = set_with(vec![entry(1, EntryKind::Jti, "j", NOW + 100)]);
        let index = shard_index(EntryKind::Jti, "j");
        let blob = set.encode_shard(index, 1);
        for cut in 0..blob.len() {
            assert!(decode_shard(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn decode_shard_huge_count_refused_without_allocating() {
        let mut blob = RevocationSet::default().encode_shard(0, 1);
        blob[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_shard(&blob), Err(DecodeError::Truncated));
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

    /// A blob of shard 0 with `hashes` as its jti records.
    fn jti_blob(hashes: &[u64]) -> Vec<u8> {
        let mut blob = RevocationSet::default().encode_shard(0, 1);
        blob[14..18].copy_from_slice(&(hashes.len() as u32).to_le_bytes());
        for hash in hashes {
            blob.extend_from_slice(&hash.to_le_bytes());
            blob.extend_from_slice(&5u32.to_le_bytes());
        }
        blob
    }

    #[test]
    fn decode_shard_unsorted_or_repeated_refused() {
        assert!(decode_shard(&jti_blob(&[32, 64])).is_ok());
        assert_eq!(
            decode_shard(&jti_blob(&[64, 32])),
            Err(DecodeError::Unsorted)
        );
        assert_eq!(
            decode_shard(&jti_blob(&[32, 32])),
            Err(DecodeError::Unsorted)
        );
    }

    #[test]
    fn decode_shard_foreign_hash_refused() {
        assert_eq!(
            decode_shard(&jti_blob(&[33])),
            Err(DecodeError::WrongShard(0))
        );
    }

    #[test]
    fn decode_shard_old_format_refused() {
        let mut blob = RevocationSet::default().encode_shard(0, 1);
        blob[..4].copy_from_slice(b"WRS1");
        assert_eq!(decode_shard(&blob), Err(DecodeError::BadMagic));
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
        let mut longer = meta.encode();
        longer.push(0);
        assert_eq!(Meta::decode(&longer), Err(DecodeError::Trailing));
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
}
