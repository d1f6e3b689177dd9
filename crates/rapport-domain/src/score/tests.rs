use proptest::prelude::*;

use super::*;

const DAY: i64 = 86_400;
/// 2026-06-01T00:00:00Z, a Monday.
const AS_OF: i64 = 1_780_272_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(seconds * 1_000_000)
}

fn activity(position: u64, seconds: i64, kind: InteractionKind, channel: &str) -> Activity {
    Activity {
        position,
        at: at(seconds),
        kind,
        channel: channel.to_owned(),
        incentivized: false,
        positive: false,
        other_member: None,
    }
}

/// The members of the design note's sanity table, built as in
/// `docs/scoring.md` (the doc test there checks the same figures).
pub(crate) mod examples {
    use super::*;

    pub fn contest_liker(as_of: i64) -> Vec<Activity> {
        let mut like = activity(1, as_of - 10 * DAY, InteractionKind::Reaction, "instagram");
        like.incentivized = true;
        vec![like]
    }

    /// A reaction on the brand page every week for 26 weeks, the last one
    /// a day before `as_of`.
    pub fn weekly_liker(as_of: i64) -> Vec<Activity> {
        (0..26)
            .map(|k| {
                activity(
                    k as u64 + 1,
                    as_of - DAY - (25 - k) * 7 * DAY,
                    InteractionKind::Reaction,
                    "facebook",
                )
            })
            .collect()
    }

    /// Every week for 26 weeks (the last ending `last` seconds): a reply and
    /// an answer to two other members on the forum (26 people in all), and
    /// one tutorial eight weeks before the end.
    pub fn weekly_helper(last: i64) -> Vec<Activity> {
        let mut out = Vec::new();
        for k in 0..26 {
            let week_start = last - DAY - (25 - k) * 7 * DAY;
            let mut reply = activity(0, week_start, InteractionKind::Reply, "forum");
            reply.other_member = Some(format!("member-{}", k % 13));
            let mut answer = activity(0, week_start + DAY, InteractionKind::Answer, "forum");
            answer.other_member = Some(format!("member-{}", 13 + k % 13));
            out.push(reply);
            out.push(answer);
        }
        out.push(activity(
            0,
            last - 8 * 7 * DAY,
            InteractionKind::ContentCreated,
            "forum",
        ));
        for (i, a) in out.iter_mut().enumerate() {
            a.position = i as u64 + 1;
        }
        out
    }
}

fn check(activities: &[Activity], as_of: i64) -> (f64, Tier) {
    let a = assess(activities, &Policy::default(), at(as_of), 5);
    (a.score.value, a.tier)
}

#[test]
fn sanity_examples_of_the_design_note() {
    // (member, activities, as of, expected score range, expected tier)
    let cases = [
        (
            "contest liker",
            examples::contest_liker(AS_OF),
            AS_OF,
            0.0..1.0,
            &[Tier::Observer][..],
        ),
        (
            "weekly liker",
            examples::weekly_liker(AS_OF),
            AS_OF,
            17.0..24.0,
            &[Tier::Participant][..],
        ),
        (
            "weekly helper",
            examples::weekly_helper(AS_OF),
            AS_OF,
            80.0..90.0,
            &[Tier::Champion][..],
        ),
        (
            "lapsed champion, a year later",
            examples::weekly_helper(AS_OF - 365 * DAY),
            AS_OF,
            0.0..30.0,
            &[Tier::Observer, Tier::Participant][..],
        ),
    ];
    for (name, activities, as_of, range, tiers) in cases {
        let (score, tier) = check(&activities, as_of);
        assert!(
            range.contains(&score),
            "{name}: score {score} not in {range:?}"
        );
        assert!(
            tiers.contains(&tier),
            "{name}: tier {tier:?} not in {tiers:?}"
        );
    }
}

#[test]
fn a_lapsed_champion_was_a_champion_then() {
    let helper = examples::weekly_helper(AS_OF - 365 * DAY);
    assert_eq!(check(&helper, AS_OF - 365 * DAY).1, Tier::Champion);
}

#[test]
fn incentivized_only_members_never_leave_the_lowest_tier() {
    let mut heavy = examples::weekly_helper(AS_OF);
    for a in &mut heavy {
        a.incentivized = true;
    }
    let a = assess(&heavy, &Policy::default(), at(AS_OF), 0);
    assert!(a.score.capped);
    assert!(a.score.value < Policy::default().thresholds.participant);
    assert_eq!(a.tier, Tier::Observer);
}

#[test]
fn components_contribute_the_score() {
    let policy = Policy::default();
    let a = assess(&examples::weekly_helper(AS_OF), &policy, at(AS_OF), 3);
    let sum: f64 = a.score.contributions(&policy).iter().map(|c| c.2).sum();
    assert!((sum - a.score.value).abs() < 1e-9);
    // The tutorial (10 points of value, fairly recent) explains the most.
    assert_eq!(a.top[0].kind, InteractionKind::ContentCreated);
    assert_eq!(a.top.len(), 3);
}

#[test]
fn demotion_waits_for_the_margin_and_promotion_does_not() {
    let policy = Policy::default();
    let t = &policy.thresholds;
    assert_eq!(
        next_tier(&policy, Tier::Participant, t.advocate),
        Tier::Advocate
    );
    assert_eq!(
        next_tier(&policy, Tier::Advocate, t.advocate - 4.9),
        Tier::Advocate
    );
    assert_eq!(
        next_tier(&policy, Tier::Advocate, t.advocate - 5.1),
        Tier::Contributor
    );
    assert_eq!(next_tier(&policy, Tier::Champion, 12.0), Tier::Participant);
    assert_eq!(next_tier(&policy, Tier::Champion, 1.0), Tier::Observer);
}

#[test]
fn a_silent_champion_steps_down_at_midnights() {
    let policy = Policy::default();
    let helper = examples::weekly_helper(AS_OF);
    let history = tier_history(&helper, &policy, at(AS_OF + 400 * DAY));
    let promotions: Vec<Tier> = history
        .iter()
        .filter(|c| c.to > c.from)
        .map(|c| c.to)
        .collect();
    assert_eq!(
        promotions,
        [
            Tier::Participant,
            Tier::Contributor,
            Tier::Advocate,
            Tier::Champion
        ]
    );
    let demotions: Vec<&TierChange> = history.iter().filter(|c| c.to < c.from).collect();
    assert!(!demotions.is_empty());
    for d in demotions {
        assert_eq!(d.position, 0);
        assert_eq!(d.at.as_micros() % (DAY * 1_000_000), 0, "at a midnight");
        assert!(d.at > at(AS_OF));
    }
}

#[test]
fn a_silent_champion_steps_down_day_by_day_not_at_once() {
    let policy = Policy::default();
    let helper = examples::weekly_helper(AS_OF);
    let tiers: Vec<Tier> = (0..400)
        .step_by(10)
        .map(|d| assess(&helper, &policy, at(AS_OF + d * DAY), 0).tier)
        .collect();
    assert_eq!(tiers[0], Tier::Champion);
    assert!(tiers.windows(2).all(|w| w[1] <= w[0]), "{tiers:?}");
    assert!(tiers.contains(&Tier::Advocate) && tiers.contains(&Tier::Contributor));
}

#[test]
fn momentum_is_positive_while_joining_and_negative_while_leaving() {
    let policy = Policy::default();
    let helper = examples::weekly_helper(AS_OF);
    assert!(momentum(&helper, &policy, at(AS_OF)) > 0.0);
    assert!(momentum(&helper, &policy, at(AS_OF + 90 * DAY)) < 0.0);
}

#[test]
fn rank_tokens_round_trip_and_refuse_tampering() {
    let token = RankToken {
        as_of: at(AS_OF),
        offset: 150,
    };
    let request = [7u8; 8];
    let text = token.encode(&request);
    assert_eq!(RankToken::decode(&text, &request), Ok(token));
    assert!(
        RankToken::decode(&text, &[8u8; 8]).is_err(),
        "another request"
    );
    let mut bytes = text.into_bytes();
    bytes[20] = if bytes[20] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert!(RankToken::decode(&tampered, &request).is_err());
    assert!(RankToken::decode("zz", &request).is_err());
}

fn arb_activities() -> impl Strategy<Value = Vec<Activity>> {
    let one = (
        0i64..400,
        0usize..14,
        any::<bool>(),
        0usize..3,
        proptest::option::of(0u8..8),
        any::<bool>(),
        0i64..DAY,
    );
    proptest::collection::vec(one, 0..60).prop_map(|items| {
        items
            .into_iter()
            .enumerate()
            .map(
                |(i, (day, kind, incentivized, channel, other, positive, second))| Activity {
                    position: i as u64 + 1,
                    at: at(AS_OF - 400 * DAY + day * DAY + second),
                    kind: InteractionKind::ALL[kind],
                    channel: ["forum", "discord", "github"][channel].to_owned(),
                    incentivized,
                    positive,
                    other_member: other.map(|o| format!("m{o}")),
                },
            )
            .collect()
    })
}

proptest! {
    /// What lets an explanation stop early: no activity of a member is worth
    /// more than its state's `max_value`, and it is one of them.
    #[test]
    fn a_states_max_value_bounds_each_of_its_activities(activities in arb_activities()) {
        let policy = Policy { incentive_factor: 0.3, ..Policy::default() };
        let state = fold_all(&activities, &policy).state;
        match state.max_value(&policy) {
            None => prop_assert!(activities.is_empty()),
            Some(max) => {
                for a in &activities {
                    prop_assert!(a.value(&policy) <= max + 1e-12, "{a:?} above {max}");
                }
                prop_assert!(activities.iter().any(|a| (a.value(&policy) - max).abs() < 1e-12
                    || (a.incentivized && (a.value(&policy) / policy.incentive_factor - max).abs() < 1e-9)));
            }
        }
    }

    #[test]
    fn adding_an_organic_interaction_never_lowers_the_score(
        activities in arb_activities(),
        extra in arb_activities().prop_filter("one", |v| !v.is_empty()),
    ) {
        let policy = Policy::default();
        let before = assess(&activities, &policy, at(AS_OF), 0).score.value;
        let mut more = activities.clone();
        let mut added = extra[0].clone();
        added.incentivized = false;
        added.position = 10_000;
        more.push(added);
        let after = assess(&more, &policy, at(AS_OF), 0).score.value;
        prop_assert!(after >= before - 1e-9, "{before} -> {after}");
    }

    /// The bisection of `advance_tier` gives what checking every midnight
    /// in turn gives (the model's definition).
    #[test]
    fn midnight_checks_by_bisection_equal_checking_each_day(
        activities in arb_activities(),
        days in 0i64..400,
        half_life in 5.0f64..120.0,
        margin in 0.0f64..10.0,
    ) {
        let policy = Policy { half_life_days: half_life, demotion_margin: margin, ..Policy::default() };
        let state = fold_all(&activities, &policy).state;
        prop_assume!(state.at.is_some());
        let until = state.at.unwrap() + days * DAY_MICROS + 1;
        let mut fast = state.clone();
        let mut fast_changes = Vec::new();
        fast.advance_tier(&policy, until, &mut fast_changes);
        let mut slow = state;
        let mut slow_changes = Vec::new();
        while slow.tier_day < day_of(until) {
            slow.tier_day += 1;
            let midnight = Timestamp::from_micros(slow.tier_day * DAY_MICROS);
            let tier = next_tier(&policy, slow.tier, slow.evaluate(&policy, midnight).value);
            if tier != slow.tier {
                slow_changes.push(TierChange { at: midnight, position: 0, from: slow.tier, to: tier });
                slow.tier = tier;
            }
        }
        prop_assert_eq!(fast_changes, slow_changes);
        prop_assert_eq!(fast.tier, slow.tier);
        prop_assert_eq!(fast.tier_day, slow.tier_day);
    }

    #[test]
    fn with_nothing_new_the_score_never_rises(activities in arb_activities(), days in 0i64..500) {
        let policy = Policy::default();
        let now = assess(&activities, &policy, at(AS_OF), 0).score.value;
        let later = assess(&activities, &policy, at(AS_OF + days * DAY + 1234), 0).score.value;
        prop_assert!(later <= now + 1e-9, "{now} -> {later}");
    }

    #[test]
    fn the_order_of_the_input_does_not_matter(activities in arb_activities()) {
        let policy = Policy::default();
        let mut reversed = activities.clone();
        reversed.reverse();
        prop_assert_eq!(
            assess(&activities, &policy, at(AS_OF), 5),
            assess(&reversed, &policy, at(AS_OF), 5)
        );
    }

    #[test]
    fn folding_one_by_one_equals_replaying(activities in arb_activities(), days in 0i64..100) {
        // The projection's path: add each interaction as it is recorded
        // (log order, times out of order), remember exchanges per pair,
        // evaluate later.
        let policy = Policy::default();
        let mut state = ScoreState::default();
        let mut pairs = HashMap::new();
        for a in &activities {
            let previous = a.other_member.as_ref().and_then(|o| pairs.get(o).copied());
            if let Some(day) = state.add(a, &policy, previous) {
                pairs.insert(a.other_member.clone().unwrap(), day);
            }
        }
        let as_of = at(AS_OF + days * DAY);
        let replayed = assess(&activities, &policy, as_of, 0);
        let (score, tier) = if state.at.is_some() { state.at_time(&policy, as_of) } else { (Score::default(), Tier::Observer) };
        prop_assert_eq!(score, replayed.score);
        prop_assert_eq!(tier, replayed.tier);
    }

    #[test]
    fn a_merged_member_scores_at_least_each_part(a in arb_activities(), b in arb_activities()) {
        let policy = Policy::default();
        let union: Vec<Activity> = a.iter().cloned().chain(b.iter().cloned().map(|mut x| { x.position += 1_000; x })).collect();
        let u = assess(&union, &policy, at(AS_OF), 0).score.value;
        prop_assert!(u >= assess(&a, &policy, at(AS_OF), 0).score.value - 1e-9);
        prop_assert!(u >= assess(&b, &policy, at(AS_OF), 0).score.value - 1e-9);
    }

    #[test]
    fn the_tier_stays_within_the_margin_of_the_score(activities in arb_activities(), days in 0i64..300) {
        let policy = Policy::default();
        let a = assess(&activities, &policy, at(AS_OF + days * DAY), 0);
        let t = &policy.thresholds;
        prop_assert!(a.tier >= t.tier_of(a.score.value));
        prop_assert!(a.tier <= t.tier_of(a.score.value + policy.demotion_margin));
        if activities.iter().all(|x| x.incentivized) {
            prop_assert_eq!(a.tier, Tier::Observer);
        }
    }

    #[test]
    fn the_tier_history_is_a_chain_ending_at_the_tier(activities in arb_activities(), days in 0i64..300) {
        let policy = Policy::default();
        let as_of = at(AS_OF + days * DAY);
        let history = tier_history(&activities, &policy, as_of);
        let mut tier = Tier::Observer;
        for change in &history {
            prop_assert_eq!(change.from, tier);
            prop_assert_ne!(change.to, change.from);
            if change.to > change.from {
                // Promotions are immediate: at the interaction that earned
                // them, as soon as it counts.
                let earned_by = activities.iter().find(|a| a.position == change.position);
                prop_assert!(earned_by.is_some_and(|a| a.at <= change.at));
            }
            tier = change.to;
        }
        prop_assert_eq!(tier, assess(&activities, &policy, as_of, 0).tier);
    }

    #[test]
    fn momentum_from_day_snapshots_equals_the_replay(activities in arb_activities(), days in 0i64..120) {
        // The projection's path: a snapshot of the state each time its
        // latest time crosses into a later day; momentum from the newest
        // snapshot not after the base day.
        let policy = Policy::default();
        let mut state = ScoreState::default();
        let mut pairs = HashMap::new();
        let mut snapshots = std::collections::BTreeMap::new();
        for a in &activities {
            if let Some(day) = state.crosses_day(a) {
                snapshots.insert(day, state.clone());
            }
            let previous = a.other_member.as_ref().and_then(|o| pairs.get(o).copied());
            if let Some(day) = state.add(a, &policy, previous) {
                pairs.insert(a.other_member.clone().unwrap(), day);
            }
        }
        let as_of = at(AS_OF + days * DAY + 777);
        let base = momentum_base(as_of);
        let base_day = day_of(base.as_micros());
        let then = if state.at.is_none_or(|m| day_of(m) <= base_day) {
            state.clone()
        } else {
            snapshots.range(..=base_day).next_back().map(|(_, s)| s.clone()).unwrap_or_default()
        };
        let fast = state.evaluate(&policy, as_of).value - then.evaluate(&policy, base).value;
        prop_assert_eq!(fast, momentum(&activities, &policy, as_of));
    }

    #[test]
    fn a_fold_takes_exactly_the_snapshots_momentum_keeps(activities in arb_activities()) {
        // Every snapshot taken, then pruned: what `fold_all` keeps, taking
        // only those.
        let policy = Policy::default();
        let mut sorted: Vec<&Activity> = activities.iter().collect();
        sorted.sort_by_key(|a| a.position);
        let mut state = ScoreState::default();
        let mut pairs = HashMap::new();
        let mut every = std::collections::BTreeMap::new();
        for a in sorted {
            if let Some(day) = state.crosses_day(a) {
                every.insert(day, state.clone());
            }
            let previous = a.other_member.as_ref().and_then(|o| pairs.get(o).copied());
            if let Some(day) = state.add(a, &policy, previous) {
                pairs.insert(a.other_member.clone().unwrap(), day);
            }
        }
        if let Some(latest) = state.at {
            let keep_from = momentum_snapshots_to_keep(&every, day_of(latest));
            every.retain(|day, _| *day >= keep_from);
        }
        let folded = fold_all(&activities, &policy);
        prop_assert_eq!(&folded.state, &state);
        prop_assert_eq!(folded.snapshots, every);
        prop_assert!(fold_with(&activities, &policy, false).snapshots.is_empty());
    }

    #[test]
    fn scores_stay_between_0_and_100(activities in arb_activities()) {
        let s = assess(&activities, &Policy::default(), at(AS_OF), 0).score;
        prop_assert!((0.0..=100.0).contains(&s.value));
    }
}

/// The worked examples of `docs/scoring.md`: each row of its table is
/// recomputed here, so the document cannot drift from the code.
#[test]
fn the_worked_examples_of_the_scoring_doc_match_the_code() {
    let doc = include_str!("../../../../docs/scoring.md");
    let table = doc
        .split("<!-- worked-examples -->")
        .nth(1)
        .expect("docs/scoring.md marks its worked examples");
    let policy = Policy::default();
    let mut checked = 0;
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| member"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (name, figures) = (cells[1], &cells[2..cells.len() - 1]);
        let (activities, as_of) = match name {
            "contest liker" => (examples::contest_liker(AS_OF), AS_OF),
            "weekly liker" => (examples::weekly_liker(AS_OF), AS_OF),
            "weekly helper" => (examples::weekly_helper(AS_OF), AS_OF),
            "lapsed champion" => (examples::weekly_helper(AS_OF - 365 * DAY), AS_OF),
            other => panic!("unknown worked example {other:?}"),
        };
        let a = assess(&activities, &policy, at(as_of), 0);
        let c = a.score.contributions(&policy);
        let computed = [
            format!("{:.2}", c[0].2),
            format!("{:.2}", c[1].2),
            format!("{:.2}", c[2].2),
            format!("{:.2}", c[3].2),
            format!("{:.2}", c[4].2),
            format!("**{:.2}**", a.score.value),
            a.tier.name().to_owned(),
            format!("{:+.2}", momentum(&activities, &policy, at(as_of))),
        ];
        assert_eq!(figures, computed, "worked example {name:?}");
        checked += 1;
    }
    assert_eq!(checked, 4, "every worked example is checked");
}
