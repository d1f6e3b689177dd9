//! MemberService: a member put together from the log and the read models;
//! identities linked, refused when another member owns them, unlinked.

use rapport_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{Backend, TestApp, spawn_app};
use crate::ingest::violated_fields;
use crate::on_both_backends;

on_both_backends!(
    a_member_shows_its_identities_role_tier_and_activity,
    an_identity_another_member_owns_is_refused_naming_the_owner,
    an_unlinked_identity_starts_a_new_member_when_seen_again,
    bad_requests_are_field_violations_and_other_communities_not_found,
    an_export_holds_every_event_of_the_member_decrypted_its_timeline_and_score,
    merge_suggestions_follow_the_three_rules_page_and_leave_rejected_pairs_out,
);

fn identity(channel: &str, handle: &str) -> pb::Identity {
    pb::Identity {
        channel: channel.into(),
        handle: handle.into(),
    }
}

/// An answer by `actor` on `channel`, `seconds` after 2026-01-01.
fn act(id: &str, channel: &str, handle: &str, display_name: &str, seconds: i64) -> pb::Interaction {
    pb::Interaction {
        community_id: "acme".into(),
        interaction_id: id.into(),
        channel: channel.into(),
        kind: pb::InteractionKind::Answer as i32,
        actor: Some(identity(channel, handle)),
        actor_display_name: display_name.into(),
        occurred_at: Some(at(seconds)),
        ..Default::default()
    }
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_767_225_600 + seconds,
        nanos: 0,
    }
}

async fn record(app: &TestApp, interaction: pb::Interaction) -> pb::RecordInteractionResponse {
    app.interactions()
        .await
        .record_interaction(pb::RecordInteractionRequest {
            interaction: Some(interaction),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn members(
    app: &TestApp,
) -> pb::member_service_client::MemberServiceClient<tonic::transport::Channel> {
    pb::member_service_client::MemberServiceClient::new(app.channel().await)
}

async fn link(
    app: &TestApp,
    member_id: &str,
    identity: Option<pb::Identity>,
    email: &str,
) -> Result<pb::LinkIdentityResponse, tonic::Status> {
    members(app)
        .await
        .link_identity(pb::LinkIdentityRequest {
            community_id: "acme".into(),
            member_id: member_id.into(),
            member: None,
            identity,
            email: email.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn find(
    app: &TestApp,
    identity: Option<pb::Identity>,
    email: &str,
    min_position: u64,
) -> Result<pb::Member, tonic::Status> {
    members(app)
        .await
        .find_member(pb::FindMemberRequest {
            community_id: "acme".into(),
            identity,
            email: email.into(),
            min_position,
        })
        .await
        .map(|r| r.into_inner().member.expect("a member"))
}

async fn a_member_shows_its_identities_role_tier_and_activity(backend: Backend) {
    let Some(app) = spawn_app(backend, "member_read").await else {
        return;
    };
    let first = record(&app, act("d-1", "discord", "ana#1234", "Ana", 100)).await;
    record(&app, act("d-2", "discord", "ana#1234", "", 300)).await;
    record(&app, act("d-3", "discord", "ana#1234", "Ana L.", 200)).await;
    let ana = first.member_id;

    link(&app, &ana, Some(identity("github", "AnaDev")), "")
        .await
        .unwrap();
    // The member named by one of its identities rather than by id.
    let linked = members(&app)
        .await
        .link_identity(pb::LinkIdentityRequest {
            community_id: "acme".into(),
            member: Some(identity("discord", "ANA#1234")),
            email: "Ana@Example.org".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!linked.already_linked);
    let again = link(&app, &ana, Some(identity("github", "anadev")), "")
        .await
        .unwrap();
    assert!(
        again.already_linked,
        "github handles match case-insensitively"
    );

    // Found by each identity, case-insensitively, and by the email.
    let by_github = find(
        &app,
        Some(identity("github", "ANADEV")),
        "",
        linked.position,
    )
    .await
    .unwrap();
    let by_email = find(&app, None, "ana@example.org", linked.position)
        .await
        .unwrap();
    assert_eq!(by_github, by_email);
    let member = by_github;
    assert_eq!(member.member_id, ana);
    assert_eq!(member.community_id, "acme");
    assert_eq!(
        member.identities,
        [
            identity("discord", "ana#1234"),
            identity("github", "AnaDev"),
            identity("email", "Ana@Example.org"),
        ]
    );
    // The latest interaction by stream order that carried a name.
    assert_eq!(member.display_name, "Ana L.");
    assert_eq!(member.interactions, 3);
    assert_eq!(member.first_seen, Some(at(100)));
    assert_eq!(member.last_seen, Some(at(300)));
    assert_eq!(member.role, pb::MemberRole::Member as i32);
    let score = app
        .advocacy()
        .await
        .get_advocate_score(pb::GetAdvocateScoreRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            min_position: linked.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(member.tier, score.tier);

    // A linked identity resolves at ingest: the member's own interaction.
    let via_github = record(&app, act("g-1", "github", "anadev", "", 400)).await;
    assert_eq!(via_github.member_id, ana);

    let role = members(&app)
        .await
        .set_member_role(pb::SetMemberRoleRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            role: pb::MemberRole::Staff as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let member = members(&app)
        .await
        .get_member(pb::GetMemberRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            min_position: role.position,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(member.role, pb::MemberRole::Staff as i32);
    assert_eq!(member.interactions, 4);
    assert_eq!(member.last_seen, Some(at(400)));
}

async fn an_identity_another_member_owns_is_refused_naming_the_owner(backend: Backend) {
    let Some(app) = spawn_app(backend, "member_link_owned").await else {
        return;
    };
    let ana = record(&app, act("a-1", "discord", "ana#1234", "", 0))
        .await
        .member_id;
    let bob = record(&app, act("b-1", "github", "bobby", "", 0)).await;
    let status = link(&app, &ana, Some(identity("github", "Bobby")), "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains(&bob.member_id),
        "{}",
        status.message()
    );
    assert!(status.message().contains("merge"), "{}", status.message());
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "IDENTITY_OWNED_BY_ANOTHER_MEMBER");
    assert_eq!(info.metadata["owner_member_id"], bob.member_id);

    // Nothing was written, and the identity still resolves to bob.
    let head = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .head_position;
    assert_eq!(head, bob.position);
    let owner = find(&app, Some(identity("github", "bobby")), "", head)
        .await
        .unwrap();
    assert_eq!(owner.member_id, bob.member_id);
}

async fn an_unlinked_identity_starts_a_new_member_when_seen_again(backend: Backend) {
    let Some(app) = spawn_app(backend, "member_unlink").await else {
        return;
    };
    let ana = record(&app, act("a-1", "discord", "ana#1234", "", 0))
        .await
        .member_id;
    link(&app, &ana, Some(identity("github", "anadev")), "")
        .await
        .unwrap();
    let unlinked = members(&app)
        .await
        .unlink_identity(pb::UnlinkIdentityRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            member: None,
            identity: Some(identity("github", "AnaDev")),
            email: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let status = find(
        &app,
        Some(identity("github", "anadev")),
        "",
        unlinked.position,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let member = find(
        &app,
        Some(identity("discord", "ana#1234")),
        "",
        unlinked.position,
    )
    .await
    .unwrap();
    assert_eq!(member.identities, [identity("discord", "ana#1234")]);

    // The event is in the log and in the member's timeline.
    let timeline = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            min_position: unlinked.position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let newest = &timeline.entries[0];
    assert_eq!(newest.position, unlinked.position);
    assert_eq!(newest.r#type, pb::EventType::IdentityUnlinked as i32);
    assert_eq!(newest.identity, Some(identity("github", "AnaDev")));

    // Seen again, the identity is a new member: ana's history stays hers.
    let again = record(&app, act("g-1", "github", "anadev", "", 10)).await;
    assert_ne!(again.member_id, ana);

    // Unlinking what the member does not own is NOT_FOUND.
    let status = members(&app)
        .await
        .unlink_identity(pb::UnlinkIdentityRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            member: None,
            identity: Some(identity("github", "anadev")),
            email: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "IDENTITY_NOT_LINKED"
    );
}

async fn bad_requests_are_field_violations_and_other_communities_not_found(backend: Backend) {
    let Some(app) = spawn_app(backend, "member_bad").await else {
        return;
    };
    let ana = record(&app, act("a-1", "discord", "ana#1234", "", 0))
        .await
        .member_id;
    let cases: [(Option<pb::Identity>, &str, &str, &str); 5] = [
        (Some(identity("github", "x")), "x@example.org", "m", "email"),
        (None, "", "m", "identity"),
        (None, "not-an-address", "m", "email"),
        (Some(identity("GitHub", "x")), "", "m", "identity.channel"),
        (Some(identity("github", "x")), "", "", "member_id"),
    ];
    for (identity, email, member_id, field) in cases {
        let status = link(&app, member_id, identity, email).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_fields(&status), [field]);
    }
    // A member of acme is not found through globex, nor is an unknown id.
    for (community, member_id) in [("globex", ana.as_str()), ("acme", "m-nobody")] {
        let status = members(&app)
            .await
            .get_member(pb::GetMemberRequest {
                community_id: community.into(),
                member_id: member_id.into(),
                min_position: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{community} {member_id}");
        let status = members(&app)
            .await
            .link_identity(pb::LinkIdentityRequest {
                community_id: community.into(),
                member_id: member_id.into(),
                member: None,
                identity: Some(identity("github", "fresh")),
                email: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{community} {member_id}");
    }
}

/// A field of a protobuf `Struct`, as its JSON-like kind.
pub(crate) fn field<'a>(s: &'a prost_types::Struct, name: &str) -> &'a prost_types::value::Kind {
    s.fields
        .get(name)
        .and_then(|v| v.kind.as_ref())
        .unwrap_or_else(|| panic!("no field {name:?} in {s:?}"))
}

pub(crate) fn object(kind: &prost_types::value::Kind) -> &prost_types::Struct {
    match kind {
        prost_types::value::Kind::StructValue(s) => s,
        other => panic!("not an object: {other:?}"),
    }
}

pub(crate) fn list(kind: &prost_types::value::Kind) -> Vec<&prost_types::value::Kind> {
    match kind {
        prost_types::value::Kind::ListValue(l) => {
            l.values.iter().filter_map(|v| v.kind.as_ref()).collect()
        }
        other => panic!("not a list: {other:?}"),
    }
}

pub(crate) fn text(kind: &prost_types::value::Kind) -> &str {
    match kind {
        prost_types::value::Kind::StringValue(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn number(kind: &prost_types::value::Kind) -> f64 {
    match kind {
        prost_types::value::Kind::NumberValue(n) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

async fn an_export_holds_every_event_of_the_member_decrypted_its_timeline_and_score(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend, "member_export").await else {
        return;
    };
    let mut first = act("d-1", "discord", "ana#1234", "Ana", 100);
    first.excerpt = "my own words".into();
    let ana = record(&app, first).await.member_id;
    record(&app, act("d-2", "discord", "ana#1234", "", 200)).await;
    // Someone else, who must not be in ana's export.
    record(&app, act("b-1", "discord", "bob#42", "Bob", 150)).await;
    link(&app, &ana, None, "ana@example.org").await.unwrap();
    let last = members(&app)
        .await
        .set_member_role(pb::SetMemberRoleRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            role: pb::MemberRole::Staff as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .position;

    let document = members(&app)
        .await
        .export_member(pb::ExportMemberRequest {
            community_id: "acme".into(),
            member: Some(identity("discord", "ana#1234")),
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert_eq!(text(field(&document, "format")), "rapport.member-export.v1");
    let member = object(field(&document, "member"));
    assert_eq!(text(field(member, "member_id")), ana);
    assert_eq!(list(field(member, "identities")).len(), 2);
    assert_eq!(text(field(member, "role")), "MEMBER_ROLE_STAFF");

    // Every event of ana's stream, and nothing else.
    let log = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest {
            community_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let stream = format!("member-{ana}");
    let expected: Vec<f64> = log
        .iter()
        .filter(|e| e.stream_id == stream)
        .map(|e| e.position as f64)
        .collect();
    let events = list(field(&document, "events"));
    let exported: Vec<f64> = events
        .iter()
        .map(|e| number(field(object(e), "position")))
        .collect();
    assert_eq!(exported, expected);
    assert_eq!(
        expected.len(),
        6,
        "registered, linked, 2 interactions, email, role"
    );
    // Decrypted: her words and her handle.
    let interaction = events
        .iter()
        .map(|e| object(e))
        .find(|e| text(field(e, "type")) == "interaction_recorded")
        .map(|e| object(field(e, "interaction_recorded")))
        .unwrap();
    assert_eq!(text(field(interaction, "excerpt")), "my own words");
    assert_eq!(
        text(field(object(field(interaction, "actor")), "handle")),
        "ana#1234"
    );

    // The timeline rows and the score, as the read models hold them.
    let timeline = app
        .timelines()
        .await
        .get_timeline(pb::GetTimelineRequest {
            community_id: "acme".into(),
            member_id: ana.clone(),
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rows = timeline.entries.iter().filter(|e| e.r#type != 0).count();
    assert_eq!(list(field(&document, "timeline")).len(), rows);
    let score = object(field(&document, "score"));
    assert_eq!(number(field(score, "interactions_counted")), 2.0);
    assert_eq!(list(field(score, "components")).len(), 5);
}

async fn merge_suggestions_follow_the_three_rules_page_and_leave_rejected_pairs_out(
    backend: Backend,
) {
    use pb::MergeReason as R;
    let Some(app) = spawn_app(backend, "merge_suggestions").await else {
        return;
    };
    let on_discord = record(&app, act("s-1", "discord", "anadev", "", 0))
        .await
        .member_id;
    let on_github = record(&app, act("s-2", "github", "AnaDev", "", 0))
        .await
        .member_id;
    let forum_ana = record(&app, act("s-3", "forum", "ana", "", 0))
        .await
        .member_id;
    let mailed = record(&app, act("s-4", "discord", "someone", "", 0))
        .await
        .member_id;
    let tagged = record(&app, act("s-5", "discord", "else", "", 0))
        .await
        .member_id;
    record(&app, act("s-6", "forum", "bob", "", 0)).await;
    link(&app, &mailed, None, "ana@example.org").await.unwrap();
    link(&app, &tagged, None, "Ana+news@Example.org")
        .await
        .unwrap();

    let list = |page_token: String, page_size: i32| {
        let app = &app;
        async move {
            members(app)
                .await
                .list_merge_suggestions(pb::ListMergeSuggestionsRequest {
                    community_id: "acme".into(),
                    page_size,
                    page_token,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let pair = |a: &str, b: &str, reasons: &[R]| {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        (
            a.to_owned(),
            b.to_owned(),
            reasons.iter().map(|r| *r as i32).collect::<Vec<_>>(),
        )
    };
    let mut expected = vec![
        pair(&on_discord, &on_github, &[R::SameHandleOnDifferentChannels]),
        pair(&forum_ana, &mailed, &[R::HandleEqualsEmailLocalPart]),
        pair(&forum_ana, &tagged, &[R::HandleEqualsEmailLocalPart]),
        pair(&mailed, &tagged, &[R::SameEmail]),
    ];
    expected.sort();
    let got = |page: &pb::ListMergeSuggestionsResponse| {
        page.suggestions
            .iter()
            .map(|s| {
                (
                    s.member_id.clone(),
                    s.other_member_id.clone(),
                    s.reasons.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let all = list(String::new(), 0).await.unwrap();
    assert_eq!(got(&all), expected);
    assert!(all.next_page_token.is_empty());

    // One at a time, the same list.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(token, 1).await.unwrap();
        paged.extend(got(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, expected);
    let status = list("not-a-token".into(), 1).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);

    // Rejected once, never suggested again.
    members(&app)
        .await
        .reject_merge_suggestion(pb::RejectMergeSuggestionRequest {
            community_id: "acme".into(),
            member_id: on_github.clone(),
            other_member_id: on_discord.clone(),
        })
        .await
        .unwrap();
    let after = list(String::new(), 0).await.unwrap();
    let rejected = pair(&on_discord, &on_github, &[R::SameHandleOnDifferentChannels]);
    expected.retain(|p| *p != rejected);
    assert_eq!(got(&after), expected);
    assert_eq!(after.suggestions.len(), 3);
}
