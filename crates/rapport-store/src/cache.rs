//! What the writer remembers between batches, to skip identity lookups.
//!
//! An identity, once linked, always resolves to the same member, and only the
//! writer advances member streams. So after committing a batch the writer
//! knows every identity and stream version it touched, exactly, *as long as
//! nobody else wrote since*. Each batch checks that under the log's lock: if
//! the head is not the one this writer left, another writer (a replica on the
//! same PostgreSQL, another process on the SQLite file) has appended, and the
//! cache is dropped. Otherwise a cached identity needs no query.

use std::collections::HashMap;

use rapport_domain::IdentityKey;
use rapport_domain::ingest::{Known, KnownMember, MemberHead, Plan};

use crate::Committed;

/// Entries kept at most; past it the cache starts over (simple and bounded).
const MAX_MEMBERS: usize = 500_000;

#[derive(Debug, Default)]
pub(crate) struct WriterCache {
    /// The head this writer committed last; `None` before its first batch.
    last_head: Option<u64>,
    identities: HashMap<IdentityKey, String>,
    /// Member id → stream version after the last batch that touched it.
    versions: HashMap<String, u64>,
}

/// What a committed batch teaches the cache.
#[derive(Debug, Default)]
pub(crate) struct CacheUpdate {
    pub head_after: u64,
    pub identities: Vec<(IdentityKey, String)>,
    pub heads: Vec<MemberHead>,
}

impl CacheUpdate {
    /// Splits a written plan into the callers' outcomes with the events, and what the cache
    /// learns once it commits: every identity the batch touched, with its
    /// member's new stream version.
    pub(crate) fn from_plan(head: u64, known: Known, plan: Plan) -> (Committed, CacheUpdate) {
        let touched: std::collections::HashSet<&str> = plan
            .member_heads
            .iter()
            .map(|h| h.member_id.as_str())
            .collect();
        let mut identities: Vec<_> = known
            .identities
            .into_iter()
            .filter(|(_, m)| touched.contains(m.member_id.as_str()))
            .map(|(key, m)| (key, m.member_id))
            .collect();
        identities.extend(plan.new_identities);
        let update = CacheUpdate {
            head_after: head + plan.events.len() as u64,
            identities,
            heads: plan.member_heads,
        };
        let committed = Committed {
            outcomes: plan.outcomes,
            events: plan.events,
        };
        (committed, update)
    }
}

impl WriterCache {
    /// Called under the log's lock with the current head: drops everything
    /// if someone else has written since this writer's last commit.
    pub(crate) fn validate(&mut self, head: u64) {
        if self.last_head != Some(head) {
            self.identities.clear();
            self.versions.clear();
        }
    }

    pub(crate) fn get(&self, key: &IdentityKey) -> Option<KnownMember> {
        let member_id = self.identities.get(key)?;
        let stream_version = *self.versions.get(member_id)?;
        Some(KnownMember {
            member_id: member_id.clone(),
            stream_version,
        })
    }

    /// Under the log's lock, at `head`: puts the identities this writer knows
    /// into `known` and returns the ones still to look up.
    pub(crate) fn resolve(
        &mut self,
        head: u64,
        identities: Vec<IdentityKey>,
        known: &mut Known,
    ) -> Vec<IdentityKey> {
        self.validate(head);
        identities
            .into_iter()
            .filter(|key| match self.get(key) {
                Some(member) => {
                    known.identities.insert(key.clone(), member);
                    false
                }
                None => true,
            })
            .collect()
    }

    /// Records a committed batch. Must only be called after the commit.
    fn apply(&mut self, update: CacheUpdate) {
        if self.versions.len() + update.heads.len() > MAX_MEMBERS {
            self.identities.clear();
            self.versions.clear();
        }
        for head in update.heads {
            self.versions.insert(head.member_id, head.stream_version);
        }
        self.identities.extend(update.identities);
        self.last_head = Some(update.head_after);
    }

    /// Settles a batch: a committed one teaches the cache what it wrote; a
    /// failed one (whose commit may or may not have landed) empties it.
    pub(crate) fn settle<T>(
        &mut self,
        batch: Result<(T, CacheUpdate), crate::StoreError>,
    ) -> Result<T, crate::StoreError> {
        match batch {
            Ok((outcomes, update)) => {
                self.apply(update);
                Ok(outcomes)
            }
            Err(e) => {
                *self = WriterCache::default();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(handle: &str) -> IdentityKey {
        IdentityKey {
            community_id: "acme".into(),
            channel: "forum".into(),
            handle_key: handle.into(),
        }
    }

    fn update(head_after: u64, version: u64) -> CacheUpdate {
        CacheUpdate {
            head_after,
            identities: vec![(key("ana"), "m1".into())],
            heads: vec![MemberHead {
                community_id: "acme".into(),
                member_id: "m1".into(),
                stream_version: version,
                is_new: false,
            }],
        }
    }

    #[test]
    fn a_batch_by_this_writer_keeps_the_cache() {
        let mut cache = WriterCache::default();
        cache.apply(update(10, 3));
        cache.validate(10);
        assert_eq!(
            cache.get(&key("ana")),
            Some(KnownMember {
                member_id: "m1".into(),
                stream_version: 3
            })
        );
    }

    #[test]
    fn a_write_by_anyone_else_drops_the_cache() {
        let mut cache = WriterCache::default();
        cache.apply(update(10, 3));
        cache.validate(12);
        assert_eq!(cache.get(&key("ana")), None);
        // Even after the other writer's head is adopted, nothing stale returns.
        cache.apply(CacheUpdate {
            head_after: 13,
            ..Default::default()
        });
        assert_eq!(cache.get(&key("ana")), None);
    }
}
