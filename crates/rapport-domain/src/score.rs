//! The advocate score: a pure function of a member's interactions, the
//! community's scoring policy and an as-of time. `docs/scoring.md` is its
//! description in prose, with worked examples that a test checks.
//!
//! The score is built as a *fold*: [`ScoreState`] takes the member's
//! interactions in log order (an interaction recorded late, with an older
//! time, counts as already decayed) and can then be evaluated at any time
//! after the latest of them.
//! [`assess`] is the whole function (filter by as-of, sort, fold, evaluate);
//! the scores projection keeps one folded state per member and evaluates it
//! at read time, so rankings are exact for "now" without replaying anyone's
//! history. Both paths run the same fold in the same order, so they agree to
//! the last bit.
//!
//! Time enters in three ways, all deterministic:
//!
//! - decay: a contribution counts `0.5 ^ (age / half_life)`;
//! - windows: calendar weeks (Monday 00:00 UTC) and UTC days, so a window
//!   only ever loses old activity as time passes and a score with no new
//!   interactions never rises;
//! - tiers: evaluated as each interaction counts (promotion is immediate)
//!   and at each UTC midnight (demotion, with a margin), so the tier at any
//!   time is a replay, not a guess.

use std::collections::{BTreeMap, HashMap};

use crate::interaction::InteractionKind;
use crate::policy::{Policy, Tier};
use crate::time::Timestamp;

const DAY_MICROS: i64 = 86_400_000_000;
/// Consistency looks at the current calendar week and the 25 before it.
pub const CONSISTENCY_WEEKS: i64 = 26;
/// Exchange and breadth look at the current UTC day and the 179 before it.
pub const WINDOW_DAYS: i64 = 180;
/// Decayed value at which engagement reaches 1 − 1/e.
pub const ENGAGEMENT_SCALE: f64 = 30.0;
/// Distinct members at which exchange reaches 1 − 1/e.
pub const EXCHANGE_SCALE: f64 = 5.0;
/// Decayed advocacy acts at which advocacy reaches 1 − 1/e.
pub const ADVOCACY_SCALE: f64 = 2.0;
/// How far below the participant threshold a member with no organic
/// interaction is held: they can never leave the lowest tier.
pub const NO_ORGANIC_CAP_BELOW: f64 = 0.01;
/// Momentum compares the score now with the score this many days ago.
pub const MOMENTUM_DAYS: i64 = 30;

/// One interaction as the score sees it: no personal data.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    /// Log position: the tie-breaker between interactions at the same time.
    pub position: u64,
    /// When it happened: `occurred_at`, but never later than when the log
    /// recorded it (a clock running ahead cannot score the future).
    pub at: Timestamp,
    pub kind: InteractionKind,
    pub channel: String,
    pub incentivized: bool,
    /// Sentiment above zero: a mention then counts as advocacy.
    pub positive: bool,
    /// The member it was aimed at, when that is another member.
    pub other_member: Option<String>,
}

impl Activity {
    /// The effective time of an interaction: see [`Activity::at`].
    pub fn effective_time(occurred_at: Timestamp, recorded_at: Timestamp) -> Timestamp {
        occurred_at.min(recorded_at)
    }

    fn organic(&self) -> bool {
        !self.incentivized
    }

    /// Its undecayed value for engagement.
    pub fn value(&self, policy: &Policy) -> f64 {
        let base = if self.kind == InteractionKind::Mention && self.positive {
            policy.positive_mention_weight
        } else {
            policy.kind_weight(self.kind)
        };
        base * self.incentive(policy)
    }

    /// Which weight [`Activity::value`] takes: bit 0 for a positive mention,
    /// else the kind's bit.
    pub fn value_bit(&self) -> u32 {
        if self.kind == InteractionKind::Mention && self.positive {
            1
        } else {
            1 << (self.kind.as_i32() as u32 % 32)
        }
    }

    fn incentive(&self, policy: &Policy) -> f64 {
        if self.incentivized {
            policy.incentive_factor
        } else {
            1.0
        }
    }

    /// Speaking for the brand: reviews, referrals, created content, hosted
    /// events and positive mentions.
    pub fn is_advocacy(&self) -> bool {
        use InteractionKind::*;
        match self.kind {
            Review | Referral | ContentCreated | EventHosted => true,
            Mention => self.positive,
            _ => false,
        }
    }

    /// Counts towards exchange: organic, aimed at another member, and more
    /// than a reaction.
    fn is_exchange(&self) -> bool {
        self.organic() && self.other_member.is_some() && self.kind != InteractionKind::Reaction
    }
}

/// The five components, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Components {
    pub engagement: f64,
    pub consistency: f64,
    pub exchange: f64,
    pub advocacy: f64,
    pub breadth: f64,
}

/// A score at one time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// 0 to 100.
    pub value: f64,
    pub components: Components,
    /// No organic interaction yet: the score is held below the participant
    /// threshold (it may be lower than that anyway).
    pub capped: bool,
}

impl Score {
    /// Each component's contribution in points; they sum to the score unless capped.
    pub fn contributions(&self, policy: &Policy) -> [(&'static str, f64, f64); 5] {
        let c = &self.components;
        let w = &policy.component_weights;
        [
            (
                "engagement",
                c.engagement,
                100.0 * w.engagement * c.engagement,
            ),
            (
                "consistency",
                c.consistency,
                100.0 * w.consistency * c.consistency,
            ),
            ("exchange", c.exchange, 100.0 * w.exchange * c.exchange),
            ("advocacy", c.advocacy, 100.0 * w.advocacy * c.advocacy),
            ("breadth", c.breadth, 100.0 * w.breadth * c.breadth),
        ]
    }
}

/// Everything a member's interactions add up to, as of the latest one
/// folded in. Small: a few sums, at most 26 weeks, 180 days and one entry
/// per channel. Which other members were exchanged with, and when last, is
/// kept by the caller (see [`ScoreState::add`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoreState {
    /// Decayed engagement value as of `at`.
    pub engagement: f64,
    /// Decayed advocacy acts as of `at`.
    pub advocacy: f64,
    /// The latest activity folded in, in microseconds; `None` before any.
    pub at: Option<i64>,
    /// Calendar week → 1 (only organic reactions) or 2 (more than reactions).
    pub weeks: BTreeMap<i64, u8>,
    /// UTC day → how many other members were last exchanged with that day.
    pub exchange_days: BTreeMap<i64, u32>,
    /// Channel → the last UTC day with an organic interaction on it.
    pub channels: BTreeMap<String, i64>,
    /// Whether any organic interaction was folded in.
    pub organic: bool,
    /// The tier as of `tier_day`'s midnight or the latest activity, whichever is later.
    pub tier: Tier,
    /// The last UTC day whose midnight demotion check is done.
    pub tier_day: i64,
    /// Interactions folded in.
    pub interactions: u64,
    /// What kinds of value were folded in (see [`Activity::value_bit`]):
    /// bounds the value of any one of them ([`ScoreState::max_value`]), so
    /// an explanation stops reading a member's history early.
    pub kinds: u32,
}

/// The UTC day of a time, in days since the epoch.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(DAY_MICROS)
}

/// Calendar weeks starting on Monday: 1970-01-01 was a Thursday.
fn week_of(micros: i64) -> i64 {
    (day_of(micros) + 3).div_euclid(7)
}

fn decay(policy: &Policy, from: i64, to: i64) -> f64 {
    let age_days = (to - from).max(0) as f64 / DAY_MICROS as f64;
    0.5f64.powf(age_days / policy.half_life_days)
}

/// A member's tier changed: "became advocate".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierChange {
    /// The interaction's time (a promotion) or the UTC midnight of the check
    /// (a demotion).
    pub at: Timestamp,
    /// The log position of the interaction that caused it; 0 for a
    /// demotion at midnight, which no event caused.
    pub position: u64,
    pub from: Tier,
    pub to: Tier,
}

/// The tier after a score of `score` when the member held `held`: promotion
/// at once, demotion only below the held tier's start minus the margin, and
/// then to the highest tier the score keeps within the margin.
pub fn next_tier(policy: &Policy, held: Tier, score: f64) -> Tier {
    let reached = policy.thresholds.tier_of(score);
    if reached >= held {
        return reached;
    }
    Tier::ALL
        .into_iter()
        .rev()
        .filter(|t| *t <= held)
        .find(|t| score >= policy.thresholds.start(*t) - policy.demotion_margin)
        .unwrap_or(Tier::Observer)
}

/// Drops the keys of `map` before `first`.
fn forget_before<V>(map: &mut BTreeMap<i64, V>, first: i64) {
    if map.first_key_value().is_some_and(|(k, _)| *k < first) {
        *map = map.split_off(&first);
    }
}

impl ScoreState {
    /// Folds in one activity, in log order: an activity older than the
    /// latest (recorded late) counts as already decayed and marks its week
    /// and day if a window can still see them. `last_exchange_day` is the
    /// day this member last exchanged with `activity.other_member` (the
    /// caller remembers it per pair); the return value is the day to
    /// remember from now on.
    pub fn add(
        &mut self,
        activity: &Activity,
        policy: &Policy,
        last_exchange_day: Option<i64>,
    ) -> Option<i64> {
        self.add_recording(activity, policy, last_exchange_day, &mut Vec::new())
    }

    /// [`ScoreState::add`], appending the tier changes it causes (midnight
    /// demotions since the previous activity, then a promotion) to `changes`.
    pub fn add_recording(
        &mut self,
        activity: &Activity,
        policy: &Policy,
        last_exchange_day: Option<i64>,
        changes: &mut Vec<TierChange>,
    ) -> Option<i64> {
        let t = activity.at.as_micros();
        self.interactions += 1;
        self.kinds |= activity.value_bit();
        let latest = match self.at {
            // The newest so far: time moves on to it (midnight checks, decay).
            Some(latest) if t > latest => {
                self.advance_tier(policy, t, changes);
                let d = decay(policy, latest, t);
                self.engagement *= d;
                self.advocacy *= d;
                self.at = Some(t);
                t
            }
            Some(latest) => latest,
            None => {
                self.tier_day = day_of(t);
                self.at = Some(t);
                t
            }
        };
        // An older interaction (recorded late) counts as already decayed.
        let d = decay(policy, t, latest);
        self.engagement += activity.value(policy) * d;
        if activity.is_advocacy() {
            self.advocacy += activity.incentive(policy) * d;
        }

        let day = day_of(t);
        let first_week = week_of(latest) - (CONSISTENCY_WEEKS - 1);
        let first_day = day_of(latest) - (WINDOW_DAYS - 1);
        let mut remember = None;
        // Marks older than every window from `latest` on are never seen.
        if activity.organic() {
            self.organic = true;
            if week_of(t) >= first_week {
                let mark = if activity.kind == InteractionKind::Reaction {
                    1
                } else {
                    2
                };
                let week = self.weeks.entry(week_of(t)).or_insert(0);
                *week = (*week).max(mark);
            }
            if day >= first_day {
                let channel = self.channels.entry(activity.channel.clone()).or_insert(day);
                *channel = (*channel).max(day);
                if activity.is_exchange() && last_exchange_day.is_none_or(|last| last < day) {
                    if let Some(previous) = last_exchange_day
                        && let Some(n) = self.exchange_days.get_mut(&previous)
                    {
                        *n -= 1;
                        if *n == 0 {
                            self.exchange_days.remove(&previous);
                        }
                    }
                    *self.exchange_days.entry(day).or_insert(0) += 1;
                    remember = Some(day);
                }
            }
        }
        if t == latest {
            // Forget what no window at or after `latest` can see. The maps
            // keyed by time drop their oldest keys only when there are
            // some: a `retain` would visit every key at every interaction.
            forget_before(&mut self.weeks, first_week);
            forget_before(&mut self.exchange_days, first_day);
            if self.channels.values().any(|d| *d < first_day) {
                self.channels.retain(|_, d| *d >= first_day);
            }
        }

        // Promotion is immediate: checked as soon as the interaction counts,
        // at the latest time the state has reached.
        let score = self.evaluate(policy, Timestamp::from_micros(latest));
        let tier = next_tier(policy, self.tier, score.value);
        if tier != self.tier {
            changes.push(TierChange {
                at: Timestamp::from_micros(latest),
                position: activity.position,
                from: self.tier,
                to: tier,
            });
            self.tier = tier;
        }
        remember
    }

    /// Runs the midnight demotion checks of every day after `tier_day` up to
    /// the one containing `until`.
    ///
    /// Between interactions a score never rises (a property the tests
    /// hold), so the tier a check gives from the held one only falls: the
    /// first midnight that changes it is found by bisection, with the same
    /// result as checking each day in turn (a test compares the two), in a
    /// few evaluations instead of one per day. Folds spent most of their
    /// time in these checks for members quiet for weeks.
    fn advance_tier(&mut self, policy: &Policy, until: i64, changes: &mut Vec<TierChange>) {
        let last = day_of(until);
        let tier_on = |state: &Self, day: i64| {
            let score = state.evaluate(policy, Timestamp::from_micros(day * DAY_MICROS));
            next_tier(policy, state.tier, score.value)
        };
        while self.tier_day < last {
            if self.tier == Tier::Observer || tier_on(self, last) == self.tier {
                // Nothing to lose, or kept through the last check.
                self.tier_day = last;
                break;
            }
            // The first day in (tier_day, last] whose check changes the tier.
            let (mut lo, mut hi) = (self.tier_day + 1, last);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if tier_on(self, mid) == self.tier {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let tier = tier_on(self, lo);
            changes.push(TierChange {
                at: Timestamp::from_micros(lo * DAY_MICROS),
                position: 0,
                from: self.tier,
                to: tier,
            });
            self.tier = tier;
            self.tier_day = lo;
        }
    }

    /// The score at `as_of`, which should not be earlier than the latest
    /// activity (an earlier time is treated as that activity's time).
    pub fn evaluate(&self, policy: &Policy, as_of: Timestamp) -> Score {
        let Some(at) = self.at else {
            return Score::default();
        };
        let t = as_of.as_micros().max(at);
        let d = decay(policy, at, t);
        let week = week_of(t);
        let consistency = self
            .weeks
            .range(week - (CONSISTENCY_WEEKS - 1)..=week)
            .map(|(_, mark)| if *mark == 2 { 1.0 } else { 0.5 })
            // A fold from +0.0: `sum` of nothing is -0.0.
            .fold(0.0, |sum, v| sum + v)
            / CONSISTENCY_WEEKS as f64;
        let day = day_of(t);
        let first_day = day - (WINDOW_DAYS - 1);
        let exchanged: u32 = self
            .exchange_days
            .range(first_day..=day)
            .map(|(_, n)| n)
            .sum();
        let channels = self.channels.values().filter(|d| **d >= first_day).count();
        let components = Components {
            engagement: 1.0 - (-self.engagement * d / ENGAGEMENT_SCALE).exp(),
            consistency,
            exchange: 1.0 - (-(exchanged as f64) / EXCHANGE_SCALE).exp(),
            advocacy: 1.0 - (-self.advocacy * d / ADVOCACY_SCALE).exp(),
            breadth: if channels == 0 {
                0.0
            } else {
                1.0 - 0.5f64.powi(channels as i32 - 1)
            },
        };
        let w = &policy.component_weights;
        let raw = 100.0
            * (w.engagement * components.engagement
                + w.consistency * components.consistency
                + w.exchange * components.exchange
                + w.advocacy * components.advocacy
                + w.breadth * components.breadth);
        let cap = policy.thresholds.participant - NO_ORGANIC_CAP_BELOW;
        let capped = !self.organic;
        Score {
            value: if capped { raw.min(cap) } else { raw }.clamp(0.0, 100.0),
            components,
            capped,
        }
    }

    /// The score and tier at `as_of` (not earlier than the latest activity),
    /// without changing the state. The tier is the one after the last check
    /// at or before `as_of` (an interaction or a midnight), so that the
    /// tier history is the same whenever it is read.
    pub fn at_time(&self, policy: &Policy, as_of: Timestamp) -> (Score, Tier) {
        let mut state = self.clone();
        if state.at.is_some() {
            state.advance_tier(policy, as_of.as_micros(), &mut Vec::new());
        }
        (state.evaluate(policy, as_of), state.tier)
    }

    /// The demotions between the latest activity and `as_of`: the part of
    /// the tier history that time alone writes.
    pub fn changes_until(&self, policy: &Policy, as_of: Timestamp) -> Vec<TierChange> {
        let mut changes = Vec::new();
        if self.at.is_some() {
            let mut state = self.clone();
            state.advance_tier(policy, as_of.as_micros(), &mut changes);
        }
        changes
    }
}

/// Folds `activities` (any order) into a state, in the canonical order: log
/// position, the order the projection folds them in as they are recorded. Also returns, per other member, the last
/// day of exchange, which the scores projection stores beside the state.
pub fn fold<'a>(
    activities: impl IntoIterator<Item = &'a Activity>,
    policy: &Policy,
) -> (ScoreState, HashMap<String, i64>) {
    let (state, last_exchange, _) = fold_recording(activities, policy);
    (state, last_exchange)
}

/// [`fold`], with the tier changes up to the latest activity, oldest first.
pub fn fold_recording<'a>(
    activities: impl IntoIterator<Item = &'a Activity>,
    policy: &Policy,
) -> (ScoreState, HashMap<String, i64>, Vec<TierChange>) {
    let folded = fold_with(activities, policy, false);
    (folded.state, folded.last_exchange, folded.changes)
}

/// Everything a fold of a member's activities gives.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    pub state: ScoreState,
    /// Per other member, the last day of exchange.
    pub last_exchange: HashMap<String, i64>,
    /// Tier changes up to the latest activity, oldest first.
    pub changes: Vec<TierChange>,
    /// The state as it stood at the end of each day the latest time left
    /// (see [`ScoreState::crosses_day`]), keeping only those momentum can
    /// still ask for ([`momentum_snapshots_to_keep`]).
    pub snapshots: BTreeMap<i64, ScoreState>,
}

/// The snapshots momentum may still need once the latest time is in
/// `latest_day`: the newest one not after `latest_day - MOMENTUM_DAYS`, and
/// every later one.
pub fn momentum_snapshots_to_keep(snapshots: &BTreeMap<i64, ScoreState>, latest_day: i64) -> i64 {
    snapshots
        .range(..=latest_day - MOMENTUM_DAYS)
        .next_back()
        .map_or(i64::MIN, |(day, _)| *day)
}

/// The fold of [`fold`], with its tier changes and momentum snapshots.
pub fn fold_all<'a>(activities: impl IntoIterator<Item = &'a Activity>, policy: &Policy) -> Folded {
    fold_with(activities, policy, true)
}

/// [`fold_all`]; without `snapshots`, none are taken (`Folded::snapshots`
/// is empty).
pub fn fold_with<'a>(
    activities: impl IntoIterator<Item = &'a Activity>,
    policy: &Policy,
    snapshots: bool,
) -> Folded {
    let mut sorted: Vec<&Activity> = activities.into_iter().collect();
    sorted.sort_by_key(|a| a.position);
    // A snapshot is a clone of the whole state, taken at every day the
    // latest time leaves; only the last ones survive the pruning below.
    // The days are known from the times alone, so only those are taken.
    let keep_from = if snapshots {
        snapshot_days_kept(&sorted)
    } else {
        i64::MAX
    };
    let mut out = Folded::default();
    for a in sorted {
        if let Some(day) = out.state.crosses_day(a)
            && day >= keep_from
        {
            out.snapshots.insert(day, out.state.clone());
        }
        let previous = a
            .other_member
            .as_ref()
            .and_then(|o| out.last_exchange.get(o).copied());
        if let Some(day) = out
            .state
            .add_recording(a, policy, previous, &mut out.changes)
        {
            let other = a
                .other_member
                .clone()
                .expect("an exchange has another member");
            out.last_exchange.insert(other, day);
        }
    }
    if let Some(latest) = out.state.at {
        let keep_from = momentum_snapshots_to_keep(&out.snapshots, day_of(latest));
        out.snapshots.retain(|day, _| *day >= keep_from);
    }
    out
}

/// The first snapshot day [`fold_all`] keeps for these activities (in log
/// order): the days [`ScoreState::crosses_day`] gives follow the running
/// latest time, so they are known before folding; the result is what
/// [`momentum_snapshots_to_keep`] picks from all of them.
fn snapshot_days_kept(sorted: &[&Activity]) -> i64 {
    let Some(latest) = sorted.iter().map(|a| a.at.as_micros()).max() else {
        return i64::MIN;
    };
    let cutoff = day_of(latest) - MOMENTUM_DAYS;
    let mut keep_from = i64::MIN;
    let mut running: Option<i64> = None;
    for a in sorted {
        let t = a.at.as_micros();
        if let Some(r) = running
            && t > r
            && day_of(t) > day_of(r)
            && day_of(r) <= cutoff
        {
            keep_from = day_of(r);
        }
        running = Some(running.map_or(t, |r| r.max(t)));
    }
    keep_from
}

/// A member's whole tier history up to `as_of`, oldest first: what the
/// timeline shows as "became advocate".
pub fn tier_history(activities: &[Activity], policy: &Policy, as_of: Timestamp) -> Vec<TierChange> {
    let counted = activities.iter().filter(|a| a.at <= as_of);
    let (state, _, mut changes) = fold_recording(counted, policy);
    changes.extend(state.changes_until(policy, as_of));
    changes
}

/// One interaction's part in a score, for the explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub position: u64,
    pub kind: InteractionKind,
    pub channel: String,
    pub at: Timestamp,
    /// Its value after decay, as of the assessment.
    pub decayed_value: f64,
    /// Its share of the engagement component's points.
    pub points: f64,
}

/// A member's score at one time, explained.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub as_of: Timestamp,
    pub score: Score,
    pub tier: Tier,
    /// The interactions that contributed most, largest first.
    pub top: Vec<Contribution>,
    /// Interactions counted (those at or before `as_of`).
    pub counted: usize,
}

/// The advocate score of a member with these interactions, under `policy`,
/// as of `as_of`: only interactions at or before `as_of` count. Explains
/// itself with the `top_n` interactions that contributed most.
pub fn assess(
    activities: &[Activity],
    policy: &Policy,
    as_of: Timestamp,
    top_n: usize,
) -> Assessment {
    let mut counted: Vec<&Activity> = activities.iter().filter(|a| a.at <= as_of).collect();
    // The canonical order (log position), so that every sum below is the
    // same to the last bit whatever order the caller passed.
    counted.sort_by_key(|a| a.position);
    let (state, _) = fold(counted.iter().copied(), policy);
    let (score, tier) = if state.at.is_some() {
        state.at_time(policy, as_of)
    } else {
        (Score::default(), Tier::Observer)
    };
    if top_n == 0 {
        return Assessment {
            as_of,
            score,
            tier,
            top: Vec::new(),
            counted: counted.len(),
        };
    }
    let total: f64 = counted
        .iter()
        .map(|a| a.value(policy) * decay(policy, a.at.as_micros(), as_of.as_micros()))
        .sum();
    let engagement_points =
        100.0 * policy.component_weights.engagement * score.components.engagement;
    let mut top: Vec<Contribution> = counted
        .iter()
        .map(|a| {
            let decayed_value =
                a.value(policy) * decay(policy, a.at.as_micros(), as_of.as_micros());
            Contribution {
                position: a.position,
                kind: a.kind,
                channel: a.channel.clone(),
                at: a.at,
                decayed_value,
                points: if total > 0.0 {
                    engagement_points * decayed_value / total
                } else {
                    0.0
                },
            }
        })
        .filter(|c| c.decayed_value > 0.0)
        .collect();
    top.sort_by(|a, b| {
        b.decayed_value
            .total_cmp(&a.decayed_value)
            .then(b.position.cmp(&a.position))
    });
    top.truncate(top_n);
    Assessment {
        as_of,
        score,
        tier,
        top,
        counted: counted.len(),
    }
}

/// The moment momentum compares with: the end of the UTC day
/// [`MOMENTUM_DAYS`] days before `as_of`'s day.
pub fn momentum_base(as_of: Timestamp) -> Timestamp {
    Timestamp::from_micros((day_of(as_of.as_micros()) - MOMENTUM_DAYS + 1) * DAY_MICROS - 1)
}

/// Score at `as_of` minus the score the member had at [`momentum_base`], as
/// it stood then: the state just before the first interaction later than
/// that day was folded in. Rising above zero, falling below.
///
/// "As it stood then", not a replay of everything that happened by then:
/// an interaction of that day recorded only later does not change what the
/// member's score was 30 days ago. This is what a manager saw, and what the
/// scores projection can keep (one snapshot per member and day crossed).
pub fn momentum(activities: &[Activity], policy: &Policy, as_of: Timestamp) -> f64 {
    let base = momentum_base(as_of);
    let mut counted: Vec<&Activity> = activities.iter().filter(|a| a.at <= as_of).collect();
    counted.sort_by_key(|a| a.position);
    let last_day = day_of(base.as_micros());
    let mut state = ScoreState::default();
    let mut then: Option<ScoreState> = None;
    let mut last_exchange: HashMap<&str, i64> = HashMap::new();
    for a in &counted {
        if then.is_none()
            && day_of(a.at.as_micros()) > last_day
            && state.at.is_none_or(|m| a.at.as_micros() > m)
        {
            then = Some(state.clone());
        }
        let previous = a
            .other_member
            .as_deref()
            .and_then(|o| last_exchange.get(o).copied());
        if let Some(day) = state.add(a, policy, previous) {
            last_exchange.insert(a.other_member.as_deref().expect("an exchange"), day);
        }
    }
    let then = then.unwrap_or_else(|| state.clone());
    state.evaluate(policy, as_of).value - then.evaluate(policy, base).value
}

impl ScoreState {
    /// The most any one activity folded into this state is worth undecayed
    /// under `policy` (weights and incentives are at most their undecayed
    /// value); `None` when the state does not know its kinds.
    pub fn max_value(&self, policy: &Policy) -> Option<f64> {
        if self.kinds == 0 {
            return None;
        }
        let mut max: f64 = 0.0;
        if self.kinds & 1 != 0 {
            max = max.max(policy.positive_mention_weight);
        }
        for (kind, weight) in &policy.kind_weights {
            if self.kinds & (1 << (kind.as_i32() as u32 % 32)) != 0 {
                max = max.max(*weight);
            }
        }
        Some(max * policy.incentive_factor.max(1.0))
    }

    /// Whether folding `activity` moves the state's latest time into a later
    /// UTC day: the moment the scores projection keeps a snapshot of the
    /// state as it stood (see [`momentum`]).
    pub fn crosses_day(&self, activity: &Activity) -> Option<i64> {
        let latest = self.at?;
        let t = activity.at.as_micros();
        (t > latest && day_of(t) > day_of(latest)).then_some(day_of(latest))
    }
}

/// A leaderboard page token: where the next page starts and the time the
/// ranking is exact for, so that every page ranks for the same moment.
/// Bound to its request and checksummed like the timeline's
/// [`crate::timeline::PageToken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankToken {
    pub as_of: Timestamp,
    pub offset: u64,
}

const RANK_TOKEN_VERSION: u8 = 2;
const RANK_TOKEN_LEN: usize = 1 + 8 + 8 + 8 + 8;

impl RankToken {
    pub fn encode(&self, request: &[u8; 8]) -> String {
        use crate::timeline::{checksum, hex};
        let mut bytes = Vec::with_capacity(RANK_TOKEN_LEN);
        bytes.push(RANK_TOKEN_VERSION);
        bytes.extend_from_slice(&self.as_of.as_micros().to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        bytes.extend_from_slice(request);
        let check = checksum(&bytes);
        bytes.extend_from_slice(&check);
        hex(&bytes)
    }

    pub fn decode(
        token: &str,
        request: &[u8; 8],
    ) -> Result<RankToken, crate::timeline::PageTokenError> {
        use crate::timeline::{PageTokenError, checksum, unhex};
        let bytes = unhex(token).ok_or(PageTokenError::Malformed)?;
        if bytes.len() != RANK_TOKEN_LEN || bytes[0] != RANK_TOKEN_VERSION {
            return Err(PageTokenError::Malformed);
        }
        let (body, check) = bytes.split_at(RANK_TOKEN_LEN - 8);
        if checksum(body) != check {
            return Err(PageTokenError::Malformed);
        }
        if &body[17..25] != request {
            return Err(PageTokenError::OtherRequest);
        }
        Ok(RankToken {
            as_of: Timestamp::from_micros(i64::from_be_bytes(
                body[1..9].try_into().expect("8 bytes"),
            )),
            offset: u64::from_be_bytes(body[9..17].try_into().expect("8 bytes")),
        })
    }
}

#[cfg(test)]
mod tests;
