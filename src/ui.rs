//! The dashboard's files at `/ui/`: embedded in the binary at build time (`build.rs` reads
//! every file under `ui/`), so a running Floe needs no Node and no CDN. With `FLOE_UI_DIR`
//! set, they are read from that folder instead, for working on the pages without a rebuild.
//!
//! The pages hold no secret and need no credential: they ask for a token and send it only in
//! the `Authorization` header of their API calls. Every reply forbids framing, inline scripts
//! and any origin but Floe's own.

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// The policy every page is served with: scripts, styles and API calls from Floe's own origin
/// only (styles set by the chart library's code are allowed), no framing.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The dashboard's routes.
pub fn router() -> Router {
    let dir = std::env::var_os("FLOE_UI_DIR").map(PathBuf::from);
    if let Some(dir) = &dir {
        tracing::info!(dir = %dir.display(), "the dashboard is served from FLOE_UI_DIR, not the embedded copy");
    }
    let index = dir.clone();
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(move || {
                let dir = index.clone();
                async move { asset(dir.as_deref(), "index.html").await }
            }),
        )
        .route(
            "/ui/{*path}",
            get(move |UrlPath(path): UrlPath<String>| {
                let dir = dir.clone();
                async move { asset(dir.as_deref(), &path).await }
            }),
        )
}

/// The media type of a file name.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "text/plain; charset=utf-8",
    }
}

/// `path` inside `dir`, unless it leaves it (`..`, an absolute path).
fn inside(dir: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path);
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(relative))
}

async fn asset(dir: Option<&Path>, path: &str) -> Response {
    let bytes = match dir {
        Some(dir) => match inside(dir, path) {
            Some(file) => tokio::fs::read(file).await.ok(),
            None => None,
        },
        None => assets::ASSETS
            .iter()
            .find(|(name, _)| *name == path)
            .map(|(_, bytes)| bytes.to_vec()),
    };
    let Some(bytes) = bytes else {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_folder() {
        let dir = Path::new("/srv/ui");
        assert_eq!(
            inside(dir, "vendor/a.js"),
            Some(PathBuf::from("/srv/ui/vendor/a.js"))
        );
        assert_eq!(inside(dir, "../secret"), None);
        assert_eq!(inside(dir, "a/../../secret"), None);
        assert_eq!(inside(dir, "/etc/passwd"), None);
    }

    #[test]
    fn the_dashboard_is_embedded() {
        let names: Vec<&str> = assets::ASSETS.iter().map(|(n, _)| *n).collect();
        for page in ["index.html", "query.html"] {
            assert!(names.contains(&page), "{page} missing from {names:?}");
        }
    }
}
