//! Placement of keys on the ring of `Q` fixed partitions (DESIGN.md §4).
//!
//! A key's partition is the top `log2(Q)` bits of `blake3(key)`. Ownership of the
//! partitions by nodes arrives with the cluster.

/// Default number of partitions.
pub const DEFAULT_RING_SIZE: u32 = 256;
/// Largest ring allowed (keeps partition numbers in 16 bits of the hash).
pub const MAX_RING_SIZE: u32 = 1 << 16;
const _: () = assert!(DEFAULT_RING_SIZE.is_power_of_two() && DEFAULT_RING_SIZE <= MAX_RING_SIZE);

/// A ring size that is not a power of two in `1..=MAX_RING_SIZE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ring size {size} must be a power of two between 1 and {MAX_RING_SIZE}")]
pub struct BadRingSize {
    /// The size refused.
    pub size: u32,
}

/// Checks a ring size.
///
/// # Errors
/// [`BadRingSize`] if it is not a power of two up to [`MAX_RING_SIZE`].
pub fn check_ring_size(size: u32) -> Result<u32, BadRingSize> {
    if size.is_power_of_two() && size <= MAX_RING_SIZE {
        Ok(size)
    } else {
        Err(BadRingSize { size })
    }
}

/// The partition of `key` on a ring of `ring_size` partitions (a power of two).
pub fn partition_of(key: &[u8], ring_size: u32) -> u32 {
    debug_assert!(ring_size.is_power_of_two());
    let hash = blake3::hash(key);
    let b = hash.as_bytes();
    let top = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let bits = ring_size.trailing_zeros();
    if bits == 0 { 0 } else { top >> (32 - bits) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_in_range_and_roughly_even() {
        let mut counts = vec![0u32; 256];
        for i in 0u32..25_600 {
            let p = partition_of(&i.to_be_bytes(), 256);
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50 && c < 160), "{counts:?}");
        assert_eq!(partition_of(b"x", 1), 0);
    }

    #[test]
    fn ring_sizes_are_checked() {
        assert!(check_ring_size(256).is_ok());
        assert!(check_ring_size(0).is_err());
        assert!(check_ring_size(100).is_err());
        assert!(check_ring_size(1 << 17).is_err());
    }
}
