//! A cached aggregate entry as stored: the document with when it was built, how long it is
//! fresh and its tags, so that any replica can answer `Age`, the remaining `max-age`, and the
//! admin API's inspection from the entry alone.
//!
//! Layout: `0x01`, built-at (ms since the epoch, u64 BE), fresh-for (ms, u64 BE), tag count
//! (u16 BE), each tag as a u16 BE length and its bytes, then the document. A JSON document
//! never starts with `0x01`, so an entry written by an older gateway (the bare document) reads
//! as no entry and is rebuilt.

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: u8 = 0x01;
/// Longest tag kept (longer ones are left off the entry, and so not purgeable by tag).
pub(crate) const MAX_TAG: usize = 512;

/// One cached document with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// When the document was built (ms since the Unix epoch).
    pub(crate) built_ms: u64,
    /// How long after `built_ms` it is fresh.
    pub(crate) fresh_ms: u64,
    /// The entry's tags.
    pub(crate) tags: Vec<String>,
    /// The JSON document.
    pub(crate) body: Bytes,
}

impl Entry {
    /// The stored form.
    pub(crate) fn encode(&self) -> Bytes {
        let tags: Vec<&String> = self.tags.iter().filter(|t| t.len() <= MAX_TAG).collect();
        let head = 1 + 8 + 8 + 2 + tags.iter().map(|t| 2 + t.len()).sum::<usize>();
        let mut out = BytesMut::with_capacity(head + self.body.len());
        out.put_u8(MAGIC);
        out.put_u64(self.built_ms);
        out.put_u64(self.fresh_ms);
        out.put_u16(tags.len().min(u16::MAX as usize) as u16);
        for t in tags.iter().take(u16::MAX as usize) {
            out.put_u16(t.len() as u16);
            out.put_slice(t.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads a stored entry (the document is not copied); `None` for anything else.
    pub(crate) fn decode(raw: &Bytes) -> Option<Entry> {
        let mut at = 0usize;
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let s = raw.get(*at..*at + n)?;
            *at += n;
            Some(s)
        };
        if take(&mut at, 1)? != [MAGIC] {
            return None;
        }
        let built_ms = u64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?);
        let fresh_ms = u64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?);
        let count = u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?);
        let mut tags = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
            tags.push(String::from_utf8(take(&mut at, len)?.to_vec()).ok()?);
        }
        Some(Entry {
            built_ms,
            fresh_ms,
            tags,
            body: raw.slice(at..),
        })
    }

    /// Whole seconds since it was built, at `now_ms`.
    pub(crate) fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.built_ms) / 1000
    }

    /// Whether it is still fresh at `now_ms`.
    pub(crate) fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.built_ms + self.fresh_ms
    }

    /// How long it stays fresh after `now_ms` (zero once stale).
    pub(crate) fn remaining(&self, now_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis((self.built_ms + self.fresh_ms).saturating_sub(now_ms))
    }

    /// Its declared freshness lifetime, in whole seconds.
    pub(crate) fn lifetime_secs(&self) -> u64 {
        self.fresh_ms / 1000
    }

    /// Whole seconds it stays fresh after `now_ms` (0 in its last second and once stale).
    pub(crate) fn remaining_secs(&self, now_ms: u64) -> u64 {
        self.remaining(now_ms).as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_and_nothing_else_reads_as_one() {
        let e = Entry {
            built_ms: 1_700_000_000_123,
            fresh_ms: 30_000,
            tags: vec![
                "user:42".into(),
                "orders:42".into(),
                "x".repeat(MAX_TAG + 1),
            ],
            body: Bytes::from_static(br#"{"user":{"id":"42"}}"#),
        };
        let raw = e.encode();
        let back = Entry::decode(&raw).unwrap();
        assert_eq!(
            back.tags,
            ["user:42", "orders:42"],
            "an oversized tag is left off"
        );
        assert_eq!((back.built_ms, back.fresh_ms), (e.built_ms, e.fresh_ms));
        assert_eq!(back.body, e.body);
        assert_eq!(back.age_secs(e.built_ms + 4_999), 4);
        assert_eq!(back.remaining_secs(e.built_ms + 4_999), 25);
        assert_eq!(back.remaining_secs(e.built_ms + 31_000), 0);
        assert!(back.is_fresh(e.built_ms + 29_999) && !back.is_fresh(e.built_ms + 30_000));
        // An older gateway's bare document, truncation, and garbage are not entries.
        assert!(Entry::decode(&e.body).is_none());
        for n in 0..raw.len() - e.body.len() {
            assert!(Entry::decode(&raw.slice(..n)).is_none(), "cut at {n}");
        }
        assert!(Entry::decode(&Bytes::from_static(&[1, 2, 3])).is_none());
    }
}
