//! A generated community for the timeline benchmarks: `total` interactions
//! by `members` members with a power-law activity distribution, contest
//! bursts, exchanges between members, and one probe member with exactly one
//! interaction in a thousand (10,000 entries in 10 million).
//!
//! Every interaction is a pure function of its index, so any split of the
//! index range over tasks gives the same community.

use rapport_proto::v1 as pb;

/// The community's id.
pub const COMMUNITY: &str = "bench";
/// The member whose timeline the latency probe reads.
pub const HEAVY_HANDLE: &str = "probe-heavy";
/// One interaction in this many is by the heavy member, by default.
pub const HEAVY_EVERY: u64 = 1_000;
/// Every `BURST_EVERY` interactions, the last `BURST_LEN` are contest
/// entries: a giveaway's one-click crowd.
const BURST_EVERY: u64 = 100_000;
const BURST_LEN: u64 = 5_000;
/// The community's history spans two years, ending at [`Community::end`].
pub const SPAN_SECONDS: i64 = 2 * 365 * 86_400;

pub struct Community {
    pub total: u64,
    pub members: u64,
    /// Distinguishes runs, so a second populate never collides with the first.
    pub run: String,
    /// Unix seconds of the last interaction: the run's start, so that the
    /// history is recent as a live community's is (recent activity is what
    /// scores, windows and momentum look at).
    pub end: i64,
    /// One interaction in this many is by the heavy member: 1,000 gives it
    /// 10,000 interactions in 10 million; 100 gives it as many in 1 million.
    pub heavy_every: u64,
}

/// SplitMix64: a fixed, well-mixed hash of the index (reproducible runs,
/// no RNG state to share between tasks).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform float in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Community {
    /// A member rank with P(rank r) ∝ 1/(r+1): a few members do most.
    fn power_law_member(&self, h: u64) -> u64 {
        let r = ((self.members as f64 + 1.0).powf(unit(h)) - 1.0) as u64;
        r.min(self.members - 1)
    }

    fn handle(rank: u64) -> String {
        format!("member{rank}")
    }

    pub fn interaction(&self, n: u64) -> pb::Interaction {
        let h = mix(n);
        let in_burst = n % BURST_EVERY >= BURST_EVERY - BURST_LEN;
        let occurred = self.end - SPAN_SECONDS
            + (n as i128 * SPAN_SECONDS as i128 / self.total.max(1) as i128) as i64;
        let forum = |handle: String| pb::Identity {
            channel: "forum".into(),
            handle,
        };
        let (actor, kind, target, incentivized, campaign) = if n.is_multiple_of(self.heavy_every) {
            let other = Self::handle(self.power_law_member(mix(h)));
            (
                HEAVY_HANDLE.to_owned(),
                pb::InteractionKind::Answer,
                Some(pb::target::Target::Member(forum(other))),
                false,
                String::new(),
            )
        } else if in_burst {
            // Anyone may enter a contest: uniform over members.
            (
                Self::handle(h % self.members),
                pb::InteractionKind::ContestEntry,
                Some(pb::target::Target::Brand(pb::target::Brand {})),
                true,
                format!("giveaway-{}", n / BURST_EVERY),
            )
        } else {
            let actor = self.power_law_member(h);
            let roll = unit(mix(h ^ 1));
            let (kind, target) = if roll < 0.35 {
                let other = self.power_law_member(mix(h ^ 2));
                let kind = if roll < 0.2 {
                    pb::InteractionKind::Reply
                } else {
                    pb::InteractionKind::Reaction
                };
                (
                    kind,
                    Some(pb::target::Target::Member(forum(Self::handle(other)))),
                )
            } else if roll < 0.6 {
                (
                    pb::InteractionKind::Comment,
                    Some(pb::target::Target::ContentId(format!(
                        "thread-{}",
                        h % 50_000
                    ))),
                )
            } else if roll < 0.8 {
                (
                    pb::InteractionKind::Reaction,
                    Some(pb::target::Target::Brand(pb::target::Brand {})),
                )
            } else if roll < 0.95 {
                (pb::InteractionKind::Post, None)
            } else {
                (
                    pb::InteractionKind::Share,
                    Some(pb::target::Target::Brand(pb::target::Brand {})),
                )
            };
            (Self::handle(actor), kind, target, false, String::new())
        };
        const CHANNELS: [&str; 4] = ["forum", "discord", "github", "x"];
        pb::Interaction {
            community_id: COMMUNITY.into(),
            interaction_id: format!("{}-{n}", self.run),
            channel: CHANNELS[(mix(h ^ 3) % 4) as usize].into(),
            kind: kind as i32,
            source_type: String::new(),
            actor: Some(forum(actor)),
            occurred_at: Some(prost_types::Timestamp {
                seconds: occurred,
                nanos: 0,
            }),
            target: target.map(|t| pb::Target { target: Some(t) }),
            incentivized,
            campaign_id: campaign,
            url: format!("https://community.example/t/{}", h % 100_000),
            excerpt: "thanks, clearing the cache and restarting fixed it for me".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heavy_member_has_one_interaction_in_a_thousand_and_bursts_are_contests() {
        let c = Community {
            total: 200_000,
            members: 1_000,
            run: "t".into(),
            end: 1_767_225_600,
            heavy_every: HEAVY_EVERY,
        };
        let all: Vec<_> = (0..c.total).map(|n| c.interaction(n)).collect();
        let heavy = all
            .iter()
            .filter(|i| i.actor.as_ref().unwrap().handle == HEAVY_HANDLE)
            .count();
        assert_eq!(heavy, 200);
        let contests = all.iter().filter(|i| i.incentivized).count();
        assert!((9_900..=10_000).contains(&contests), "{contests}");
        // Power law: the top member does far more than the median one.
        let mut counts = std::collections::HashMap::<String, u64>::new();
        for i in &all {
            *counts
                .entry(i.actor.as_ref().unwrap().handle.clone())
                .or_default() += 1;
        }
        let top = counts["member0"];
        let mid = counts.get("member500").copied().unwrap_or(0);
        assert!(top > 50 * mid.max(1), "top {top}, median-ish {mid}");
    }
}
