//! The YCSB core workloads and the operations they mix.

use serde::Serialize;

use super::keys::Distribution;

/// One kind of operation of the run phase (and `Insert` of the load phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A register read.
    Read,
    /// A write of an existing key, carrying the newest context the bench has seen
    /// for it (from its own reads and writes, merged).
    Update,
    /// A write of a new key.
    Insert,
    /// A read, then a write with that read's context; timed as one operation.
    ReadModifyWrite,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 4] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
    ];

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            OpKind::Read => 0,
            OpKind::Update => 1,
            OpKind::Insert => 2,
            OpKind::ReadModifyWrite => 3,
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "read_modify_write",
        }
    }
}

/// A YCSB core workload: which operations in which proportions, over which keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// Update heavy: 50 % reads, 50 % updates, zipfian.
    A,
    /// Read mostly: 95 % reads, 5 % updates, zipfian.
    B,
    /// Read only: 100 % reads, zipfian.
    C,
    /// Read latest: 95 % reads, 5 % inserts, reads favour the newest keys.
    D,
    /// Read-modify-write: 50 % reads, 50 % read-modify-writes, zipfian.
    F,
}

/// Why a workload name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// Workload E needs range scans.
    #[error(
        "workload e needs range scans, which ringkv does not offer: keys are hash partitioned over the ring, so a range of keys is spread over every node and has no order to scan in (choose a, b, c, d or f)"
    )]
    ScansUnsupported,
    /// Not a YCSB core workload.
    #[error("unknown workload {name:?} (choose a, b, c, d or f)")]
    Unknown {
        /// What was given.
        name: String,
    },
}

impl Workload {
    /// Parses `a`, `b`, `c`, `d`, `f` (any case; `workloada` too).
    ///
    /// # Errors
    /// [`WorkloadError`]: E is refused with the reason, anything else as unknown.
    pub fn parse(s: &str) -> Result<Workload, WorkloadError> {
        let lower = s.trim().to_ascii_lowercase();
        let name = lower.strip_prefix("workload").unwrap_or(&lower);
        match name {
            "a" => Ok(Workload::A),
            "b" => Ok(Workload::B),
            "c" => Ok(Workload::C),
            "d" => Ok(Workload::D),
            "f" => Ok(Workload::F),
            "e" => Err(WorkloadError::ScansUnsupported),
            _ => Err(WorkloadError::Unknown {
                name: s.to_string(),
            }),
        }
    }

    /// Lower-case letter.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::F => "f",
        }
    }

    /// Share of each operation kind, in percent (they add up to 100).
    pub fn mix(self) -> Vec<(OpKind, u32)> {
        match self {
            Workload::A => vec![(OpKind::Read, 50), (OpKind::Update, 50)],
            Workload::B => vec![(OpKind::Read, 95), (OpKind::Update, 5)],
            Workload::C => vec![(OpKind::Read, 100)],
            Workload::D => vec![(OpKind::Read, 95), (OpKind::Insert, 5)],
            Workload::F => vec![(OpKind::Read, 50), (OpKind::ReadModifyWrite, 50)],
        }
    }

    /// The key distribution the workload is defined with.
    pub fn distribution(self) -> Distribution {
        match self {
            Workload::D => Distribution::Latest,
            Workload::A | Workload::B | Workload::C | Workload::F => Distribution::Zipfian,
        }
    }

    /// One line describing the mix, for the report.
    pub fn describe(self) -> String {
        let parts: Vec<String> = self
            .mix()
            .iter()
            .map(|(k, p)| format!("{p}% {}", k.name()))
            .collect();
        format!("workload {}: {}", self.name(), parts.join(", "))
    }
}

/// Picks operation kinds in a workload's proportions from a uniform draw.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Cumulative percentages.
    steps: Vec<(u32, OpKind)>,
}

impl Mix {
    /// The mix of `workload`.
    pub fn new(workload: Workload) -> Mix {
        let mut total = 0;
        let steps = workload
            .mix()
            .into_iter()
            .map(|(k, p)| {
                total += p;
                (total, k)
            })
            .collect();
        assert_eq!(total, 100, "a workload's mix adds up to 100 %");
        Mix { steps }
    }

    /// The kind for a draw in `0..100`.
    pub fn pick(&self, draw: u32) -> OpKind {
        for (upto, kind) in &self.steps {
            if draw < *upto {
                return *kind;
            }
        }
        self.steps.last().expect("a mix has at least one kind").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_refusals() {
        assert_eq!(Workload::parse("a"), Ok(Workload::A));
        assert_eq!(Workload::parse("F"), Ok(Workload::F));
        assert_eq!(Workload::parse("workloadb"), Ok(Workload::B));
        assert_eq!(Workload::parse("e"), Err(WorkloadError::ScansUnsupported));
        assert!(
            WorkloadError::ScansUnsupported
                .to_string()
                .contains("hash partitioned")
        );
        assert!(matches!(
            Workload::parse("z"),
            Err(WorkloadError::Unknown { .. })
        ));
    }

    #[test]
    fn mixes_are_the_standard_ones() {
        for w in [
            Workload::A,
            Workload::B,
            Workload::C,
            Workload::D,
            Workload::F,
        ] {
            let mix = Mix::new(w);
            let mut counts = std::collections::BTreeMap::new();
            for d in 0..100 {
                *counts.entry(mix.pick(d)).or_insert(0u32) += 1;
            }
            let expected: std::collections::BTreeMap<_, _> = w.mix().into_iter().collect();
            assert_eq!(counts, expected, "workload {}", w.name());
        }
        assert_eq!(Workload::D.distribution(), Distribution::Latest);
        assert_eq!(Workload::A.distribution(), Distribution::Zipfian);
    }
}
