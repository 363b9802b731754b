//! MD5, the ETag of an object stored whole (what S3 and COS give a simple upload), computed with
//! AWS-LC's assembly implementation, which the TLS stack already links. A copy's floor is one
//! core's MD5 (issue #13): on the development machine AWS-LC hashes 1 GiB in about 1.25 s, the
//! `md-5` crate (assembly backend) in 1.62 s (`docs/benchmarks.md`). Tests check it against
//! `md-5`.

// The calls into AWS-LC's C functions are unsafe; each says why it is sound.
#![allow(unsafe_code)]

use aws_lc_sys::{MD5_Final, MD5_Init, MD5_Update, MD5_CTX};

/// An MD5 being computed over bytes given in order.
pub struct Md5(MD5_CTX);

impl Md5 {
    pub fn new() -> Md5 {
        let mut ctx = MD5_CTX {
            h: [0; 4],
            Nl: 0,
            Nh: 0,
            data: [0; 64],
            num: 0,
        };
        // SAFETY: `ctx` is a valid, exclusively borrowed MD5_CTX; MD5_Init only writes to it
        // (and always returns 1).
        unsafe { MD5_Init(&mut ctx) };
        Md5(ctx)
    }

    pub fn update(&mut self, data: &[u8]) {
        // SAFETY: the context was initialised by `new`, and `data` is a live slice of exactly
        // `data.len()` bytes that MD5_Update only reads (it always returns 1).
        unsafe { MD5_Update(&mut self.0, data.as_ptr().cast(), data.len()) };
    }

    pub fn finalize(mut self) -> [u8; 16] {
        let mut digest = [0u8; 16];
        // SAFETY: `digest` has the 16 bytes MD5_Final writes; the context was initialised by
        // `new` and is not used again.
        unsafe { MD5_Final(digest.as_mut_ptr(), &mut self.0) };
        digest
    }
}

impl Default for Md5 {
    fn default() -> Md5 {
        Md5::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    #[test]
    fn matches_the_md5_crate_for_any_split() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let expected: [u8; 16] = md5::Md5::digest(&data).into();
        for split in [0, 1, 63, 64, 65, 4096, 100_001, data.len()] {
            let mut md5 = Md5::new();
            md5.update(&data[..split]);
            md5.update(&data[split..]);
            assert_eq!(md5.finalize(), expected, "split at {split}");
        }
        let empty: [u8; 16] = md5::Md5::digest(b"").into();
        assert_eq!(Md5::new().finalize(), empty);
    }
}
