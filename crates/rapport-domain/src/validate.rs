//! Turning caller input into a validated [`Interaction`].
//!
//! Validation reports every wrong field at once, each with a path a caller can
//! map back to its request (`interactions[3].actor.handle`), so a bad batch is
//! fixed in one round trip.

use std::collections::{BTreeMap, HashMap};

use crate::interaction::{Identity, Interaction, InteractionKind, Target};
use crate::time::Timestamp;

/// Most interactions in one `RecordInteractions` call.
pub const MAX_BATCH: usize = 1_000;
pub const MAX_COMMUNITY_ID: usize = 64;
pub const MAX_INTERACTION_ID: usize = 256;
pub const MAX_CHANNEL: usize = 32;
pub const MAX_HANDLE: usize = 256;
pub const MAX_SOURCE_TYPE: usize = 128;
pub const MAX_CAMPAIGN_ID: usize = 128;
pub const MAX_CONTENT_ID: usize = 256;
pub const MAX_URL: usize = 2_048;
pub const MAX_EXCERPT: usize = 4_096;
pub const MAX_DISPLAY_NAME: usize = 256;
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_KEY: usize = 64;
pub const MAX_ATTRIBUTE_VALUE: usize = 1_024;
/// How far in the future an `occurred_at` may be: clocks drift, a day does not.
pub const MAX_FUTURE_SECONDS: i64 = 86_400;

/// One wrong field: the path of the field in the request and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// An interaction as the caller sent it, before any check. Mirrors
/// `rapport.v1.Interaction` with plain types, so this crate needs no protobuf.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InteractionInput {
    pub community_id: String,
    pub interaction_id: String,
    pub channel: String,
    /// Wire number of the kind; 0 is unspecified.
    pub kind: i32,
    pub source_type: String,
    pub actor: Option<Identity>,
    /// (seconds, nanoseconds) since the epoch.
    pub occurred_at: Option<(i64, i32)>,
    pub target: Option<TargetInput>,
    pub incentivized: bool,
    pub sentiment: Option<f64>,
    pub campaign_id: String,
    pub url: String,
    pub excerpt: String,
    pub actor_display_name: String,
    pub attributes: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetInput {
    Member(Identity),
    Content(String),
    Brand,
}

/// Collects violations under a path prefix.
struct Checker<'a> {
    prefix: &'a str,
    violations: Vec<FieldViolation>,
}

impl Checker<'_> {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.violations.push(FieldViolation {
            field: format!("{}{field}", self.prefix),
            description: description.into(),
        });
    }

    /// A free-text field: at most `max` bytes of UTF-8 with no control characters.
    fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.len() > max {
            self.fail(
                field,
                format!("must be at most {max} bytes, got {}", value.len()),
            );
        } else if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.fail(field, "must not contain control characters");
        }
    }

    /// A required single-line id: non-empty, at most `max` bytes, no control characters.
    fn id(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.fail(field, "is required");
        } else if value.len() > max {
            self.fail(
                field,
                format!("must be at most {max} bytes, got {}", value.len()),
            );
        } else if value.chars().any(char::is_control) {
            self.fail(field, "must not contain control characters");
        }
    }

    fn community_id(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.fail(field, "is required");
        } else if value.len() > MAX_COMMUNITY_ID
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            self.fail(
                field,
                format!("must be 1-{MAX_COMMUNITY_ID} characters of [A-Za-z0-9._:-]"),
            );
        }
    }

    fn channel(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.fail(field, "is required");
        } else if !is_channel_slug(value) {
            self.fail(
                field,
                format!(
                    "must be a lowercase slug: [a-z0-9][a-z0-9_-]*, at most {MAX_CHANNEL} characters (got {value:?})"
                ),
            );
        }
    }

    /// An identity; an empty channel takes `default_channel`.
    fn identity(&mut self, field: &str, identity: &Identity, default_channel: &str) -> Identity {
        let channel = if identity.channel.is_empty() {
            default_channel.to_owned()
        } else {
            self.channel(&format!("{field}.channel"), &identity.channel);
            identity.channel.clone()
        };
        self.id(&format!("{field}.handle"), &identity.handle, MAX_HANDLE);
        Identity {
            channel,
            handle: identity.handle.clone(),
        }
    }
}

/// Whether `value` is a channel slug: `[a-z0-9][a-z0-9_-]*`, at most [`MAX_CHANNEL`].
pub fn is_channel_slug(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CHANNEL
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Whether `value` is a valid community id (1-64 characters of `[A-Za-z0-9._:-]`).
pub fn is_community_id(value: &str) -> bool {
    let mut c = Checker {
        prefix: "",
        violations: Vec::new(),
    };
    c.community_id("", value);
    c.violations.is_empty()
}

/// Validates one interaction. `prefix` is prepended to every field path
/// (`"interaction."`, `"interactions[3]."`); `now` bounds `occurred_at`.
pub fn validate_interaction(
    input: &InteractionInput,
    prefix: &str,
    now: Timestamp,
) -> Result<Interaction, Vec<FieldViolation>> {
    let mut c = Checker {
        prefix,
        violations: Vec::new(),
    };
    c.community_id("community_id", &input.community_id);
    c.id("interaction_id", &input.interaction_id, MAX_INTERACTION_ID);
    c.channel("channel", &input.channel);
    let kind = InteractionKind::from_i32(input.kind);
    if kind.is_none() {
        let why = if input.kind == 0 {
            "is required (INTERACTION_KIND_UNSPECIFIED is not a kind)".to_owned()
        } else {
            format!("unknown interaction kind {}", input.kind)
        };
        c.fail("kind", why);
    }
    c.text("source_type", &input.source_type, MAX_SOURCE_TYPE);

    let actor = match &input.actor {
        Some(actor) => c.identity("actor", actor, &input.channel),
        None => {
            c.fail("actor", "is required");
            Identity {
                channel: String::new(),
                handle: String::new(),
            }
        }
    };

    let occurred_at = match input.occurred_at {
        None => {
            c.fail("occurred_at", "is required");
            None
        }
        Some((seconds, nanos)) => match Timestamp::from_parts(seconds, nanos) {
            None => {
                c.fail("occurred_at", "is not a valid timestamp");
                None
            }
            Some(t) if t < Timestamp::EARLIEST_ACCEPTED => {
                c.fail("occurred_at", "must not be before 2000-01-01T00:00:00Z");
                None
            }
            Some(t) if t > now.plus_seconds(MAX_FUTURE_SECONDS) => {
                c.fail("occurred_at", "must not be more than one day in the future");
                None
            }
            Some(t) => Some(t),
        },
    };

    let target = match &input.target {
        None => None,
        Some(TargetInput::Brand) => Some(Target::Brand),
        Some(TargetInput::Content(id)) => {
            c.id("target.content_id", id, MAX_CONTENT_ID);
            Some(Target::Content(id.clone()))
        }
        Some(TargetInput::Member(identity)) => Some(Target::Member(c.identity(
            "target.member",
            identity,
            &input.channel,
        ))),
    };

    if let Some(s) = input.sentiment
        && !(s.is_finite() && (-1.0..=1.0).contains(&s))
    {
        c.fail("sentiment", "must be between -1 and 1");
    }
    c.text("campaign_id", &input.campaign_id, MAX_CAMPAIGN_ID);
    c.text("url", &input.url, MAX_URL);
    c.text("excerpt", &input.excerpt, MAX_EXCERPT);
    c.text(
        "actor_display_name",
        &input.actor_display_name,
        MAX_DISPLAY_NAME,
    );

    if input.attributes.len() > MAX_ATTRIBUTES {
        c.fail(
            "attributes",
            format!(
                "must have at most {MAX_ATTRIBUTES} entries, got {}",
                input.attributes.len()
            ),
        );
    } else {
        // Sorted, so violations come out in a stable order.
        let sorted: BTreeMap<_, _> = input.attributes.iter().collect();
        for (key, value) in sorted {
            let field = format!("attributes[{key:?}]");
            if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
                c.fail(&field, format!("keys must be 1-{MAX_ATTRIBUTE_KEY} bytes"));
            }
            c.text(&field, value, MAX_ATTRIBUTE_VALUE);
        }
    }

    if !c.violations.is_empty() {
        return Err(c.violations);
    }
    Ok(Interaction {
        community_id: input.community_id.clone(),
        interaction_id: input.interaction_id.clone(),
        channel: input.channel.clone(),
        kind: kind.expect("checked above"),
        source_type: input.source_type.clone(),
        actor,
        occurred_at: occurred_at.expect("checked above"),
        target,
        incentivized: input.incentivized,
        sentiment: input.sentiment,
        campaign_id: input.campaign_id.clone(),
        url: input.url.clone(),
        excerpt: input.excerpt.clone(),
        actor_display_name: input.actor_display_name.clone(),
        attributes: input
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Validates a whole batch: all or nothing. Besides each item's own checks,
/// the batch must hold 1 to [`MAX_BATCH`] items, and an `interaction_id` that
/// appears twice must carry the same payload both times.
pub fn validate_batch(
    inputs: &[InteractionInput],
    now: Timestamp,
) -> Result<Vec<Interaction>, Vec<FieldViolation>> {
    if inputs.is_empty() {
        return Err(vec![FieldViolation {
            field: "interactions".into(),
            description: "must contain at least one interaction".into(),
        }]);
    }
    if inputs.len() > MAX_BATCH {
        return Err(vec![FieldViolation {
            field: "interactions".into(),
            description: format!(
                "must contain at most {MAX_BATCH} interactions, got {}",
                inputs.len()
            ),
        }]);
    }
    let mut violations = Vec::new();
    let mut valid = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        match validate_interaction(input, &format!("interactions[{i}]."), now) {
            Ok(interaction) => valid.push((i, interaction)),
            Err(v) => violations.extend(v),
        }
    }
    let mut first_seen: HashMap<(&str, &str), (usize, [u8; 32])> = HashMap::new();
    for (i, interaction) in &valid {
        let key = (
            interaction.community_id.as_str(),
            interaction.interaction_id.as_str(),
        );
        let fingerprint = interaction.fingerprint();
        match first_seen.get(&key) {
            Some((j, f)) if *f != fingerprint => violations.push(FieldViolation {
                field: format!("interactions[{i}].interaction_id"),
                description: format!(
                    "repeats interactions[{j}].interaction_id with a different payload"
                ),
            }),
            Some(_) => {}
            None => {
                first_seen.insert(key, (*i, fingerprint));
            }
        }
    }
    if !violations.is_empty() {
        violations.sort_by_key(|v| batch_index(&v.field));
        return Err(violations);
    }
    Ok(valid
        .into_iter()
        .map(|(_, interaction)| interaction)
        .collect())
}

/// The item index of an `interactions[N].…` path, to report violations in request order.
fn batch_index(field: &str) -> usize {
    field
        .strip_prefix("interactions[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_micros(1_750_000_000_000_000);

    fn valid_input() -> InteractionInput {
        InteractionInput {
            community_id: "acme".into(),
            interaction_id: "msg-1".into(),
            channel: "discord".into(),
            kind: InteractionKind::Reply.as_i32(),
            actor: Some(Identity {
                channel: String::new(),
                handle: "ana#1234".into(),
            }),
            occurred_at: Some((1_749_000_000, 0)),
            ..Default::default()
        }
    }

    /// Validates `input` after `edit`, returning the violated field paths.
    fn check(edit: impl FnOnce(&mut InteractionInput)) -> Vec<String> {
        let mut input = valid_input();
        edit(&mut input);
        match validate_interaction(&input, "interaction.", NOW) {
            Ok(_) => vec![],
            Err(v) => v.into_iter().map(|v| v.field).collect(),
        }
    }

    #[test]
    fn a_valid_interaction_fills_in_the_actor_channel() {
        let interaction = validate_interaction(&valid_input(), "", NOW).unwrap();
        assert_eq!(interaction.actor.channel, "discord");
        assert_eq!(interaction.kind, InteractionKind::Reply);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Edit = Box<dyn FnOnce(&mut InteractionInput)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "interaction.community_id",
                Box::new(|i| i.community_id.clear()),
            ),
            (
                "interaction.community_id",
                Box::new(|i| i.community_id = "a b".into()),
            ),
            (
                "interaction.interaction_id",
                Box::new(|i| i.interaction_id = "  ".into()),
            ),
            (
                "interaction.interaction_id",
                Box::new(|i| i.interaction_id = "x".repeat(257)),
            ),
            (
                "interaction.channel",
                Box::new(|i| i.channel = "Discord".into()),
            ),
            ("interaction.kind", Box::new(|i| i.kind = 0)),
            ("interaction.kind", Box::new(|i| i.kind = 99)),
            ("interaction.actor", Box::new(|i| i.actor = None)),
            (
                "interaction.actor.handle",
                Box::new(|i| i.actor.as_mut().unwrap().handle.clear()),
            ),
            (
                "interaction.actor.channel",
                Box::new(|i| i.actor.as_mut().unwrap().channel = "no way".into()),
            ),
            (
                "interaction.occurred_at",
                Box::new(|i| i.occurred_at = None),
            ),
            (
                "interaction.occurred_at",
                Box::new(|i| i.occurred_at = Some((946_684_799, 0))),
            ),
            (
                "interaction.occurred_at",
                Box::new(|i| i.occurred_at = Some((1_750_000_000 + 86_401, 0))),
            ),
            (
                "interaction.target.content_id",
                Box::new(|i| i.target = Some(TargetInput::Content(String::new()))),
            ),
            (
                "interaction.target.member.handle",
                Box::new(|i| {
                    i.target = Some(TargetInput::Member(Identity {
                        channel: String::new(),
                        handle: String::new(),
                    }))
                }),
            ),
            (
                "interaction.sentiment",
                Box::new(|i| i.sentiment = Some(1.5)),
            ),
            (
                "interaction.sentiment",
                Box::new(|i| i.sentiment = Some(f64::NAN)),
            ),
            (
                "interaction.excerpt",
                Box::new(|i| i.excerpt = "x".repeat(MAX_EXCERPT + 1)),
            ),
            (
                "interaction.url",
                Box::new(|i| i.url = "x".repeat(MAX_URL + 1)),
            ),
            (
                "interaction.attributes",
                Box::new(|i| {
                    i.attributes = (0..33).map(|n| (n.to_string(), String::new())).collect()
                }),
            ),
            (
                "interaction.attributes[\"k\"]",
                Box::new(|i| {
                    i.attributes.insert("k".into(), "v".repeat(1025));
                }),
            ),
        ];
        for (field, edit) in cases {
            assert_eq!(
                check(edit),
                vec![field.to_owned()],
                "expected a violation of {field}"
            );
        }
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let fields = check(|i| {
            i.community_id.clear();
            i.kind = 0;
            i.occurred_at = None;
        });
        assert_eq!(
            fields,
            [
                "interaction.community_id",
                "interaction.kind",
                "interaction.occurred_at"
            ]
        );
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(check(|i| i.excerpt = "x".repeat(MAX_EXCERPT)).is_empty());
        assert!(check(|i| i.occurred_at = Some((946_684_800, 0))).is_empty());
        assert!(check(|i| i.occurred_at = Some((1_750_000_000 + 86_400, 0))).is_empty());
    }

    #[test]
    fn a_batch_names_the_bad_item() {
        let mut items = vec![valid_input(); 5];
        for (n, item) in items.iter_mut().enumerate() {
            item.interaction_id = format!("msg-{n}");
        }
        items[3].kind = 0;
        let err = validate_batch(&items, NOW).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, "interactions[3].kind");
    }

    #[test]
    fn a_batch_must_hold_one_to_a_thousand_items() {
        assert_eq!(
            validate_batch(&[], NOW).unwrap_err()[0].field,
            "interactions"
        );
        let mut items = vec![valid_input(); MAX_BATCH + 1];
        for (n, item) in items.iter_mut().enumerate() {
            item.interaction_id = format!("msg-{n}");
        }
        assert_eq!(
            validate_batch(&items, NOW).unwrap_err()[0].field,
            "interactions"
        );
        items.pop();
        assert_eq!(validate_batch(&items, NOW).unwrap().len(), MAX_BATCH);
    }

    #[test]
    fn a_repeated_id_must_repeat_the_payload() {
        let mut items = vec![valid_input(), valid_input()];
        assert!(
            validate_batch(&items, NOW).is_ok(),
            "an exact repeat is a retry"
        );
        items[1].excerpt = "changed".into();
        let err = validate_batch(&items, NOW).unwrap_err();
        assert_eq!(err[0].field, "interactions[1].interaction_id");
    }
}
