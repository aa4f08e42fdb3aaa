//! The operator console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (from npm), both installed by `scripts/setup.sh`, against the real binary:
//! the live charts draw and update, the tree groups, pages and searches hundreds of sessions,
//! an actor restarted from the page is counted, and a user is found (`browser/console.mjs`).

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_draws_live_charts_groups_sessions_restarts_an_actor_and_finds_a_user() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.mjs");
    let node_path = test_env("STREAMREC_TEST_NODE_PATH");
    let url = server.url("");
    let output = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(&script)
            .arg(&url)
            .env("NODE_PATH", &node_path)
            .env("STREAMREC_TOKEN", admin_token())
            .output()
            .expect("node runs (make setup installs it)")
    });
    assert!(
        output.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
