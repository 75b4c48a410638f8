//! The compact binary rows of the per-key tables. A delivery touches one live row and appends one spent
//! row, so these rows are keyed by position (batch and index, or a delivery sequence number), not by
//! the KME's random key_ID: the rows a group commit changes then sit on a few adjacent B-tree pages
//! instead of one random page per key, which is what each commit has to copy, checksum and sync.
//! The key_ID index, written once when a batch arrives, maps an ID to its slot.

use crate::error::KmsError;

/// Format of every row written by this version (JSON rows, written before, started with `{`).
const V1: u8 = 1;

fn short(what: &str) -> KmsError {
    KmsError::Corrupt(format!("{what}: row too short or of an unknown version"))
}

/// The slot of a key: its batch in the high 64 bits and its position in the KME's answer (also its
/// AES-GCM nonce) in the low 64, so the keys of a batch are adjacent and in fetch order.
pub(crate) fn slot(batch: u64, index: u64) -> u128 {
    (u128::from(batch) << 64) | u128::from(index)
}

/// Reverses [`slot`].
pub(crate) fn unslot(s: u128) -> (u64, u64) {
    ((s >> 64) as u64, s as u64)
}

/// The slot recorded for keys delivered before slots existed (their position was not kept): never a
/// live slot, so such IDs count as delivered.
pub(crate) fn legacy_spent_slot(batch: u64) -> u128 {
    slot(batch, u64::MAX)
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], KmsError> {
    if b.len() < n {
        return Err(short(what));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn take_u64(b: &mut &[u8], what: &str) -> Result<u64, KmsError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(b, 8, what)?);
    Ok(u64::from_be_bytes(a))
}

fn take_str<'a>(b: &mut &'a [u8], what: &str) -> Result<&'a str, KmsError> {
    let mut l = [0u8; 2];
    l.copy_from_slice(take(b, 2, what)?);
    let s = take(b, usize::from(u16::from_be_bytes(l)), what)?;
    std::str::from_utf8(s).map_err(|_| short(what))
}

fn put_str(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), KmsError> {
    let l = u16::try_from(s.len())
        .map_err(|_| KmsError::Corrupt(format!("{what}: a string of {} bytes", s.len())))?;
    out.extend_from_slice(&l.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A stored, sealed key that was not delivered yet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LiveRow<'a> {
    /// Offered to the peer already (master).
    pub announced: bool,
    /// ETSI key_ID (the AES-GCM associated data).
    pub id: &'a str,
    /// AES-256-GCM ciphertext and tag under the batch's data key.
    pub ct: &'a [u8],
}

impl<'a> LiveRow<'a> {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, KmsError> {
        let mut out = Vec::with_capacity(4 + self.id.len() + self.ct.len());
        out.push(V1);
        out.push(u8::from(self.announced));
        put_str(&mut out, self.id, "live key")?;
        out.extend_from_slice(self.ct);
        Ok(out)
    }

    pub(crate) fn decode(mut b: &'a [u8]) -> Result<Self, KmsError> {
        let what = "live key";
        let head = take(&mut b, 2, what)?;
        if head[0] != V1 {
            return Err(short(what));
        }
        let id = take_str(&mut b, what)?;
        Ok(Self {
            announced: head[1] != 0,
            id,
            ct: b,
        })
    }
}

/// A delivery: which key went to whom, when.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SpentRow<'a> {
    /// Batch the key came in.
    pub batch: u64,
    /// When it was delivered.
    pub at_ms: u64,
    /// ETSI key_ID.
    pub id: &'a str,
    /// Who took it (a tunnel, an SAE ID).
    pub consumer: &'a str,
}

impl<'a> SpentRow<'a> {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, KmsError> {
        let mut out = Vec::with_capacity(21 + self.id.len() + self.consumer.len());
        out.push(V1);
        out.extend_from_slice(&self.batch.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        put_str(&mut out, self.id, "spent key")?;
        out.extend_from_slice(self.consumer.as_bytes());
        Ok(out)
    }

    pub(crate) fn decode(mut b: &'a [u8]) -> Result<Self, KmsError> {
        let what = "spent key";
        if take(&mut b, 1, what)?[0] != V1 {
            return Err(short(what));
        }
        let batch = take_u64(&mut b, what)?;
        let at_ms = take_u64(&mut b, what)?;
        let id = take_str(&mut b, what)?;
        let consumer = std::str::from_utf8(b).map_err(|_| short(what))?;
        Ok(Self {
            batch,
            at_ms,
            id,
            consumer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_refuse_truncation() {
        let live = LiveRow {
            announced: true,
            id: "5f0c-é",
            ct: &[1, 2, 3, 4],
        };
        let bytes = live.encode().unwrap();
        assert_eq!(LiveRow::decode(&bytes).unwrap(), live);
        for cut in 0..4 + live.id.len() {
            assert!(LiveRow::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let spent = SpentRow {
            batch: 7,
            at_ms: 1_700_000_000_000,
            id: "k1",
            consumer: "tunnel site-b",
        };
        let bytes = spent.encode().unwrap();
        assert_eq!(SpentRow::decode(&bytes).unwrap(), spent);
        for cut in 0..19 + spent.id.len() {
            assert!(SpentRow::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // an old JSON row is not mistaken for a binary one
        assert!(LiveRow::decode(br#"{"link":"ab"}"#).is_err());
    }

    #[test]
    fn slots_keep_a_batch_together_in_fetch_order() {
        assert_eq!(unslot(slot(3, 9)), (3, 9));
        assert!(slot(3, u64::MAX) < slot(4, 0));
        assert!(slot(3, 1) < slot(3, 2));
        assert_eq!(unslot(legacy_spent_slot(5)).0, 5);
    }
}
