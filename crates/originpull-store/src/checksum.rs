//! The checksum every object carries besides its MD5 ETag: COS's `x-cos-hash-crc64ecma`, the
//! CRC-64 that COS SDKs check downloads against (ECMA-182 polynomial, reflected, initial value
//! and final XOR all ones: the CRC-64/XZ parameters). It is computed while a copy streams in,
//! stored with the object, sent on hits as an unsigned decimal number, and checked again while
//! a whole object streams out, so an object file damaged on disk is never served whole.
//!
//! `crc-fast` computes it with carry-less multiplication (PCLMULQDQ / VPCLMULQDQ, NEON on ARM):
//! tens of GB/s, a rounding error beside the MD5 that bounds a copy.

use crc_fast::{CrcAlgorithm, Digest};

/// The response header COS sends the CRC in.
pub const CRC64_HEADER: &str = "x-cos-hash-crc64ecma";

/// A running CRC-64/XZ.
#[derive(Clone)]
pub struct Crc64(Digest);

impl Crc64 {
    pub fn new() -> Crc64 {
        Crc64(Digest::new(CrcAlgorithm::Crc64Xz))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn value(&self) -> u64 {
        self.0.finalize()
    }
}

impl Default for Crc64 {
    fn default() -> Crc64 {
        Crc64::new()
    }
}

/// Checks the reads of one object against its stored CRC as long as they run in order from its
/// first byte; the read that completes the object fails instead of returning damaged bytes.
/// Ranges and other out-of-order reads are not checked (they would need the whole object).
pub struct SequentialCheck {
    expected: u64,
    size: u64,
    /// The offset the next in-order read starts at; `None` once reads went out of order.
    next: Option<u64>,
    crc: Crc64,
}

impl SequentialCheck {
    /// A check for an object of `size` bytes whose CRC is `expected`, when one was stored.
    pub fn new(expected: Option<u64>, size: u64) -> Option<SequentialCheck> {
        expected.map(|expected| SequentialCheck {
            expected,
            size,
            next: Some(0),
            crc: Crc64::new(),
        })
    }

    /// Takes `chunk`, read at `offset`; an error says the object's bytes are not the ones stored.
    pub fn check(&mut self, offset: u64, chunk: &[u8]) -> Result<(), String> {
        let Some(next) = self.next else {
            return Ok(());
        };
        if offset != next {
            self.next = None;
            return Ok(());
        }
        self.crc.update(chunk);
        let next = next + chunk.len() as u64;
        self.next = Some(next);
        if next == self.size && self.crc.value() != self.expected {
            return Err(format!(
                "content does not match its CRC-64 (stored {}, read {})",
                self.expected,
                self.crc.value()
            ));
        }
        Ok(())
    }

    /// Whether every byte was read in order and the whole matched the stored CRC.
    pub fn passed(&self) -> bool {
        self.next == Some(self.size) && self.crc.value() == self.expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_crc64_xz() {
        // The check value of the CRC-64/XZ catalogue entry.
        let mut crc = Crc64::new();
        crc.update(b"123456789");
        assert_eq!(crc.value(), 0x995d_c9bb_df19_39fa);
    }

    #[test]
    fn in_order_reads_are_checked_and_a_damaged_last_read_fails() {
        let body = b"hello, world";
        let mut crc = Crc64::new();
        crc.update(body);
        let stored = crc.value();

        let mut whole = SequentialCheck::new(Some(stored), 12).unwrap();
        assert!(whole.check(0, b"hello").is_ok());
        assert!(!whole.passed());
        assert!(whole.check(5, b", world").is_ok());
        assert!(whole.passed());

        let mut damaged = SequentialCheck::new(Some(stored), 12).unwrap();
        assert!(damaged.check(0, b"hellO").is_ok());
        assert!(damaged.check(5, b", world").is_err());

        // A range read stops the check: nothing can be said about the whole object.
        let mut ranged = SequentialCheck::new(Some(stored), 12).unwrap();
        assert!(ranged.check(5, b", wOrld").is_ok());
        assert!(ranged.check(0, b"hellO, world").is_ok());
        assert!(!ranged.passed());

        assert!(SequentialCheck::new(None, 12).is_none());
    }
}
