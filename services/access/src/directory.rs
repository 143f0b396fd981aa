//! The access service's decision state: every user's and group's access facts, exactly as the
//! access bucket on NATS holds them, applied in the bucket's order.

use std::collections::{BTreeMap, HashMap};

use rollcall_eventlog::access::{parse_key, AccessCheckpoint, AccessKey, GroupAccess, UserAccess};
use uuid::Uuid;

use crate::policy::GroupLookup;

/// Users and groups by tenant and id, and the last event sequence applied.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    users: HashMap<(String, Uuid), UserAccess>,
    groups: HashMap<(String, Uuid), GroupAccess>,
    /// Per checkpoint key (`None`: the installation's, `Some(k)`: partition k's).
    applied: BTreeMap<Option<u16>, u64>,
}

impl GroupLookup for Directory {
    fn group(&self, tenant: &str, id: &Uuid) -> Option<&GroupAccess> {
        self.groups.get(&(tenant.to_owned(), *id))
    }
}

impl Directory {
    /// A user.
    pub fn user(&self, tenant: &str, id: &Uuid) -> Option<&UserAccess> {
        self.users.get(&(tenant.to_owned(), *id))
    }

    /// The first user of `tenant` that `matches` (sign-in; a scan, as sign-ins are rare).
    pub fn find_user(
        &self,
        tenant: &str,
        matches: impl Fn(&UserAccess) -> bool,
    ) -> Option<&UserAccess> {
        self.users
            .iter()
            .find(|((t, _), user)| t == tenant && matches(user))
            .map(|(_, user)| user)
    }

    /// The highest event sequence whose effects are applied (of any partition).
    pub fn applied(&self) -> u64 {
        self.applied.values().copied().max().unwrap_or(0)
    }

    /// The last event sequence applied, per partition (`None`: an unpartitioned installation).
    pub fn applied_by_partition(&self) -> Vec<(Option<u16>, u64)> {
        self.applied.iter().map(|(p, s)| (*p, *s)).collect()
    }

    /// How many users and groups are held.
    pub fn size(&self) -> (usize, usize) {
        (self.users.len(), self.groups.len())
    }

    /// Applies one bucket entry (`None`: the key was deleted). Returns the partition and its
    /// new checkpoint when the entry was one. Unreadable entries are ignored (and reported by
    /// the caller).
    pub fn apply(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Option<(Option<u16>, u64)>, String> {
        match (parse_key(key), value) {
            (Some(AccessKey::Checkpoint(partition)), Some(bytes)) => {
                let checkpoint: AccessCheckpoint =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                let applied = self.applied.entry(partition).or_default();
                *applied = (*applied).max(checkpoint.sequence);
                Ok(Some((partition, *applied)))
            }
            (Some(AccessKey::User(tenant, id)), Some(bytes)) => {
                let user: UserAccess =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                // A state older than the one held (a late put) never replaces it.
                let key = (tenant, id);
                if self
                    .users
                    .get(&key)
                    .is_none_or(|held| held.sequence <= user.sequence)
                {
                    self.users.insert(key, user);
                }
                Ok(None)
            }
            (Some(AccessKey::User(tenant, id)), None) => {
                self.users.remove(&(tenant, id));
                Ok(None)
            }
            (Some(AccessKey::Group(tenant, id)), Some(bytes)) => {
                let group: GroupAccess =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                let key = (tenant, id);
                if self
                    .groups
                    .get(&key)
                    .is_none_or(|held| held.sequence <= group.sequence)
                {
                    self.groups.insert(key, group);
                }
                Ok(None)
            }
            (Some(AccessKey::Group(tenant, id)), None) => {
                self.groups.remove(&(tenant, id));
                Ok(None)
            }
            (Some(AccessKey::Checkpoint(_)), None) => Ok(None),
            (None, _) => Err(format!("unknown key {key:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(active: bool, sequence: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": rollcall_eventlog::access::USER_SCHEMA, "tenant": "t",
            "id": Uuid::nil(), "user_name": "u", "active": active, "sequence": sequence,
        }))
        .unwrap()
    }

    #[test]
    fn a_late_older_state_never_replaces_a_newer_one() {
        let mut directory = Directory::default();
        let key = rollcall_eventlog::access::user_key("t", &Uuid::nil());
        directory.apply(&key, Some(&user(false, 9))).unwrap();
        // Published late by a slower drain: the user was deactivated at 9.
        directory.apply(&key, Some(&user(true, 7))).unwrap();
        assert!(!directory.user("t", &Uuid::nil()).unwrap().active);
        // The same sequence again (a quarantine resolved) and newer ones do replace it.
        directory.apply(&key, Some(&user(true, 9))).unwrap();
        assert!(directory.user("t", &Uuid::nil()).unwrap().active);
    }

    #[test]
    fn checkpoints_are_kept_per_partition() {
        let mut directory = Directory::default();
        let at = |s: u64| serde_json::to_vec(&serde_json::json!({"sequence": s})).unwrap();
        assert_eq!(
            directory.apply("checkpoint.p1", Some(&at(5))).unwrap(),
            Some((Some(1), 5))
        );
        assert_eq!(
            directory.apply("checkpoint.p0", Some(&at(3))).unwrap(),
            Some((Some(0), 3))
        );
        assert_eq!(
            directory.apply("checkpoint.p1", Some(&at(4))).unwrap(),
            Some((Some(1), 5)),
            "a checkpoint never goes back"
        );
        assert_eq!(directory.applied(), 5);
        assert_eq!(
            directory.applied_by_partition(),
            vec![(Some(0), 3), (Some(1), 5)]
        );
    }
}
