//! Reading the log: typed events, filters, paging.

use rapport_proto::v1 as pb;
use rapport_proto::v1::event::Payload;
use tonic::Code;

use crate::app::{Backend, spawn_app};
use crate::ingest::{interaction, one, violated_fields};
use crate::on_both_backends;

on_both_backends!(
    recorded_interactions_read_back_as_typed_events,
    filters_and_paging_follow_positions
);

async fn recorded_interactions_read_back_as_typed_events(backend: Backend) {
    let Some(app) = spawn_app(backend, "typed_events").await else {
        return;
    };
    let mut reply = interaction("r-1", "ana");
    reply.kind = pb::InteractionKind::Reply as i32;
    reply.target = Some(pb::Target {
        target: Some(pb::target::Target::Member(pb::Identity {
            channel: String::new(),
            handle: "bob".into(),
        })),
    });
    reply.sentiment = Some(0.75);
    reply.url = "https://forum.example/t/7#3".into();
    reply.actor_display_name = "Ana".into();
    reply.attributes.insert("thread".into(), "7".into());
    let recorded = app
        .interactions()
        .await
        .record_interaction(one(reply.clone()))
        .await
        .unwrap()
        .into_inner();

    let page = app
        .event_log()
        .await
        .read_events(pb::ReadEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.head_position, 5);
    assert_eq!(page.next_after_position, 5);
    let event = page.events.last().unwrap();
    assert_eq!(event.position, recorded.position);
    assert_eq!(event.stream_id, format!("member-{}", recorded.member_id));
    assert_eq!(event.stream_version, 3);
    let Some(Payload::InteractionRecorded(ir)) = &event.payload else {
        panic!("{event:?}")
    };
    assert_eq!(ir.member_id, recorded.member_id);
    let Some(Payload::MemberRegistered(bob)) = &page.events[2].payload else {
        panic!()
    };
    assert_eq!(ir.target_member_id, bob.member_id);
    // The interaction reads back as sent, with the actor's channel filled in.
    let mut expected = reply;
    expected.actor.as_mut().unwrap().channel = "forum".into();
    expected.target = Some(pb::Target {
        target: Some(pb::target::Target::Member(pb::Identity {
            channel: "forum".into(),
            handle: "bob".into(),
        })),
    });
    assert_eq!(ir.interaction.as_ref(), Some(&expected));
}

async fn filters_and_paging_follow_positions(backend: Backend) {
    let Some(app) = spawn_app(backend, "filters").await else {
        return;
    };
    let mut client = app.interactions().await;
    for n in 0..4 {
        let mut item = interaction(&format!("i-{n}"), "ana");
        if n % 2 == 1 {
            item.channel = "github".into();
        }
        client.record_interaction(one(item)).await.unwrap();
    }
    let mut other = interaction("i-0", "zed");
    other.community_id = "globex".into();
    client.record_interaction(one(other)).await.unwrap();
    let mut log = app.event_log().await;

    let github = log
        .read_events(pb::ReadEventsRequest {
            channels: vec!["github".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let positions: Vec<u64> = github.events.iter().map(|e| e.position).collect();
    // ana on github is another identity, so another member: 4-5 register it.
    assert_eq!(positions, [6, 8]);

    let globex = log
        .read_events(pb::ReadEventsRequest {
            community_id: "globex".into(),
            event_types: vec![pb::EventType::InteractionRecorded as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(globex.events.len(), 1);
    assert_eq!(globex.events[0].community_id, "globex");
    assert_eq!(
        globex.next_after_position, globex.head_position,
        "a short page scanned up to the head"
    );

    // Paging with next_after_position visits every event once.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = log
            .read_events(pb::ReadEventsRequest {
                after_position: after,
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.events.iter().map(|e| e.position));
        if page.events.is_empty() {
            break;
        }
        after = page.next_after_position;
    }
    assert_eq!(seen, (1..=11).collect::<Vec<u64>>());

    let status = log
        .read_events(pb::ReadEventsRequest {
            event_types: vec![0],
            channels: vec!["Not A Slug".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["event_types[0]", "channels[0]"]);
}
