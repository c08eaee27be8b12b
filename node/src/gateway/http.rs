//! The gateway's routes: the WebSocket (`/ws`, see `admission`), the JS client and its
//! TypeScript declarations, and the static directory.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::admission::upgrade;
use super::shared::Shared;

/// The JS client, served at `/ferry.js`.
pub const FERRY_JS: &str = include_str!("../../../clients/js/ferry.js");
/// Its TypeScript declarations, served at `/ferry.d.ts`.
pub const FERRY_D_TS: &str = include_str!("../../../clients/js/ferry.d.ts");

/// The routes of the gateway `shared` (see [`super::Gateway::router`]).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(upgrade))
        .route(super::webtransport::PATH, get(super::webtransport::info))
        .route(
            "/ferry.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    FERRY_JS,
                )
            }),
        )
        .route(
            "/ferry.d.ts",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/typescript; charset=utf-8",
                    )],
                    FERRY_D_TS,
                )
            }),
        );
    if shared.config.static_dir.is_some() {
        router = router
            .route("/", get(|state| static_file(state, Path(String::new()))))
            .route("/{*path}", get(static_file));
    }
    router.with_state(shared)
}

/// Files of the static directory.
async fn static_file(State(shared): State<Arc<Shared>>, Path(path): Path<String>) -> Response {
    let Some(dir) = &shared.config.static_dir else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    // Only plain relative names: no `..`, no absolute paths, no hidden files.
    if path
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.') || part.contains('\\'))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let file = dir.join(&path);
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
