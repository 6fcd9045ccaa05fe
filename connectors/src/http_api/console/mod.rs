//! The live console: `GET /` serves a small page that subscribes to the
//! fanout paths over WebSocket and shows who is online per document (with
//! cursors), active writing sessions with WPM and state, open conflicts, and
//! the notification and alert feed.
//!
//! The page is plain HTML, CSS and JavaScript modules compiled into the
//! binary (no build step, nothing fetched from outside), so it works offline
//! and always matches the server it came from. It reads only the existing WS
//! channels, with the same authorization as any client (`?token=` is passed
//! through), so serving it reveals nothing by itself.
//!
//! Asset map (`assets/`): `index.html` (the document), `console.css`,
//! `console.js` (entry: query parameters → channels, render loop),
//! `socket.js` (one reconnecting connection per path, recovery with `since`),
//! `model.js` (pure state: derived events in, bounded maps out), `view.js`
//! (state → DOM, text only, never `innerHTML`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// Everything the page loads comes from this origin; no inline script or
/// style, no frames, no forms. `connect-src 'self'` covers the same-origin
/// `ws:`/`wss:` URLs (CSP level 3). `img-src data:` is only for the empty
/// favicon, which keeps the browser from requesting `/favicon.ico`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// (route, content type, body) of every asset.
const ASSETS: [(&str, &str, &str); 6] = [
    ("/", HTML, include_str!("assets/index.html")),
    (
        "/console/console.css",
        CSS,
        include_str!("assets/console.css"),
    ),
    ("/console/console.js", JS, include_str!("assets/console.js")),
    ("/console/socket.js", JS, include_str!("assets/socket.js")),
    ("/console/model.js", JS, include_str!("assets/model.js")),
    ("/console/view.js", JS, include_str!("assets/view.js")),
];

/// The console's routes; merged into the app router by one line.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, body)| {
            router.route(path, get(move || async move { asset(content_type, body) }))
        })
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The page URL may carry `?token=`: never send it as a referrer.
            (header::REFERRER_POLICY, "no-referrer"),
            // Small files; revalidating keeps a browser from mixing the
            // assets of two server versions after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> axum::response::Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_content_type_and_the_csp() {
        for (path, content_type, body) in ASSETS {
            let resp = get(path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let got = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            assert_eq!(got, body.as_bytes(), "{path}");
        }
    }

    #[test]
    fn the_page_references_only_served_assets_and_nothing_inline() {
        let (_, _, html) = ASSETS[0];
        for (path, _, _) in &ASSETS[1..] {
            let file = path.rsplit('/').next().unwrap();
            assert!(
                html.contains(path) || ASSETS.iter().any(|(_, _, b)| b.contains(file)),
                "{path} is served but nothing loads it"
            );
        }
        // The CSP forbids inline code: a <script> without src or a style
        // attribute would be blocked in the browser.
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
