//! Random bytes from the OS: run ids (UUIDv4), AES-GCM nonces, the master
//! key and temp-file names. No user-space generator is kept.

use std::fmt::Write;

/// Fills `buf` from the OS generator. The OS generator failing is not
/// something the runner can recover from or work around safely (keys and
/// nonces depend on it), so it is reported as an I/O error.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(|e| std::io::Error::other(format!("OS random generator: {e}")))
}

/// A random version-4 UUID in its usual text form.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    fill_or_time(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// `n` random bytes as lowercase hex.
pub fn hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    fill_or_time(&mut b);
    b.iter().fold(String::with_capacity(2 * n), |mut s, byte| {
        let _ = write!(s, "{byte:02x}");
        s
    })
}

/// For identifiers only (never keys): if the OS generator fails, mix the
/// clock, the pid and a counter instead of stopping a run for it.
fn fill_or_time(buf: &mut [u8]) {
    if fill(buf).is_ok() {
        return;
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    for byte in buf.iter_mut() {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *byte = (z ^ (z >> 31)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, uuid_v4());
    }
}
