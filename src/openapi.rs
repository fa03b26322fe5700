//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint of `floe serve`'s port
//! (`src/openapi.json`), with the roles each accepts (`x-floe-roles`). A unit test below holds
//! it to the routes the code registers; `tests/python/test_identity.py` holds the README's table
//! of roles to it, and it to what the server answers.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn router() -> Router {
    Router::new().route(
        "/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response() }),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// `(METHOD, path)` of every `.route("…", get(…).post(…)…)` in the Rust files under
    /// `dirs`, paths in OpenAPI's form (`{*rest}` → `{rest}`).
    fn routes_in_code(dirs: &[&Path]) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        let mut files = Vec::new();
        let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    // The metrics port is not this port.
                    && !path.ends_with("src/metrics.rs")
                {
                    files.push(path);
                }
            }
        }
        let methods = ["get", "post", "put", "patch", "delete"];
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find(".route(") {
                rest = &rest[at + ".route(".len()..];
                // The call's arguments: up to the parenthesis that closes it.
                let (mut depth, mut end) = (1, 0);
                for (i, c) in rest.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                let args = &rest[..end];
                let Some(path) = args
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|a| a.split('"').next())
                else {
                    continue;
                };
                if !path.starts_with('/') {
                    // Not a route's path (this file's own documentation, say).
                    continue;
                }
                let path = path.replace("{*", "{");
                for m in methods {
                    let called = args.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0
                            || !args.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && args.as_bytes()[i - 1] != b'_'
                    });
                    if called {
                        found.insert((m.to_uppercase(), path.clone()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_document_names_every_route_of_the_port_and_no_other() {
        // Read when the test runs (cargo sets it), not baked in when it was built: a test
        // binary built from another checkout sharing the target directory reads this one.
        let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let root = Path::new(&manifest_dir);
        let code = routes_in_code(&[
            &root.join("src"),
            &root.join("admin/src"),
            &root.join("query/src"),
            &root.join("ingest/src"),
        ]);
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    op["x-floe-roles"].is_array(),
                    "{method} {path} does not say its roles"
                );
                assert!(op["responses"].is_object(), "{method} {path}");
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let missing: Vec<_> = code.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&code).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "src/openapi.json differs from the routes: not documented {missing:?}, not routed {extra:?}"
        );
        assert!(code.len() > 30, "the route scan found too few: {code:?}");
    }
}
