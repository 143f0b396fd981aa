//! Partitions: the installation's tenants are shared between `P` partitions (chosen at
//! installation, 1 by default), each with its own projector consumer, checkpoint and single
//! active projector, so that several projector processes apply different tenants at once.
//! Order within a tenant is kept because a tenant belongs to exactly one partition.
//!
//! A tenant's partition is the first eight bytes of SHA-256 of its name, big-endian, modulo
//! `P`: stable across processes, versions and machines, and documented so that other
//! components can compute it. With `P = 1` every name is today's (`projector`, `access`,
//! the access bucket's `checkpoint` key); partition `k` of a larger `P` adds `-p<k>` (`.p<k>`
//! for the bucket key).

use sha2::{Digest, Sha256};

/// The largest number of partitions an installation may have.
pub const MAX_PARTITIONS: u16 = 64;

/// How an installation's tenants are partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partitioning {
    count: u16,
}

impl Default for Partitioning {
    fn default() -> Self {
        Self { count: 1 }
    }
}

/// A partition count out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the number of partitions must be 1 to {MAX_PARTITIONS}, not {0}")]
pub struct InvalidPartitions(pub u64);

impl Partitioning {
    /// `count` partitions (1 to [`MAX_PARTITIONS`]).
    pub fn new(count: u64) -> Result<Self, InvalidPartitions> {
        match u16::try_from(count) {
            Ok(count) if (1..=MAX_PARTITIONS).contains(&count) => Ok(Self { count }),
            _ => Err(InvalidPartitions(count)),
        }
    }

    /// How many partitions there are.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Every partition, in order.
    pub fn all(&self) -> impl Iterator<Item = Partition> + '_ {
        (0..self.count).map(move |index| Partition {
            index,
            count: self.count,
        })
    }

    /// The partition that holds `tenant`.
    pub fn of(&self, tenant: &str) -> Partition {
        let digest = Sha256::digest(tenant.as_bytes());
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        let index = (u64::from_be_bytes(prefix) % u64::from(self.count)) as u16;
        Partition {
            index,
            count: self.count,
        }
    }
}

/// One partition of an installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    index: u16,
    count: u16,
}

impl Partition {
    /// The only partition of an installation that is not partitioned.
    pub const ONLY: Partition = Partition { index: 0, count: 1 };

    /// Its index, `0..count`.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// How many partitions the installation has.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Whether `tenant` belongs to it.
    pub fn holds(&self, tenant: &str) -> bool {
        self.count == 1 || Partitioning { count: self.count }.of(tenant).index == self.index
    }

    fn suffix(&self, separator: char) -> String {
        if self.count == 1 {
            String::new()
        } else {
            format!("{separator}p{}", self.index)
        }
    }

    /// A per-partition name: `base` itself without partitions, `base-p<k>` otherwise.
    pub fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix('-'))
    }

    /// The access bucket's checkpoint key of this partition.
    pub fn checkpoint_key(&self) -> String {
        format!("{}{}", crate::access::CHECKPOINT_KEY, self.suffix('.'))
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The tenant of an event subject (`<namespace>.events.<tenant>.<aggregate>.<id>`).
pub fn subject_tenant(subject: &str) -> Option<&str> {
    let mut tokens = subject.splitn(4, '.');
    match (tokens.next(), tokens.next(), tokens.next()) {
        (Some(_), Some("events"), Some(tenant)) => Some(tenant),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_keeps_todays_names() {
        let only = Partitioning::default().of("anything");
        assert_eq!(only, Partition::ONLY);
        assert_eq!(only.name("projector"), "projector");
        assert_eq!(only.checkpoint_key(), "checkpoint");
        assert!(only.holds("x"));
    }

    #[test]
    fn a_tenant_always_lands_in_the_same_partition() {
        let four = Partitioning::new(4).unwrap();
        // Fixed values: the partition function is part of the contract and must never change.
        let digest = Sha256::digest(b"acme");
        let expected = (u64::from_be_bytes(digest[..8].try_into().unwrap()) % 4) as u16;
        assert_eq!(four.of("acme").index(), expected);
        assert_eq!(four.of("acme"), four.of("acme"));
        let p = four.of("acme");
        assert!(p.holds("acme"));
        assert_eq!(p.name("projector"), format!("projector-p{expected}"));
        assert_eq!(p.checkpoint_key(), format!("checkpoint.p{expected}"));
    }

    #[test]
    fn tenants_spread_over_the_partitions() {
        let four = Partitioning::new(4).unwrap();
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            counts[four.of(&format!("tenant-{n}")).index() as usize] += 1;
        }
        for count in counts {
            assert!((800..=1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn counts_out_of_range_are_refused() {
        assert!(Partitioning::new(0).is_err());
        assert!(Partitioning::new(65).is_err());
        assert_eq!(Partitioning::new(64).unwrap().all().count(), 64);
    }

    #[test]
    fn the_tenant_is_read_from_the_subject() {
        assert_eq!(subject_tenant("rc.events.acme.user.x"), Some("acme"));
        assert_eq!(subject_tenant("rc.other.acme.user.x"), None);
        assert_eq!(subject_tenant("rc"), None);
    }
}
