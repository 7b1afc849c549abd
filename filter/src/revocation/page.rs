//! A feed answer read straight into the set's rows, without an owned copy of every entry.
//!
//! `serde_json::from_slice::<FeedResponse>` builds a `Vec<Entry>` (64 bytes an entry, grown by
//! doubling) and a `String` per value before anything is hashed: for a 50 000-entry page about
//! 5 MiB of short-lived allocations on top of the body. [`FeedPage::parse`] reads the same
//! wire format (`weauth_token::revocation::FeedResponse`: the same fields, required and
//! refused alike) but hashes each entry as soon as it is read, borrowing its value from the
//! body where it has no escapes, and keeps only a [`Row`] (24 bytes) per entry, already split
//! by shard and kind. [`FeedPage::parse_chunks`] reads a body left in the pieces Envoy hands
//! over, without joining them (slower to read, but no copy of a 4 MB page). What the set does
//! with the rows is [`super::RevocationSet::apply_page`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use weauth_token::revocation::{EntryKind, FeedResponse};

use super::set::{clamp_until, entry_hash, kind_byte, shard_of_hash, Row, MAX_VALUE_BYTES, SHARDS};

/// A feed answer as rows: what [`super::RevocationSet::apply_page`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// The answer's `seq` (see [`FeedResponse::seq`]).
    pub seq: u64,
    /// `true`: the rows are the complete live set (see [`FeedResponse::full`]).
    pub full: bool,
    /// The issuer's clock (unix seconds).
    pub now: i64,
    /// Entries the answer held, including the skipped ones.
    pub entries: usize,
    /// Entries refused while reading (a `sub` without `issued_before`, a value empty or longer
    /// than [`MAX_VALUE_BYTES`]); the expired ones are counted when the page is applied.
    pub skipped: usize,
    /// Rows per shard, then per kind (`jti`, `sid`, `sub`), in feed order.
    pub(crate) rows: Rows,
}

/// Rows per shard and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rows {
    pub(crate) by_shard: Vec<[Vec<Row>; 3]>,
    entries: usize,
    skipped: usize,
}

impl Default for Rows {
    fn default() -> Self {
        Rows {
            by_shard: vec![Default::default(); SHARDS],
            entries: 0,
            skipped: 0,
        }
    }
}

impl Rows {
    fn push(&mut self, kind: EntryKind, value: &str, issued_before: Option<i64>, until: i64) {
        self.entries += 1;
        let issued_before = match (kind, issued_before) {
            (EntryKind::Sub, None) => {
                self.skipped += 1;
                return;
            }
            (_, value) => value.unwrap_or(0),
        };
        if value.is_empty() || value.len() > MAX_VALUE_BYTES {
            self.skipped += 1;
            return;
        }
        let hash = entry_hash(kind, value);
        let kind = usize::from(kind_byte(kind) - 1);
        if let Some(rows) = self
            .by_shard
            .get_mut(shard_of_hash(hash))
            .and_then(|kinds| kinds.get_mut(kind))
        {
            rows.push((hash, clamp_until(until), issued_before));
        }
    }
}

/// One entry as the wire has it, its value borrowed from the body when it can be.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry<'a> {
    /// Required by the format, unused here.
    #[serde(rename = "seq")]
    _seq: u64,
    kind: EntryKind,
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(default)]
    issued_before: Option<i64>,
    until: i64,
}

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowsVisitor;
        impl<'de> Visitor<'de> for RowsVisitor {
            type Value = Rows;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of revocation entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
                let mut rows = Rows::default();
                while let Some(entry) = seq.next_element::<WireEntry<'de>>()? {
                    rows.push(entry.kind, &entry.value, entry.issued_before, entry.until);
                }
                Ok(rows)
            }
        }
        deserializer.deserialize_seq(RowsVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePage {
    seq: u64,
    full: bool,
    now: i64,
    entries: Rows,
}

impl FeedPage {
    /// Reads a feed answer's body (JSON, `FeedResponse`'s format).
    ///
    /// # Errors
    /// What `serde_json::from_slice::<FeedResponse>` refuses: malformed JSON, a missing or
    /// unknown field, a wrong type, an unknown kind.
    pub fn parse(body: &[u8]) -> Result<FeedPage, serde_json::Error> {
        let page: WirePage = serde_json::from_slice(body)?;
        Ok(FeedPage {
            seq: page.seq,
            full: page.full,
            now: page.now,
            entries: page.entries.entries,
            skipped: page.entries.skipped,
            rows: page.entries,
        })
    }

    /// Reads a feed answer's body given as consecutive pieces (Envoy hands a callout's body
    /// over as the chunks of its buffer), without joining them first.
    ///
    /// # Errors
    /// As [`FeedPage::parse`].
    pub fn parse_chunks(chunks: &[&[u8]]) -> Result<FeedPage, serde_json::Error> {
        let page: WirePage = serde_json::from_reader(Chunks {
            rest: chunks,
            at: 0,
        })?;
        Ok(FeedPage {
            seq: page.seq,
            full: page.full,
            now: page.now,
            entries: page.entries.entries,
            skipped: page.entries.skipped,
            rows: page.entries,
        })
    }

    /// The page holding `feed`'s entries (tests and tools that build answers in memory).
    pub fn of(feed: &FeedResponse) -> FeedPage {
        let mut rows = Rows::default();
        for entry in &feed.entries {
            rows.push(entry.kind, &entry.value, entry.issued_before, entry.until);
        }
        FeedPage {
            seq: feed.seq,
            full: feed.full,
            now: feed.now,
            entries: rows.entries,
            skipped: rows.skipped,
            rows,
        }
    }
}

/// Consecutive byte slices read as one stream.
struct Chunks<'a> {
    rest: &'a [&'a [u8]],
    at: usize,
}

impl std::io::Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some((first, later)) = self.rest.split_first() {
            let left = first.get(self.at..).unwrap_or_default();
            if left.is_empty() {
                self.rest = later;
                self.at = 0;
                continue;
            }
            let n = left.len().min(buf.len());
            if let (Some(to), Some(from)) = (buf.get_mut(..n), left.get(..n)) {
                to.copy_from_slice(from);
            }
            self.at += n;
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::set::tests::{claims, entry, feed, NOW};
    use crate::revocation::{RevocationSet, Revoked};

    fn parse_both(text: &str) -> (Result<FeedPage, String>, Result<FeedResponse, String>) {
        (
            FeedPage::parse(text.as_bytes()).map_err(|e| e.to_string()),
            serde_json::from_str::<FeedResponse>(text).map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn parse_reads_what_feed_response_reads() {
        let text = r#"{"seq":42,"full":false,"now":100,"entries":[
            {"seq":41,"kind":"sid","value":"s","until":900},
            {"seq":42,"kind":"sub","value":"u","issued_before":99,"until":900},
            {"seq":40,"kind":"jti","value":"j\u00e9\"x","issued_before":null,"until":900}]}"#;
        let (page, response) = parse_both(text);
        let (page, response) = (page.unwrap(), response.unwrap());
        assert_eq!(page, FeedPage::of(&response));
        assert_eq!(
            (page.seq, page.full, page.now, page.entries),
            (42, false, 100, 3)
        );
    }

    #[test]
    fn parse_refuses_what_feed_response_refuses() {
        for text in [
            r#"{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"ip","value":"x","until":9}]}"#,
            r#"{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"jti","value":"x","until":9,"extra":1}]}"#,
            r#"{"seq":1,"full":true,"now":1,"entries":[{"kind":"jti","value":"x","until":9}]}"#,
            r#"{"seq":1,"full":true,"now":1,"entries":[{"seq":1,"kind":"jti","value":7,"until":9}]}"#,
            r#"{"seq":1,"full":true,"now":1,"entries":[],"more":true}"#,
            r#"{"seq":1,"full":true,"entries":[]}"#,
            r#"{"seq":-1,"full":true,"now":1,"entries":[]}"#,
            r#"{"seq":1,"full":true,"now":1,"entries":{}}"#,
            r#"{"seq":1,"full":true,"now":1,"entries":[]"#,
            r#"{"seq":1,"full":true,"now":1,"entries":[]} x"#,
            "",
        ] {
            let (page, response) = parse_both(text);
            assert!(response.is_err(), "FeedResponse took {text}");
            assert!(page.is_err(), "FeedPage took {text}");
        }
    }

    #[test]
    fn parse_chunks_reads_a_body_cut_anywhere_as_parse_does() {
        let text = br#"{"seq":42,"full":false,"now":100,"entries":[
            {"seq":41,"kind":"sid","value":"s\u00e9","until":900},
            {"seq":42,"kind":"sub","value":"u","issued_before":99,"until":900}]}"#;
        let whole = FeedPage::parse(text).unwrap();
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                FeedPage::parse_chunks(&[a, b]).unwrap(),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(FeedPage::parse_chunks(&bytes).unwrap(), whole);
        assert!(FeedPage::parse_chunks(&[&text[..10], b"", &text[10..30]]).is_err());
        assert!(FeedPage::parse_chunks(&[text, b"x"]).is_err());
    }

    /// A value of exactly [`MAX_VALUE_BYTES`] is kept (one byte more is skipped, below).
    #[test]
    fn value_of_exactly_the_longest_length_kept() {
        let longest = "x".repeat(MAX_VALUE_BYTES);
        let text = format!(
            r#"{{"seq":1,"full":true,"now":1,"entries":[
            {{"seq":1,"kind":"jti","value":"{longest}","until":9}}]}}"#
        );
        let page = FeedPage::parse(text.as_bytes()).unwrap();
        assert_eq!((page.entries, page.skipped), (1, 0));
    }

    #[test]
    fn parse_skips_malformed_entries_as_apply_does() {
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let text = format!(
            r#"{{"seq":3,"full":true,"now":1,"entries":[
            {{"seq":1,"kind":"sub","value":"u","until":9}},
            {{"seq":2,"kind":"jti","value":"","until":9}},
            {{"seq":3,"kind":"jti","value":"{long}","until":9}}]}}"#
        );
        let page = FeedPage::parse(text.as_bytes()).unwrap();
        assert_eq!((page.entries, page.skipped), (3, 3));
    }

    #[test]
    fn parsed_page_applies_like_the_response() {
        let response = feed(
            5,
            true,
            vec![
                entry(1, EntryKind::Jti, "j1", NOW + 100),
                entry(2, EntryKind::Sid, "s1", NOW + 100),
                entry(3, EntryKind::Sub, "u1", NOW + 100),
                entry(4, EntryKind::Jti, "gone", NOW - 1),
            ],
        );
        let body = serde_json::to_vec(&response).unwrap();
        let mut from_page = RevocationSet::default();
        let applied = from_page
            .apply_page(FeedPage::parse(&body).unwrap(), NOW)
            .unwrap();
        let mut from_response = RevocationSet::default();
        assert_eq!(from_response.apply(&response, NOW).unwrap(), applied);
        assert_eq!(from_page, from_response);
        assert_eq!(applied.skipped, 1);
        assert_eq!(
            from_page.check(&claims("x", "s1", "u", NOW)),
            Some(Revoked::Sid)
        );
    }
}
