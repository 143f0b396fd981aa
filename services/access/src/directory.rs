//! The access service's decision state: every user's and group's access facts, exactly as the
//! access bucket on NATS holds them, applied in the bucket's order.
//!
//! Held compactly, as one installation may have millions of users: tenants and group ids are
//! interned (a user's groups are 4-byte indices), a user's text (userName, externalId, emails)
//! is one allocation, an externalId that is a GUID (Entra's default) is kept as 16 bytes, a
//! primary email equal to the userName is not kept twice, and what few users have (revoked
//! sessions, a not-before instant, a withheld state) lives behind one optional box. Users are
//! kept in one vector, reached through an index of 4-byte positions.

use std::collections::{BTreeMap, HashMap};

use rollcall_eventlog::access::{
    parse_key, AccessCheckpoint, AccessKey, GroupAccess, RevokedSession, UserAccess,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// Users and groups by tenant and id, and the last event sequence applied.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    tenants: Vec<Box<str>>,
    tenant_index: HashMap<Box<str>, u32>,
    users: Vec<Held>,
    user_index: HashMap<(u32, Uuid), u32>,
    groups: Vec<GroupSlot>,
    group_index: HashMap<(u32, Uuid), u32>,
    /// Slots of `groups` free for reuse.
    free_groups: Vec<u32>,
    /// How many slots hold a group.
    held_groups: usize,
    /// Per checkpoint key (`None`: the installation's, `Some(k)`: partition k's).
    applied: BTreeMap<Option<u16>, u64>,
}

/// One user, compactly.
#[derive(Debug, Clone)]
struct Held {
    id: Uuid,
    sequence: u64,
    /// Length-prefixed strings (`u32` little-endian lengths): the userName, the externalId
    /// unless it is kept as a GUID, then the emails (the first one left out when it equals the
    /// userName).
    text: Box<[u8]>,
    /// Interned group indices.
    groups: Box<[u32]>,
    /// What few users have.
    rare: Option<Box<Rare>>,
    /// The externalId when [`EXTERNAL_GUID`] is set.
    external_guid: [u8; 16],
    tenant: u32,
    flags: u8,
}

#[derive(Debug, Clone, Default)]
struct Rare {
    not_before: Option<OffsetDateTime>,
    revoked_sessions: Vec<RevokedSession>,
    withheld: Option<String>,
    schema: Option<String>,
}

const ACTIVE: u8 = 1;
const EXTERNAL_TEXT: u8 = 2;
const EXTERNAL_GUID: u8 = 4;
const EMAIL_IS_USER_NAME: u8 = 8;

/// A group id, its group where it is held, and how many users name it. A slot neither held nor
/// named is freed.
#[derive(Debug, Clone)]
struct GroupSlot {
    tenant: u32,
    id: Uuid,
    /// `None`: the id is known (a user names it) but the group is not (or no longer) held.
    access: Option<GroupAccess>,
    users: u32,
}

/// A held user, borrowed from the [`Directory`].
#[derive(Clone, Copy)]
pub struct User<'a> {
    directory: &'a Directory,
    held: &'a Held,
}

impl std::fmt::Debug for User<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the directory it borrows from (millions of users), nor personal data.
        f.debug_struct("User")
            .field("tenant", &self.tenant())
            .field("id", &self.id())
            .field("sequence", &self.sequence())
            .finish_non_exhaustive()
    }
}

impl<'a> User<'a> {
    /// The tenant.
    pub fn tenant(&self) -> &'a str {
        &self.directory.tenants[self.held.tenant as usize]
    }

    /// The user's id.
    pub fn id(&self) -> Uuid {
        self.held.id
    }

    /// Whether the user is active.
    pub fn active(&self) -> bool {
        self.held.flags & ACTIVE != 0
    }

    /// The event sequence this state reflects (at least).
    pub fn sequence(&self) -> u64 {
        self.held.sequence
    }

    /// The userName.
    pub fn user_name(&self) -> &'a str {
        self.strings().next().unwrap_or_default()
    }

    /// Whether the externalId is `value` (exactly).
    pub fn external_id_is(&self, value: &str) -> bool {
        if self.held.flags & EXTERNAL_GUID != 0 {
            let mut buffer = Uuid::encode_buffer();
            let guid = Uuid::from_bytes(self.held.external_guid);
            return guid.hyphenated().encode_lower(&mut buffer) == value;
        }
        self.external_text() == Some(value)
    }

    /// The externalId.
    pub fn external_id(&self) -> Option<String> {
        if self.held.flags & EXTERNAL_GUID != 0 {
            return Some(Uuid::from_bytes(self.held.external_guid).to_string());
        }
        self.external_text().map(str::to_owned)
    }

    fn external_text(&self) -> Option<&'a str> {
        if self.held.flags & EXTERNAL_TEXT != 0 {
            self.strings().nth(1)
        } else {
            None
        }
    }

    /// Email addresses, primary first.
    pub fn emails(&self) -> impl Iterator<Item = &'a str> + 'a {
        let first = (self.held.flags & EMAIL_IS_USER_NAME != 0).then(|| self.user_name());
        let skip = if self.held.flags & EXTERNAL_TEXT != 0 {
            2
        } else {
            1
        };
        first.into_iter().chain(self.strings().skip(skip))
    }

    /// Sessions issued before this instant are void (deactivation, deletion, revoke-all).
    pub fn not_before(&self) -> Option<OffsetDateTime> {
        self.held.rare.as_ref().and_then(|rare| rare.not_before)
    }

    /// Whether session `id` was revoked on its own.
    pub fn session_revoked(&self, id: &str) -> bool {
        self.held
            .rare
            .as_ref()
            .is_some_and(|rare| rare.revoked_sessions.iter().any(|s| s.id == id))
    }

    /// The groups the user is a direct member of: each id, with the group where it is held.
    pub fn groups(&self) -> impl Iterator<Item = (Uuid, Option<&'a GroupAccess>)> + 'a {
        let directory = self.directory;
        self.held.groups.iter().map(move |&index| {
            let (id, slot) = directory.group_slot(index);
            (id, slot.access.as_ref())
        })
    }

    /// The state as the access bucket holds it.
    pub fn to_access(&self) -> UserAccess {
        let rare = self.held.rare.as_deref().cloned().unwrap_or_default();
        UserAccess {
            schema: rare
                .schema
                .unwrap_or_else(|| rollcall_eventlog::access::USER_SCHEMA.to_owned()),
            tenant: self.tenant().to_owned(),
            id: self.id(),
            user_name: self.user_name().to_owned(),
            external_id: self.external_id(),
            emails: self.emails().map(str::to_owned).collect(),
            active: self.active(),
            not_before: rare.not_before,
            revoked_sessions: rare.revoked_sessions,
            groups: self.groups().map(|(id, _)| id).collect(),
            sequence: self.sequence(),
            withheld: rare.withheld,
        }
    }

    fn strings(&self) -> Strings<'a> {
        Strings(&self.held.text)
    }
}

/// Reads length-prefixed strings.
struct Strings<'a>(&'a [u8]);

impl<'a> Iterator for Strings<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (length, rest) = self.0.split_first_chunk::<4>()?;
        let length = u32::from_le_bytes(*length) as usize;
        let (text, rest) = rest.split_at_checked(length)?;
        self.0 = rest;
        // Written from `&str`s only (see `pack`), so always UTF-8.
        std::str::from_utf8(text).ok()
    }
}

/// Packs a user's text; returns it and the flags that say what it holds.
fn pack(user: &UserAccess) -> (Box<[u8]>, u8, [u8; 16]) {
    let mut text = Vec::new();
    let mut push = |value: &str| {
        // A value longer than 4 GiB cannot arrive: NATS messages are far smaller.
        text.extend_from_slice(&(value.len() as u32).to_le_bytes());
        text.extend_from_slice(value.as_bytes());
    };
    push(&user.user_name);
    let mut flags = 0;
    let mut guid = [0; 16];
    match user.external_id.as_deref() {
        None => {}
        Some(external) => match Uuid::try_parse(external) {
            // Only where it reads back exactly as given.
            Ok(parsed) if parsed.hyphenated().to_string() == external => {
                flags |= EXTERNAL_GUID;
                guid = parsed.into_bytes();
            }
            _ => {
                flags |= EXTERNAL_TEXT;
                push(external);
            }
        },
    }
    let mut emails = user.emails.iter();
    if user.emails.first() == Some(&user.user_name) {
        flags |= EMAIL_IS_USER_NAME;
        emails.next();
    }
    for email in emails {
        push(email);
    }
    (text.into_boxed_slice(), flags, guid)
}

impl rollcall_domain::policy::Person for User<'_> {
    fn user_name(&self) -> &str {
        User::user_name(self)
    }

    fn emails(&self) -> impl Iterator<Item = &str> {
        User::emails(self)
    }

    fn groups(&self) -> impl Iterator<Item = rollcall_domain::policy::GroupRef<'_>> {
        User::groups(self).map(|(id, group)| rollcall_domain::policy::GroupRef {
            id,
            display_name: group.map(|g| g.display_name.as_str()),
            external_id: group.and_then(|g| g.external_id.as_deref()),
        })
    }

    fn active(&self) -> bool {
        User::active(self)
    }
}

impl Directory {
    /// A user.
    pub fn user(&self, tenant: &str, id: &Uuid) -> Option<User<'_>> {
        let tenant = *self.tenant_index.get(tenant)?;
        let position = *self.user_index.get(&(tenant, *id))?;
        Some(self.view(position))
    }

    /// A group.
    pub fn group(&self, tenant: &str, id: &Uuid) -> Option<&GroupAccess> {
        let tenant = *self.tenant_index.get(tenant)?;
        let index = *self.group_index.get(&(tenant, *id))?;
        self.groups[index as usize].access.as_ref()
    }

    /// The first user of `tenant` that `matches` (sign-in; a scan, as sign-ins are rare).
    pub fn find_user(&self, tenant: &str, matches: impl Fn(&User<'_>) -> bool) -> Option<User<'_>> {
        let tenant = *self.tenant_index.get(tenant)?;
        (0..self.users.len() as u32)
            .filter(|&position| self.users[position as usize].tenant == tenant)
            .map(|position| self.view(position))
            .find(|user| matches(user))
    }

    /// Every user of `tenant`, in no particular order (the policy tester).
    pub fn users<'d>(&'d self, tenant: &str) -> impl Iterator<Item = User<'d>> + 'd {
        let tenant = self.tenant_index.get(tenant).copied();
        (0..self.users.len() as u32)
            .filter(move |&position| Some(self.users[position as usize].tenant) == tenant)
            .map(|position| self.view(position))
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
        (self.users.len(), self.held_groups)
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
                if user.tenant != tenant || user.id != id {
                    return Err(format!("{key}: the value is of another tenant or user"));
                }
                let tenant = self.intern_tenant(&tenant);
                self.put_user(tenant, id, user);
                Ok(None)
            }
            (Some(AccessKey::User(tenant, id)), None) => {
                if let Some(&tenant) = self.tenant_index.get(tenant.as_str()) {
                    self.remove_user(tenant, id);
                }
                Ok(None)
            }
            (Some(AccessKey::Group(tenant, id)), Some(bytes)) => {
                let group: GroupAccess =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                if group.tenant != tenant || group.id != id {
                    return Err(format!("{key}: the value is of another tenant or group"));
                }
                let tenant = self.intern_tenant(&tenant);
                let index = self.intern_group(tenant, id);
                let slot = &mut self.groups[index as usize];
                // A state older than the one held (a late put) never replaces it.
                if slot
                    .access
                    .as_ref()
                    .is_none_or(|held| held.sequence <= group.sequence)
                {
                    if slot.access.is_none() {
                        self.held_groups += 1;
                    }
                    slot.access = Some(group);
                }
                Ok(None)
            }
            (Some(AccessKey::Group(tenant, id)), None) => {
                if let Some(&tenant) = self.tenant_index.get(tenant.as_str()) {
                    if let Some(&index) = self.group_index.get(&(tenant, id)) {
                        // The slot stays while users name it, until their own states
                        // (published with the deletion) arrive.
                        if self.groups[index as usize].access.take().is_some() {
                            self.held_groups -= 1;
                        }
                        self.free_group_if_unused(index);
                    }
                }
                Ok(None)
            }
            (Some(AccessKey::Checkpoint(_)), None) => Ok(None),
            (None, _) => Err(format!("unknown key {key:?}")),
        }
    }

    fn view(&self, position: u32) -> User<'_> {
        User {
            directory: self,
            held: &self.users[position as usize],
        }
    }

    fn group_slot(&self, index: u32) -> (Uuid, &GroupSlot) {
        let slot = &self.groups[index as usize];
        (slot.id, slot)
    }

    /// How many group slots are in use (held or named), for tests.
    #[cfg(test)]
    fn group_slots(&self) -> usize {
        self.groups.len() - self.free_groups.len()
    }

    fn intern_tenant(&mut self, tenant: &str) -> u32 {
        if let Some(&index) = self.tenant_index.get(tenant) {
            return index;
        }
        let index = self.tenants.len() as u32;
        self.tenants.push(tenant.into());
        self.tenant_index.insert(tenant.into(), index);
        index
    }

    fn intern_group(&mut self, tenant: u32, id: Uuid) -> u32 {
        if let Some(&index) = self.group_index.get(&(tenant, id)) {
            return index;
        }
        let slot = GroupSlot {
            tenant,
            id,
            access: None,
            users: 0,
        };
        let index = match self.free_groups.pop() {
            Some(index) => {
                self.groups[index as usize] = slot;
                index
            }
            None => {
                self.groups.push(slot);
                self.groups.len() as u32 - 1
            }
        };
        self.group_index.insert((tenant, id), index);
        index
    }

    /// Frees a group slot that holds no group and that no user names.
    fn free_group_if_unused(&mut self, index: u32) {
        let slot = &self.groups[index as usize];
        if slot.access.is_none() && slot.users == 0 {
            self.group_index.remove(&(slot.tenant, slot.id));
            self.free_groups.push(index);
        }
    }

    /// Counts a user naming the groups at `indices` (`+1`) or no longer naming them (`-1`).
    fn name_groups(&mut self, indices: &[u32], named: bool) {
        for &index in indices {
            let slot = &mut self.groups[index as usize];
            if named {
                slot.users += 1;
            } else {
                slot.users -= 1;
                self.free_group_if_unused(index);
            }
        }
    }

    fn put_user(&mut self, tenant: u32, id: Uuid, user: UserAccess) {
        let position = self.user_index.get(&(tenant, id)).copied();
        // A state older than the one held (a late put) never replaces it.
        if let Some(position) = position {
            if self.users[position as usize].sequence > user.sequence {
                return;
            }
        }
        let groups: Box<[u32]> = user
            .groups
            .iter()
            .map(|&group| self.intern_group(tenant, group))
            .collect();
        // Named before the old state lets go, so that a group the user stays in keeps its slot.
        self.name_groups(&groups, true);
        let (text, flags, external_guid) = pack(&user);
        let rare = (user.not_before.is_some()
            || !user.revoked_sessions.is_empty()
            || user.withheld.is_some()
            || user.schema != rollcall_eventlog::access::USER_SCHEMA)
            .then(|| {
                Box::new(Rare {
                    not_before: user.not_before,
                    revoked_sessions: user.revoked_sessions,
                    withheld: user.withheld,
                    schema: (user.schema != rollcall_eventlog::access::USER_SCHEMA)
                        .then_some(user.schema),
                })
            });
        let held = Held {
            id,
            sequence: user.sequence,
            text,
            groups,
            rare,
            external_guid,
            tenant,
            flags: flags | if user.active { ACTIVE } else { 0 },
        };
        match position {
            Some(position) => {
                let old = std::mem::replace(&mut self.users[position as usize], held);
                self.name_groups(&old.groups, false);
            }
            None => {
                let position = self.users.len() as u32;
                self.users.push(held);
                self.user_index.insert((tenant, id), position);
            }
        }
    }

    fn remove_user(&mut self, tenant: u32, id: Uuid) {
        let Some(position) = self.user_index.remove(&(tenant, id)) else {
            return;
        };
        let gone = self.users.swap_remove(position as usize);
        self.name_groups(&gone.groups, false);
        // The last user moved into the freed position.
        if let Some(moved) = self.users.get(position as usize) {
            self.user_index.insert((moved.tenant, moved.id), position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_eventlog::access::{user_key, USER_SCHEMA};

    fn user(active: bool, sequence: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": USER_SCHEMA, "tenant": "t",
            "id": Uuid::nil(), "user_name": "u", "active": active, "sequence": sequence,
        }))
        .unwrap()
    }

    fn full(id: Uuid, external_id: Option<&str>, emails: &[&str], groups: &[Uuid]) -> UserAccess {
        UserAccess {
            schema: USER_SCHEMA.into(),
            tenant: "t".into(),
            id,
            user_name: "ada@example.com".into(),
            external_id: external_id.map(str::to_owned),
            emails: emails.iter().map(|e| (*e).to_owned()).collect(),
            active: true,
            not_before: None,
            revoked_sessions: vec![],
            groups: groups.to_vec(),
            sequence: 3,
            withheld: None,
        }
    }

    fn put(directory: &mut Directory, user: &UserAccess) {
        directory
            .apply(
                &user_key(&user.tenant, &user.id),
                Some(&serde_json::to_vec(user).unwrap()),
            )
            .unwrap();
    }

    #[test]
    fn a_late_older_state_never_replaces_a_newer_one() {
        let mut directory = Directory::default();
        let key = user_key("t", &Uuid::nil());
        directory.apply(&key, Some(&user(false, 9))).unwrap();
        // Published late by a slower drain: the user was deactivated at 9.
        directory.apply(&key, Some(&user(true, 7))).unwrap();
        assert!(!directory.user("t", &Uuid::nil()).unwrap().active());
        // The same sequence again (a quarantine resolved) and newer ones do replace it.
        directory.apply(&key, Some(&user(true, 9))).unwrap();
        assert!(directory.user("t", &Uuid::nil()).unwrap().active());
    }

    #[test]
    fn every_fact_reads_back_exactly_as_published() {
        let (g1, g2) = (Uuid::now_v7(), Uuid::now_v7());
        let guid = "0db508eb-9c3f-4a1e-8f2a-1b2c3d4e5f60";
        let mut revoked = full(Uuid::now_v7(), Some("x"), &["b@example.com"], &[g2]);
        revoked.active = false;
        revoked.not_before = Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap());
        revoked.revoked_sessions = vec![RevokedSession {
            id: "s1".into(),
            at: OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap(),
        }];
        revoked.withheld = Some("quarantined".into());
        let cases = [
            // Entra's default: a GUID externalId and the userName as primary email.
            full(Uuid::now_v7(), Some(guid), &["ada@example.com"], &[g1, g2]),
            // A GUID in capitals is text: it must read back in capitals.
            full(Uuid::now_v7(), Some(guid.to_uppercase().as_str()), &[], &[]),
            // Braced GUIDs parse but do not read back the same: text.
            full(
                Uuid::now_v7(),
                Some(format!("{{{guid}}}").as_str()),
                &["a", "b"],
                &[g1],
            ),
            // No externalId; the userName appears as a second email only.
            full(Uuid::now_v7(), None, &["o@x", "ada@example.com"], &[]),
            // An empty userName and an empty email.
            UserAccess {
                user_name: String::new(),
                ..full(Uuid::now_v7(), Some(""), &[""], &[])
            },
            revoked,
        ];
        let mut directory = Directory::default();
        for case in &cases {
            put(&mut directory, case);
        }
        for case in &cases {
            let held = directory.user("t", &case.id).unwrap();
            assert_eq!(held.to_access(), *case);
            assert_eq!(held.user_name(), case.user_name);
            assert_eq!(
                held.emails().collect::<Vec<_>>(),
                case.emails.iter().map(String::as_str).collect::<Vec<_>>()
            );
            if let Some(external) = &case.external_id {
                assert!(held.external_id_is(external));
                assert!(!held.external_id_is(&format!("{external}0")));
            }
        }
    }

    #[test]
    fn removing_a_user_keeps_every_other_user_reachable() {
        let mut directory = Directory::default();
        let users: Vec<UserAccess> = (0..5)
            .map(|n| UserAccess {
                user_name: format!("u{n}"),
                ..full(Uuid::now_v7(), None, &[], &[])
            })
            .collect();
        for user in &users {
            put(&mut directory, user);
        }
        // The first (the last moves into its place), then the last, then one in between.
        for gone in [0, 4, 2] {
            directory
                .apply(&user_key("t", &users[gone].id), None)
                .unwrap();
        }
        assert_eq!(directory.size().0, 2);
        for (n, user) in users.iter().enumerate() {
            let found = directory.user("t", &user.id);
            assert_eq!(found.is_some(), [1, 3].contains(&n), "user {n}");
            if let Some(found) = found {
                assert_eq!(found.user_name(), user.user_name);
            }
        }
        assert!(directory.user("other", &users[1].id).is_none());
    }

    #[test]
    fn groups_are_found_per_tenant_and_a_deleted_group_is_gone() {
        let mut directory = Directory::default();
        let group = Uuid::now_v7();
        let member = full(Uuid::now_v7(), None, &[], &[group]);
        put(&mut directory, &member);
        // Named by a user before the group itself arrived.
        let user = directory.user("t", &member.id).unwrap();
        assert_eq!(user.groups().collect::<Vec<_>>(), vec![(group, None)]);
        let value = |name: &str, sequence: u64| {
            serde_json::to_vec(&GroupAccess {
                schema: rollcall_eventlog::access::GROUP_SCHEMA.into(),
                tenant: "t".into(),
                id: group,
                display_name: name.into(),
                external_id: None,
                sequence,
            })
            .unwrap()
        };
        let key = rollcall_eventlog::access::group_key("t", &group);
        directory.apply(&key, Some(&value("Finance", 5))).unwrap();
        directory.apply(&key, Some(&value("Late", 4))).unwrap();
        let user = directory.user("t", &member.id).unwrap();
        let (_, held) = user.groups().next().unwrap();
        assert_eq!(held.unwrap().display_name, "Finance");
        assert!(directory.group("other", &group).is_none());
        assert_eq!(directory.size(), (1, 1));
        directory.apply(&key, None).unwrap();
        assert!(directory.group("t", &group).is_none());
        assert_eq!(directory.size(), (1, 0));
    }

    #[test]
    fn a_group_slot_lasts_while_the_group_is_held_or_a_user_names_it() {
        let mut directory = Directory::default();
        let (kept, left) = (Uuid::now_v7(), Uuid::now_v7());
        let mut member = full(Uuid::now_v7(), None, &[], &[kept, left]);
        put(&mut directory, &member);
        assert_eq!(directory.group_slots(), 2);
        // Leaves one group: its slot goes, as nothing else names or holds it.
        member.groups = vec![kept];
        member.sequence += 1;
        put(&mut directory, &member);
        assert_eq!(directory.group_slots(), 1);
        // A held group outlives its last member; deleted, it goes too.
        let key = rollcall_eventlog::access::group_key("t", &kept);
        let group = GroupAccess {
            schema: rollcall_eventlog::access::GROUP_SCHEMA.into(),
            tenant: "t".into(),
            id: kept,
            display_name: "Kept".into(),
            external_id: None,
            sequence: 1,
        };
        directory
            .apply(&key, Some(&serde_json::to_vec(&group).unwrap()))
            .unwrap();
        directory.apply(&user_key("t", &member.id), None).unwrap();
        assert_eq!(directory.group_slots(), 1);
        assert_eq!(directory.group("t", &kept).unwrap().display_name, "Kept");
        directory.apply(&key, None).unwrap();
        assert_eq!(directory.group_slots(), 0);
        assert_eq!(directory.size(), (0, 0));
        // Freed slots are used again, and what they held is gone.
        let other = full(Uuid::now_v7(), None, &[], &[Uuid::now_v7()]);
        put(&mut directory, &other);
        assert_eq!(directory.group_slots(), 1);
        assert!(directory.group("t", &kept).is_none());
        let (_, held) = directory
            .user("t", &other.id)
            .unwrap()
            .groups()
            .next()
            .unwrap();
        assert!(held.is_none());
    }

    #[test]
    fn a_value_of_another_tenant_or_id_than_its_key_is_refused() {
        let mut directory = Directory::default();
        let user = full(Uuid::now_v7(), None, &[], &[]);
        let value = serde_json::to_vec(&user).unwrap();
        assert!(directory
            .apply(&user_key("other", &user.id), Some(&value))
            .is_err());
        assert!(directory
            .apply(&user_key("t", &Uuid::now_v7()), Some(&value))
            .is_err());
        assert_eq!(directory.size(), (0, 0));
        assert!(directory.user("other", &user.id).is_none());
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
