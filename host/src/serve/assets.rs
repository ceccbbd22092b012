//! The page's files, embedded in the binary: the page itself (`host/web/`) and uPlot, fetched
//! at a pinned version by `scripts/web-assets.sh` into the git-ignored `host/web/vendor/`
//! (checked by `build.rs`). Nothing is loaded from anywhere but this server.

/// (URL path, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 8] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/lib.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/lib.js"),
    ),
    (
        "/charts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/charts.js"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/app.css"),
    ),
    (
        "/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/vendor/uplot-1.6.32/uPlot.iife.min.js"),
    ),
    (
        "/vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/vendor/uplot-1.6.32/uPlot.min.css"),
    ),
    (
        "/vendor/uPlot.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../web/vendor/uplot-1.6.32/LICENSE"),
    ),
];

/// The embedded file at a URL path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS
        .iter()
        .find(|(at, _, _)| *at == path)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}
