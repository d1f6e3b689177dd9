//! Merge suggestions: pairs of members that are probably one person, each
//! with the reasons, in a deterministic order.
//!
//! Identities are compared by their keyed lookups (equal handles have
//! equal lookups), emails by their canonical form. The caller supplies the
//! lookups (it holds the key) and leaves out the rejected pairs.

use std::collections::{BTreeMap, BTreeSet};

/// Why two members are suggested. The discriminants are the wire numbers of
/// `rapport.v1.MergeReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Reason {
    /// The same email address (ignoring case and a `+tag`).
    SameEmail = 1,
    /// The same handle on two channels.
    SameHandleOnDifferentChannels = 2,
    /// One's handle is the local part of the other's email address.
    HandleEqualsEmailLocalPart = 3,
}

/// A member's identity on a channel other than email, by its lookup.
#[derive(Debug, Clone)]
pub struct HandleRow {
    pub member_id: String,
    pub channel: String,
    pub lookup: String,
}

/// A member's email address, with the lookup its local part would have
/// as a handle.
#[derive(Debug, Clone)]
pub struct EmailRow {
    pub member_id: String,
    pub address: String,
    pub local_part_lookup: String,
}

/// Two members (`member_id` < `other_member_id`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub member_id: String,
    pub other_member_id: String,
    pub reasons: Vec<Reason>,
}

/// The address as compared: lowercase, without the `+tag` of its local
/// part; and that local part.
pub fn canonical_email(address: &str) -> (String, String) {
    let lower = address.trim().to_lowercase();
    let (local, domain) = lower.split_once('@').unwrap_or((lower.as_str(), ""));
    let local = local.split('+').next().unwrap_or_default().to_owned();
    (format!("{local}@{domain}"), local)
}

/// Every suggested pair not in `rejected` (pairs ordered `(smaller,
/// larger)`), ordered by the pair.
pub fn suggest(
    handles: &[HandleRow],
    emails: &[EmailRow],
    rejected: &BTreeSet<(String, String)>,
) -> Vec<Suggestion> {
    let mut pairs: BTreeMap<(String, String), BTreeSet<Reason>> = BTreeMap::new();
    let mut add = |a: &str, b: &str, reason: Reason| {
        if a == b {
            return;
        }
        let key = if a < b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        };
        if !rejected.contains(&key) {
            pairs.entry(key).or_default().insert(reason);
        }
    };
    let mut by_lookup: BTreeMap<&str, Vec<&HandleRow>> = BTreeMap::new();
    for row in handles {
        by_lookup.entry(&row.lookup).or_default().push(row);
    }
    for rows in by_lookup.values() {
        for (i, a) in rows.iter().enumerate() {
            for b in &rows[i + 1..] {
                if a.channel != b.channel {
                    add(
                        &a.member_id,
                        &b.member_id,
                        Reason::SameHandleOnDifferentChannels,
                    );
                }
            }
        }
    }
    let mut by_address: BTreeMap<String, Vec<&EmailRow>> = BTreeMap::new();
    for row in emails {
        by_address
            .entry(canonical_email(&row.address).0)
            .or_default()
            .push(row);
        for handle in by_lookup
            .get(row.local_part_lookup.as_str())
            .into_iter()
            .flatten()
        {
            add(
                &row.member_id,
                &handle.member_id,
                Reason::HandleEqualsEmailLocalPart,
            );
        }
    }
    for rows in by_address.values() {
        for (i, a) in rows.iter().enumerate() {
            for b in &rows[i + 1..] {
                add(&a.member_id, &b.member_id, Reason::SameEmail);
            }
        }
    }
    pairs
        .into_iter()
        .map(|((member_id, other_member_id), reasons)| Suggestion {
            member_id,
            other_member_id,
            reasons: reasons.into_iter().collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(member: &str, channel: &str, lookup: &str) -> HandleRow {
        HandleRow {
            member_id: member.into(),
            channel: channel.into(),
            lookup: lookup.into(),
        }
    }

    fn email(member: &str, address: &str) -> EmailRow {
        EmailRow {
            member_id: member.into(),
            address: address.into(),
            // The test's "lookup" of a local part is the local part itself.
            local_part_lookup: canonical_email(address).1,
        }
    }

    #[test]
    fn emails_compare_without_case_or_tag() {
        assert_eq!(
            canonical_email(" Ana+Events@Example.ORG "),
            ("ana@example.org".to_owned(), "ana".to_owned())
        );
    }

    #[test]
    fn each_rule_suggests_its_pairs_in_order_with_every_reason() {
        let handles = [
            handle("m-discord", "discord", "anadev"),
            handle("m-github", "github", "anadev"),
            handle("m-forum", "forum", "ana"),
            handle("m-other", "forum", "bob"),
        ];
        let emails = [
            email("m-mail", "Ana@example.org"),
            email("m-mail2", "ana+news@example.org"),
        ];
        let suggestions = suggest(&handles, &emails, &BTreeSet::new());
        let pairs: Vec<(&str, &str, &[Reason])> = suggestions
            .iter()
            .map(|s| {
                (
                    s.member_id.as_str(),
                    s.other_member_id.as_str(),
                    &s.reasons[..],
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "m-discord",
                    "m-github",
                    &[Reason::SameHandleOnDifferentChannels][..]
                ),
                (
                    "m-forum",
                    "m-mail",
                    &[Reason::HandleEqualsEmailLocalPart][..]
                ),
                (
                    "m-forum",
                    "m-mail2",
                    &[Reason::HandleEqualsEmailLocalPart][..]
                ),
                ("m-mail", "m-mail2", &[Reason::SameEmail][..]),
            ]
        );
    }

    #[test]
    fn rejected_pairs_and_a_member_with_itself_are_left_out() {
        let handles = [
            handle("m1", "discord", "ana"),
            handle("m2", "github", "ana"),
            handle("m1", "x", "ana"),
        ];
        let emails = [email("m1", "ana@example.org")];
        let rejected = BTreeSet::from([("m1".to_owned(), "m2".to_owned())]);
        assert!(suggest(&handles, &emails, &rejected).is_empty());
        assert_eq!(suggest(&handles, &emails, &BTreeSet::new()).len(), 1);
    }
}
