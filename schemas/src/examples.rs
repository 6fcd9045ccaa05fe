//! A minimal (required fields only) and a maximal (every optional field set) example
//! payload for every event type, for tests, docs and benchmarks.

use serde_json::json;

/// A minimal (required fields only) and a maximal (every optional field set) example payload
/// for every type, in [`TYPES`] order: `(type, minimal, maximal)`.
pub fn examples() -> Vec<(&'static str, serde_json::Value, serde_json::Value)> {
    vec![
        (
            "writing.keystroke",
            json!({"keystrokes": 10, "words": 2, "chars": 11}),
            json!({
                "keystrokes": 12,
                "words": 2,
                "chars": 11,
                "deleted_chars": 1,
                "source": "paste"
            }),
        ),
        ("writing.word_added", json!({}), json!({"words": 3})),
        (
            "writing.paragraph_completed",
            json!({"paragraph": 4, "words": 87}),
            json!({"paragraph": 0, "words": 12}),
        ),
        (
            "writing.session_started",
            json!({}),
            json!({"session_id": "s1", "reason": "manual"}),
        ),
        (
            "writing.session_ended",
            json!({}),
            json!({
                "session_id": "s1",
                "reason": "idle_timeout",
                "start_ts": 1_767_600_000_000_i64,
                "end_ts": 1_767_603_600_123_i64,
                "events": 412,
                "words": 1234,
                "wpm": 38.5,
                "active_ms": 1_920_000,
                "flow_ms": 900_000,
                "paused_ms": 300_000,
                "longest_flow_ms": 600_000,
                "pasted_words": 120
            }),
        ),
        (
            "writing.session_paused",
            json!({}),
            json!({"session_id": "s1", "reason": "manual"}),
        ),
        (
            "writing.session_resumed",
            json!({}),
            json!({"session_id": "s1", "reason": "manual"}),
        ),
        (
            "writing.flow_state_entered",
            json!({"wpm": 42.5, "sustained_ms": 120_000}),
            json!({"session_id": "s1", "wpm": 42.5, "sustained_ms": 120_000}),
        ),
        (
            "writing.flow_state_exited",
            json!({"wpm": 18.25, "duration_ms": 900_000}),
            json!({"session_id": "s1", "wpm": 18.25, "duration_ms": 900_000}),
        ),
        (
            "writing.session_state_changed",
            json!({"from": "WARMING_UP", "to": "FLOW_STATE", "reason": "wpm_above_threshold"}),
            json!({
                "session_id": "s1",
                "from": "FLOW_STATE",
                "to": "PAUSED",
                "reason": "idle_timeout",
                "wpm": 12.5
            }),
        ),
        (
            "collaboration.user_joined",
            json!({}),
            json!({"client": "web/2.3.1"}),
        ),
        (
            "collaboration.user_left",
            json!({}),
            json!({"reason": "closed"}),
        ),
        (
            "collaboration.cursor_moved",
            json!({"paragraph": 3, "offset": 17}),
            json!({
                "paragraph": 3,
                "offset": 17,
                "selection": [17, 42],
                "viewport": [0, 12],
                "mode": "review"
            }),
        ),
        (
            "collaboration.edit_applied",
            json!({"paragraph": 3, "offset": 17, "inserted": 5, "deleted": 0}),
            json!({"paragraph": 3, "offset": 0, "inserted": 0, "deleted": 120}),
        ),
        (
            "collaboration.comment_added",
            json!({"comment_id": "c1", "paragraph": 3}),
            json!({
                "comment_id": "c2",
                "paragraph": 3,
                "mentions": ["u2", "u3"],
                "thread_id": "c1"
            }),
        ),
        (
            "collaboration.comment_resolved",
            json!({"comment_id": "c1"}),
            json!({"comment_id": "c1", "resolved_by": "u2"}),
        ),
        (
            "collaboration.conflict_detected",
            json!({
                "conflict_id": "k1",
                "other_user_id": "u2",
                "paragraph": 3,
                "severity": "HIGH",
                "kind": "same_paragraph",
                "suggestion": "u2 is editing this paragraph"
            }),
            json!({
                "conflict_id": "k2",
                "other_user_id": "u3",
                "paragraph": 7,
                "severity": "LOW",
                "kind": "adjacent_paragraph",
                "suggestion": "u3 is editing the next paragraph"
            }),
        ),
        (
            "collaboration.conflict_resolved",
            json!({
                "conflict_id": "k1",
                "other_user_id": "u2",
                "paragraph": 3,
                "duration_ms": 45_000
            }),
            json!({
                "conflict_id": "k1",
                "other_user_id": "u2",
                "paragraph": 3,
                "duration_ms": 45_000,
                "resolution": "moved_apart"
            }),
        ),
        (
            "collaboration.presence_updated",
            json!({"status": "away"}),
            json!({
                "status": "online",
                "paragraph": 3,
                "offset": 17,
                "selection": [17, 42],
                "viewport": [0, 12],
                "mode": "comment",
                "typing_wpm": 35.5
            }),
        ),
        (
            "publishing.status_changed",
            json!({"from": "draft", "to": "editing"}),
            json!({"book_id": "b1", "from": "review", "to": "published"}),
        ),
        (
            "publishing.upload_started",
            json!({"upload_id": "up1", "bytes": 1_048_576}),
            json!({
                "upload_id": "up1",
                "file_name": "manuscript.pdf",
                "bytes": 1_048_576,
                "content_type": "application/pdf"
            }),
        ),
        (
            "publishing.upload_completed",
            json!({"upload_id": "up1", "bytes": 1_048_576}),
            json!({"upload_id": "up1", "bytes": 1_048_576, "duration_ms": 3200}),
        ),
        (
            "publishing.upload_failed",
            json!({"upload_id": "up1", "error": "connection reset"}),
            json!({"upload_id": "up1", "error": "connection reset", "retryable": true}),
        ),
        (
            "publishing.review_completed",
            json!({"review_id": "r1", "verdict": "approved"}),
            json!({
                "review_id": "r1",
                "reviewer_id": "u9",
                "verdict": "changes_requested",
                "rating": 4
            }),
        ),
        (
            "publishing.book_published",
            json!({"book_id": "b1", "title": "The Long Draft"}),
            json!({
                "book_id": "b1",
                "title": "The Long Draft",
                "isbn": "9780306406157",
                "channels": ["kindle", "print"]
            }),
        ),
        (
            "publishing.sales_updated",
            json!({
                "book_id": "b1",
                "units": 12,
                "revenue_cents": 11_988,
                "currency": "USD",
                "total_units": 340
            }),
            json!({
                "book_id": "b1",
                "units": 0,
                "revenue_cents": 0,
                "currency": "EUR",
                "total_units": 352
            }),
        ),
        (
            "analytics.metric_updated",
            json!({"metric": "words_per_minute", "value": 37.5}),
            json!({
                "metric": "words_per_minute",
                "value": 37.5,
                "window_ms": 60_000,
                "dimensions": [
                    {"name": "user_id", "value": "u1"},
                    {"name": "document_id", "value": "d1"}
                ]
            }),
        ),
        (
            "analytics.threshold_crossed",
            json!({
                "rule": "low_output",
                "metric": "words_per_day",
                "key": "u1",
                "value": 120.0,
                "threshold": 500.0,
                "direction": "below"
            }),
            json!({
                "rule": "deadline_pace",
                "metric": "words_per_day",
                "key": "p1",
                "value": 2500.5,
                "threshold": 2000.0,
                "direction": "above",
                "window_ms": 86_400_000
            }),
        ),
        (
            "analytics.anomaly_detected",
            json!({
                "rule": "wpm_spike",
                "metric": "words_per_minute",
                "key": "u1",
                "value": 180.5,
                "mean": 40.25,
                "stddev": 12.5,
                "k": 3.0
            }),
            json!({
                "rule": "wpm_drop",
                "metric": "words_per_minute",
                "key": "u2",
                "value": 2.5,
                "mean": 35.0,
                "stddev": 8.75,
                "k": 4.5
            }),
        ),
        (
            "analytics.alert_triggered",
            json!({
                "rule": "low_output",
                "priority": "HIGH",
                "recipient_id": "u1",
                "dedup_key": "low_output:u1",
                "title": "Slow writing day",
                "body": "You wrote 120 words today; your goal is 500.",
                "source_event_id": "e42"
            }),
            json!({
                "rule": "pipeline_down",
                "priority": "CRITICAL",
                "recipient_id": "u7",
                "dedup_key": "pipeline_down",
                "title": "Ingest is failing",
                "body": "redis unavailable",
                "source_event_id": "e43"
            }),
        ),
        (
            "automation.workflow_started",
            json!({"workflow_id": "w1"}),
            json!({"workflow_id": "w1", "name": "Publish on approval"}),
        ),
        (
            "automation.action_executed",
            json!({"workflow_id": "w1", "action": "send_email", "status": "ok"}),
            json!({
                "workflow_id": "w1",
                "action": "send_email",
                "status": "failed",
                "duration_ms": 250,
                "error": "smtp timeout"
            }),
        ),
        (
            "automation.workflow_completed",
            json!({"workflow_id": "w1"}),
            json!({"workflow_id": "w1", "duration_ms": 5300}),
        ),
        (
            "automation.workflow_failed",
            json!({"workflow_id": "w1", "error": "smtp timeout"}),
            json!({"workflow_id": "w1", "error": "smtp timeout", "action": "send_email"}),
        ),
        (
            "system.error",
            json!({"service": "ingest", "message": "redis unavailable"}),
            json!({
                "service": "ingest",
                "message": "redis unavailable",
                "severity": "critical",
                "code": "E_REDIS"
            }),
        ),
        (
            "system.dead_letter",
            json!({"reason": "late", "detail": "{\"id\":\"e1\",\"ts\":1}"}),
            json!({
                "reason": "invalid",
                "detail": "{\"error\":\"data.words: expected non-negative integer, got \\\"3\\\"\"}"
            }),
        ),
        (
            "system.notification",
            json!({
                "notification_id": "n1",
                "recipient_id": "u1",
                "priority": "LOW",
                "title": "Comment resolved",
                "body": "u2 resolved your comment"
            }),
            json!({
                "notification_id": "n2",
                "recipient_id": "u1",
                "priority": "MEDIUM",
                "title": "Slow writing day",
                "body": "You wrote 120 words today; your goal is 500.",
                "rule": "low_output",
                "suppressed_similar": 3
            }),
        ),
    ]
}
