//! `[alerts]` configuration: validation errors naming the path, unknown
//! kinds and fields, a full section.

use super::*;

#[test]
fn config_validation_errors_name_the_path() {
    let rule = |body: &str| {
        format!(
            "[alerts]\n[[alerts.rules]]\nkind = \"match\"\ntype = \"system.error\"\n\
             recipient = \"role:admin\"\n[[alerts.rules]]\n{body}\n"
        )
    };
    let threshold = |more: &str| {
        rule(&format!(
            "kind = \"threshold\"\ntype = \"writing.keystroke\"\nwindow = \"1m\"\n\
             threshold = 3\n{more}"
        ))
    };
    let cases = [
        (
            threshold("aggregate = \"median\""),
            "alerts.rules[1].aggregate: expected one of count, sum, avg",
        ),
        (
            threshold("aggregate = \"sum\""),
            "alerts.rules[1].value: sum and avg need a value field path",
        ),
        (
            threshold("aggregate = \"count\"\nvalue = \"data.words\""),
            "alerts.rules[1].value: count takes no value",
        ),
        (
            threshold("aggregate = \"count\"\nkey = \"data..x\""),
            "alerts.rules[1].key: expected a field path",
        ),
        (
            threshold("aggregate = \"count\"\nkey = \"author\""),
            "alerts.rules[1].key: expected a field path",
        ),
        (
            threshold("aggregate = \"count\"\nnotify = \"sideways\""),
            "alerts.rules[1].notify: expected one of above, below, both",
        ),
        (
            threshold("aggregate = \"avg\"\nvalue = \"data.x[*]\""),
            "alerts.rules[1].value: a value path cannot use [*]",
        ),
        (
            threshold(
                "aggregate = \"count\"\nwhere = [{field = \"data.x\", op = \"like\", value = 1}]",
            ),
            "alerts.rules[1].where[0].op: expected one of eq, ne, gt, gte, lt, lte, contains",
        ),
        (
            threshold(
                "aggregate = \"count\"\nwhere = [{field = \"data[x]\", op = \"eq\", value = 1}]",
            ),
            "alerts.rules[1].where[0].field: expected a field path",
        ),
        (
            threshold("aggregate = \"count\"\npriority = \"urgent\""),
            "alerts.rules[1].priority: expected one of LOW, MEDIUM, HIGH, CRITICAL",
        ),
        (
            rule("kind = \"match\"\ntype = \"writing.keystrok\"\nrecipient = \"user_id\""),
            "alerts.rules[1].type: unknown event type \"writing.keystrok\"; did you mean writing.keystroke",
        ),
        (
            rule(
                "kind = \"match\"\ntype = \"system.error\"\nrecipient = \"user_id\"\ntitle = \"{data.service\"",
            ),
            "alerts.rules[1].title: unclosed `{`",
        ),
        (
            rule("kind = \"match\"\ntype = \"system.error\"\nrecipient = \":x\""),
            "alerts.rules[1].recipient: expected a field path or an address",
        ),
        (
            rule(
                "kind = \"match\"\nname = \"match_0\"\ntype = \"system.error\"\nrecipient = \"user_id\"",
            ),
            "alerts.rules[1].name: \"match_0\" is used by another rule",
        ),
        (
            rule(
                "kind = \"match\"\nname = \"mention\"\ntype = \"system.error\"\nrecipient = \"user_id\"",
            ),
            "alerts.rules[1].name: \"mention\" is the name of a built-in rule",
        ),
        (
            rule(
                "kind = \"anomaly\"\ntype = \"writing.keystroke\"\nvalue = \"data.words\"\nwindow = 5\nmin_samples = 6",
            ),
            "alerts.rules[1].min_samples: expected 2 to window (5) samples",
        ),
        (
            rule("kind = \"anomaly\"\ntype = \"writing.keystroke\"\nvalue = \"data.words\"\nk = 0"),
            "alerts.rules[1].k: must be a positive number",
        ),
        (
            "[alerts]\nsales_milestones = [100, 0]\n".to_owned(),
            "alerts.sales_milestones[1]: must be positive",
        ),
    ];
    for (text, want) in cases {
        let got = rules_error(&text);
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
    }
}

#[test]
fn an_unknown_kind_or_field_is_rejected_naming_the_rule() {
    let got =
        rules_error("[alerts]\n[[alerts.rules]]\nkind = \"regex\"\ntype = \"system.error\"\n");
    assert!(got.starts_with("alerts.rules[0]"), "{got}");
    assert!(got.contains("unknown variant `regex`"), "{got}");
    let got = rules_error(
        "[alerts]\n[[alerts.rules]]\nkind = \"match\"\ntype = \"system.error\"\n\
         recipient = \"role:a\"\naggregate = \"sum\"\n",
    );
    assert!(
        got.starts_with("alerts.rules[0]") && got.contains("aggregate"),
        "{got}"
    );
}

#[test]
fn a_full_alerts_section_parses() {
    let r = rules(
        r#"
        [alerts]
        defaults = true
        sales_milestones = [1000, 100]
        state_ttl = "12h"
        [[alerts.rules]]
        kind = "match"
        type = "automation.workflow_failed"
        recipient = "role:automation"
        priority = "HIGH"
        title = "Workflow {data.workflow_id} failed"
        [[alerts.rules]]
        kind = "threshold"
        name = "error_burst"
        type = "system.error"
        key = "data.service"
        aggregate = "count"
        window = "5m"
        threshold = 10
        recipient = "role:admin"
        [[alerts.rules]]
        kind = "anomaly"
        type = "publishing.sales_updated"
        key = "data.book_id"
        value = "data.units"
        "#,
    );
    assert_eq!(r.milestones, [100, 1000]);
    assert_eq!(r.rules.len(), 3);
    assert_eq!(r.rules[0].name, "match_0");
    assert_eq!(r.rules[2].name, "anomaly_2");
    assert_eq!(r.state_ttl_ms, 12 * 3_600_000);
}
