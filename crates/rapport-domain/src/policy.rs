//! A community's scoring policy: how much each kind of interaction is worth,
//! how fast contributions fade, how the components combine and where the
//! tiers start. Policy is data: set by an event, validated here.

use std::collections::BTreeMap;

use crate::interaction::InteractionKind;
use crate::validate::FieldViolation;

/// Advocate tiers, lowest first. The discriminants are the wire numbers of
/// `rapport.v1.Tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(i32)]
pub enum Tier {
    #[default]
    Observer = 1,
    Participant = 2,
    Contributor = 3,
    Advocate = 4,
    Champion = 5,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Observer,
        Tier::Participant,
        Tier::Contributor,
        Tier::Advocate,
        Tier::Champion,
    ];

    pub fn from_i32(value: i32) -> Option<Tier> {
        Self::ALL.into_iter().find(|t| *t as i32 == value)
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// Lowercase name, for timeline entries and logs ("became advocate").
    pub fn name(self) -> &'static str {
        match self {
            Tier::Observer => "observer",
            Tier::Participant => "participant",
            Tier::Contributor => "contributor",
            Tier::Advocate => "advocate",
            Tier::Champion => "champion",
        }
    }
}

/// How the five components weigh in the score; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComponentWeights {
    pub engagement: f64,
    pub consistency: f64,
    pub exchange: f64,
    pub advocacy: f64,
    pub breadth: f64,
}

/// The score at which each tier above observer starts, strictly increasing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub participant: f64,
    pub contributor: f64,
    pub advocate: f64,
    pub champion: f64,
}

impl Thresholds {
    /// The score at which `tier` starts (0 for observer).
    pub fn start(&self, tier: Tier) -> f64 {
        match tier {
            Tier::Observer => 0.0,
            Tier::Participant => self.participant,
            Tier::Contributor => self.contributor,
            Tier::Advocate => self.advocate,
            Tier::Champion => self.champion,
        }
    }

    /// The highest tier whose start `score` reaches.
    pub fn tier_of(&self, score: f64) -> Tier {
        Tier::ALL
            .into_iter()
            .rev()
            .find(|t| score >= self.start(*t))
            .unwrap_or(Tier::Observer)
    }
}

/// A community's scoring policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Base value of one interaction of each kind. Kinds left out are worth 0.
    pub kind_weights: BTreeMap<InteractionKind, f64>,
    /// Value of a mention with positive sentiment (instead of the mention weight).
    pub positive_mention_weight: f64,
    /// Multiplier for incentivized interactions (contest, giveaway, paid), in [0, 1].
    pub incentive_factor: f64,
    /// Days after which a contribution counts half.
    pub half_life_days: f64,
    pub component_weights: ComponentWeights,
    pub thresholds: Thresholds,
    /// Points below a tier's start a member may fall before losing the tier,
    /// so tiers do not flicker around a threshold.
    pub demotion_margin: f64,
}

impl Default for Policy {
    /// The default policy of `docs/scoring.md`.
    fn default() -> Self {
        use InteractionKind::*;
        let kind_weights = [
            (Reaction, 0.5),
            (Share, 1.5),
            (Comment, 1.0),
            (Post, 3.0),
            (Reply, 3.0),
            (Answer, 5.0),
            (Mention, 1.0),
            (Review, 6.0),
            (EventAttended, 4.0),
            (EventHosted, 12.0),
            (ContentCreated, 10.0),
            (Referral, 8.0),
            (ContestEntry, 0.2),
            (SupportRequest, 0.5),
        ]
        .into_iter()
        .collect();
        Policy {
            kind_weights,
            positive_mention_weight: 3.0,
            incentive_factor: 0.1,
            half_life_days: 120.0,
            component_weights: ComponentWeights {
                engagement: 0.35,
                consistency: 0.25,
                exchange: 0.20,
                advocacy: 0.10,
                breadth: 0.10,
            },
            thresholds: Thresholds {
                participant: 10.0,
                contributor: 30.0,
                advocate: 55.0,
                champion: 80.0,
            },
            demotion_margin: 5.0,
        }
    }
}

/// Tolerance for "the component weights sum to 1": policies typed by hand
/// in decimal (0.35 + 0.25 + ...) do not sum to exactly 1.0 in binary.
const SUM_TOLERANCE: f64 = 1e-6;

/// Longest half-life accepted: ten years is already "never forget".
pub const MAX_HALF_LIFE_DAYS: f64 = 3650.0;
/// Largest weight accepted for one kind, to keep sums far from overflow.
pub const MAX_KIND_WEIGHT: f64 = 1000.0;

impl Policy {
    /// The base value of one interaction of `kind`.
    pub fn kind_weight(&self, kind: InteractionKind) -> f64 {
        self.kind_weights.get(&kind).copied().unwrap_or(0.0)
    }

    /// Every rule the policy breaks, with field paths under `prefix`
    /// (`policy.kind_weights[REVIEW]`). Empty when the policy is valid.
    pub fn violations(&self, prefix: &str) -> Vec<FieldViolation> {
        let mut out = Vec::new();
        let mut bad =
            |field: String, description: String| out.push(FieldViolation { field, description });
        let finite_in = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;

        for (kind, weight) in &self.kind_weights {
            if !finite_in(*weight, 0.0, MAX_KIND_WEIGHT) {
                bad(
                    format!("{prefix}.kind_weights[{}]", kind_name(*kind)),
                    format!("must be between 0 and {MAX_KIND_WEIGHT}, got {weight}"),
                );
            }
        }
        if !finite_in(self.positive_mention_weight, 0.0, MAX_KIND_WEIGHT) {
            bad(
                format!("{prefix}.positive_mention_weight"),
                format!(
                    "must be between 0 and {MAX_KIND_WEIGHT}, got {}",
                    self.positive_mention_weight
                ),
            );
        }
        if !finite_in(self.incentive_factor, 0.0, 1.0) {
            bad(
                format!("{prefix}.incentive_factor"),
                format!("must be between 0 and 1, got {}", self.incentive_factor),
            );
        }
        if !finite_in(self.half_life_days, 1.0, MAX_HALF_LIFE_DAYS) {
            bad(
                format!("{prefix}.half_life_days"),
                format!(
                    "must be between 1 and {MAX_HALF_LIFE_DAYS} days, got {}",
                    self.half_life_days
                ),
            );
        }

        let w = &self.component_weights;
        let named = [
            ("engagement", w.engagement),
            ("consistency", w.consistency),
            ("exchange", w.exchange),
            ("advocacy", w.advocacy),
            ("breadth", w.breadth),
        ];
        let mut all_valid = true;
        for (name, value) in named {
            if !finite_in(value, 0.0, 1.0) {
                all_valid = false;
                bad(
                    format!("{prefix}.component_weights.{name}"),
                    format!("must be between 0 and 1, got {value}"),
                );
            }
        }
        let sum: f64 = named.iter().map(|(_, v)| v).sum();
        if all_valid && (sum - 1.0).abs() > SUM_TOLERANCE {
            bad(
                format!("{prefix}.component_weights"),
                format!("must sum to 1, they sum to {sum}"),
            );
        }

        let t = &self.thresholds;
        let ordered = [
            ("participant", t.participant),
            ("contributor", t.contributor),
            ("advocate", t.advocate),
            ("champion", t.champion),
        ];
        let mut previous = ("0", 0.0);
        for (name, value) in ordered {
            if !finite_in(value, 0.0, 100.0) || value <= previous.1 {
                bad(
                    format!("{prefix}.tier_thresholds.{name}"),
                    format!(
                        "must be above {} ({}) and at most 100, got {value}",
                        previous.0, previous.1
                    ),
                );
            }
            previous = (name, value);
        }
        if !finite_in(self.demotion_margin, 0.0, t.participant.max(0.0)) {
            bad(
                format!("{prefix}.demotion_margin"),
                format!(
                    "must be between 0 and the participant threshold ({}), got {}",
                    t.participant, self.demotion_margin
                ),
            );
        }
        out
    }
}

/// The kind's name as in `rapport.v1.InteractionKind` without its prefix.
pub fn kind_name(kind: InteractionKind) -> &'static str {
    use InteractionKind::*;
    match kind {
        Reaction => "REACTION",
        Comment => "COMMENT",
        Post => "POST",
        Reply => "REPLY",
        Answer => "ANSWER",
        Share => "SHARE",
        Mention => "MENTION",
        Review => "REVIEW",
        EventAttended => "EVENT_ATTENDED",
        EventHosted => "EVENT_HOSTED",
        ContentCreated => "CONTENT_CREATED",
        Referral => "REFERRAL",
        ContestEntry => "CONTEST_ENTRY",
        SupportRequest => "SUPPORT_REQUEST",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(p: &Policy) -> Vec<String> {
        p.violations("policy")
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn the_default_policy_is_valid() {
        assert!(fields(&Policy::default()).is_empty());
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let mut p = Policy::default();
        p.kind_weights.insert(InteractionKind::Review, -1.0);
        p.incentive_factor = 1.5;
        p.half_life_days = 0.0;
        p.thresholds.advocate = 20.0; // below contributor
        assert_eq!(
            fields(&p),
            [
                "policy.kind_weights[REVIEW]",
                "policy.incentive_factor",
                "policy.half_life_days",
                "policy.tier_thresholds.advocate",
            ]
        );
    }

    #[test]
    fn component_weights_must_sum_to_one() {
        let mut p = Policy::default();
        p.component_weights.breadth = 0.2;
        assert_eq!(fields(&p), ["policy.component_weights"]);
        p.component_weights.breadth = f64::NAN;
        assert_eq!(fields(&p), ["policy.component_weights.breadth"]);
    }

    #[test]
    fn tiers_start_at_their_thresholds() {
        let t = Policy::default().thresholds;
        assert_eq!(t.tier_of(0.0), Tier::Observer);
        assert_eq!(t.tier_of(9.99), Tier::Observer);
        assert_eq!(t.tier_of(10.0), Tier::Participant);
        assert_eq!(t.tier_of(54.9), Tier::Contributor);
        assert_eq!(t.tier_of(80.0), Tier::Champion);
    }
}
