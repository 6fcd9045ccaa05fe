//! The bodies of a delivery: plain text and HTML (email), short text (SMS),
//! JSON (webhook). Plain functions over [`Delivery`]: no template engine.

use super::policy::{Delivery, priority_label};

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The email subject.
pub fn subject(d: &Delivery) -> String {
    d.title()
}

/// The plain-text email body.
pub fn text(d: &Delivery) -> String {
    format!("{}\n\n{}\n", d.title(), d.text())
}

/// The HTML email body.
pub fn html(d: &Delivery) -> String {
    let mut items = String::new();
    for i in &d.items {
        items.push_str(&format!(
            "<li><strong>{}</strong><br>\n{}</li>\n",
            escape_html(&i.title),
            escape_html(&i.body)
        ));
    }
    let suppressed = if d.suppressed_similar > 0 {
        format!(
            "<p><em>{} similar notifications were suppressed.</em></p>",
            d.suppressed_similar
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html><body>\n<h1>{}</h1>\n<p>Priority: {}</p>\n<ul>\n{items}</ul>\n{suppressed}\n</body></html>\n",
        escape_html(&d.title()),
        priority_label(d.priority)
    )
}

/// The SMS text (providers split long messages; keep it short).
pub fn sms(d: &Delivery) -> String {
    let mut s = format!("{}: {}", d.title(), d.text());
    if s.chars().count() > 480 {
        s = s.chars().take(477).collect::<String>() + "...";
    }
    s
}

/// The webhook JSON body.
pub fn webhook(d: &Delivery) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "recipient_id": d.recipient,
        "priority": priority_label(d.priority),
        "kind": d.kind,
        "title": d.title(),
        "text": d.text(),
        "items": d.items,
        "suppressed_similar": d.suppressed_similar,
    })
}
