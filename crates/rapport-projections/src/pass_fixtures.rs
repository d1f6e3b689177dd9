//! Test fixtures shared by the whole-community passes' tests
//! (`sqlite_pass`, `pg_pass`): a community and the rows its folds give.

use std::collections::{BTreeMap, BTreeSet};

use rapport_domain::InteractionKind;
use rapport_domain::policy::Policy;
use rapport_domain::score::Activity;

use crate::scores::FoldRows;

const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_750_000_000_000_000;

/// Enough members for several chunks and a partial last one, each with
/// a few activities across channels and kinds, some aimed at others.
pub(crate) fn community(members: usize) -> BTreeMap<String, Vec<Activity>> {
    let mut out: BTreeMap<String, Vec<Activity>> = BTreeMap::new();
    let mut position = 0u64;
    for i in 0..members {
        for j in 0..(1 + i % 6) {
            position += 1;
            let member = format!("m{i:05}");
            out.entry(member).or_default().push(Activity {
                position,
                at: rapport_domain::Timestamp::from_micros(
                    T0 + ((i * 7 + j * 13) % 90) as i64 * DAY + j as i64,
                ),
                kind: InteractionKind::from_i32(1 + ((i + j) % 14) as i32).expect("a kind"),
                channel: ["discord", "forum", "github"][(i + j) % 3].to_owned(),
                incentivized: i % 5 == 0,
                positive: j % 2 == 0,
                other_member: (j % 3 == 1).then(|| format!("m{:05}", (i + 1) % members)),
            });
        }
    }
    out
}

/// Stored states, tier changes and snapshots, comparable across backends.
pub(crate) type Rows = (
    BTreeSet<(String, String, String, Vec<u8>, i64, u64, i64)>,
    BTreeSet<(String, String, i64, i64, i64, i64)>,
    BTreeSet<(String, String, i64, Vec<u8>)>,
);

/// The rows the folds of `members` under `policy` give.
pub(crate) fn expected(
    community: &str,
    members: &BTreeMap<String, Vec<Activity>>,
    policy: &Policy,
) -> Rows {
    let chunk = members
        .iter()
        .map(|(member, activities)| (member.clone(), activities.clone()))
        .collect();
    let rows = FoldRows::of_chunk(community, &chunk, policy, false);
    (
        rows.states
            .into_iter()
            .map(|s| {
                let (c, ch, m) = s.key;
                (
                    c,
                    ch,
                    m,
                    s.state,
                    s.at,
                    s.bound.to_bits(),
                    i64::from(s.tier),
                )
            })
            .collect(),
        rows.tiers
            .into_iter()
            .map(|(c, m, t)| {
                (
                    c,
                    m,
                    t.at.as_micros(),
                    t.position as i64,
                    i64::from(t.from.as_i32()),
                    i64::from(t.to.as_i32()),
                )
            })
            .collect(),
        rows.snapshots.into_iter().collect(),
    )
}
