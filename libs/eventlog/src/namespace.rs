//! Names derived from an installation's namespace (`rollcall` by default): the stream,
//! subjects, key-value buckets and notification subjects. Several installations, and every
//! test, share one NATS server safely by using different namespaces.

/// A validated namespace, with the number of replicas (servers of a JetStream cluster) that
/// keep each stream and key-value bucket Rollcall creates in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    name: String,
    replicas: usize,
}

/// The most replicas JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

/// Why a replica count cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ROLLCALL_REPLICAS is {0}: a stream has 1 to 5 replicas (1 on a single server, 3 on a three-node cluster)")]
pub struct InvalidReplicas(pub usize);

/// Why a name cannot be used in subjects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} must be 1 to 63 characters of a-z, 0-9, - and _, starting with a letter or digit")]
pub struct InvalidName(pub String);

/// Checks a namespace or tenant name: lowercase letters, digits, `-` and `_`, so that it is
/// one subject token and part of a stream name.
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(InvalidName(name.to_owned()))
    }
}

impl Namespace {
    /// A namespace, checked.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        check_name(&name)?;
        Ok(Self { name, replicas: 1 })
    }

    /// The same namespace whose streams and buckets are kept by `replicas` servers (1 to
    /// [`MAX_REPLICAS`]; more than 1 needs a JetStream cluster). Opening a stream or bucket
    /// that exists with another count changes it to this one.
    pub fn with_replicas(self, replicas: usize) -> Result<Self, InvalidReplicas> {
        if (1..=MAX_REPLICAS).contains(&replicas) {
            Ok(Self { replicas, ..self })
        } else {
            Err(InvalidReplicas(replicas))
        }
    }

    /// How many servers keep each stream and bucket (1 unless set).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The namespace itself.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The events stream: `ROLLCALL_EVENTS` for `rollcall`.
    pub fn stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.name.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The installation's settings bucket (which event stream is active, after a migration
    /// switched streams).
    pub fn config_bucket(&self) -> String {
        format!("{}_config", self.name.replace('-', "_"))
    }

    /// Every event subject of the installation.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.name)
    }

    /// One aggregate's subject.
    pub fn aggregate_subject(&self, tenant: &str, aggregate: &str, id: &uuid::Uuid) -> String {
        format!("{}.events.{tenant}.{aggregate}.{id}", self.name)
    }

    /// The key-value bucket of uniqueness claims.
    pub fn claims_bucket(&self) -> String {
        format!("{}_claims", self.name.replace('-', "_"))
    }

    /// The bucket in which each process that writes claims says it is alive.
    pub fn writers_bucket(&self) -> String {
        format!("{}_writers", self.name.replace('-', "_"))
    }

    /// Where a consumer announces the stream sequence it has applied. A projector's
    /// announcement carries [`QUARANTINE_CLEAR_HEADER`] when, as of that sequence, no resource
    /// is quarantined.
    pub fn checkpoint_subject(&self, consumer: &str) -> String {
        format!("{}.checkpoints.{consumer}", self.name)
    }
}

/// The header of a projector's checkpoint announcement saying that no resource is quarantined
/// as of the announced sequence (value `1`): a SCIM API then need not ask PostgreSQL whether
/// the resource it wrote is.
pub const QUARANTINE_CLEAR_HEADER: &str = "Rollcall-Quarantine-Clear";

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_namespace() {
        let ns = Namespace::new("rollcall").unwrap();
        assert_eq!(ns.stream(), "ROLLCALL_EVENTS");
        let id = uuid::Uuid::nil();
        assert_eq!(
            ns.aggregate_subject("default", "user", &id),
            format!("rollcall.events.default.user.{id}")
        );
        assert_eq!(Namespace::new("t-1").unwrap().claims_bucket(), "t_1_claims");
    }

    #[test]
    fn a_namespace_keeps_one_replica_unless_given_one_to_five() {
        let ns = Namespace::new("rollcall").unwrap();
        assert_eq!(ns.replicas(), 1);
        assert_eq!(ns.clone().with_replicas(3).unwrap().replicas(), 3);
        assert_eq!(ns.clone().with_replicas(5).unwrap().replicas(), 5);
        assert_eq!(ns.clone().with_replicas(0), Err(InvalidReplicas(0)));
        assert_eq!(ns.with_replicas(6), Err(InvalidReplicas(6)));
        assert!(InvalidReplicas(6).to_string().contains("ROLLCALL_REPLICAS"));
    }

    #[test]
    fn names_that_would_break_subjects_are_refused() {
        for bad in [
            "",
            "Rollcall",
            "a.b",
            "a b",
            "a*",
            ">",
            "-x",
            &"x".repeat(64),
        ] {
            assert!(Namespace::new(bad).is_err(), "{bad:?}");
        }
    }
}
