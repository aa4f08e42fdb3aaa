//! `streamrec import items|profiles|events FILE` and `streamrec export items|profiles|events`:
//! JSON lines to and from a running node over its bulk API (`POST /v1/admin/import/{dataset}`,
//! `GET /v1/admin/export/{dataset}`), streamed both ways, with a progress bar on stderr and a
//! summary at the end. An import prints the node's report (JSON) on stdout and fails when a line
//! was refused; an export writes to a file (complete or not at all: it is renamed into place at
//! the end) or to stdout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the lines are.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dataset {
    Items,
    Profiles,
    Events,
}

impl Dataset {
    fn as_str(self) -> &'static str {
        match self {
            Self::Items => "items",
            Self::Profiles => "profiles",
            Self::Events => "events",
        }
    }
}

/// How the file is sent.
const CHUNK_BYTES: usize = 256 * 1024;
/// Refused lines printed in the summary (the report on stdout lists up to 100).
const SUMMARY_ERRORS: usize = 20;

fn bar(len: Option<u64>, template: &str) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn request(method: reqwest::Method, url: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = reqwest::Client::new().request(method, url);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// The message of an error answer (`{"error":{"code","message"}}`).
async fn refusal(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::anyhow!(
        "{status}: {}",
        body["error"]["message"].as_str().unwrap_or("error")
    )
}

/// Streams `file` to the node; prints the report; fails if any line was refused or the import
/// stopped early.
pub async fn import(
    url: &str,
    token: Option<&str>,
    dataset: Dataset,
    file: &Path,
    atomic: bool,
) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let source = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let len = source.metadata().await?.len();
    let progress = bar(
        Some(len),
        "{spinner} importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    );
    let sent = progress.clone();
    let chunks = futures::stream::try_unfold(source, move |mut source| {
        let sent = sent.clone();
        async move {
            let mut chunk = vec![0; CHUNK_BYTES];
            let n = source.read(&mut chunk).await?;
            if n == 0 {
                sent.set_message("waiting for the report");
                return Ok::<_, std::io::Error>(None);
            }
            chunk.truncate(n);
            sent.inc(n as u64);
            Ok(Some((chunk, source)))
        }
    });
    let response = request(
        reqwest::Method::POST,
        &format!(
            "{base}/v1/admin/import/{}{}",
            dataset.as_str(),
            if atomic { "?atomic=true" } else { "" }
        ),
        token,
    )
    .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
    .body(reqwest::Body::wrap_stream(chunks))
    .send()
    .await
    .with_context(|| format!("no node answers at {base}"));
    progress.finish_and_clear();
    let response = response?;
    let status = response.status();
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        bail!("{status}: the node did not answer with a report");
    }
    let report: Value = response.json().await.context("the node sent no JSON")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.get("accepted").is_none() {
        bail!(
            "{status}: {}",
            report["error"]["message"].as_str().unwrap_or("error")
        );
    }
    let count = |name: &str| report[name].as_u64().unwrap_or(0);
    let mut summary = format!(
        "{}: {} lines, {} accepted, {} refused",
        dataset.as_str(),
        count("lines"),
        count("accepted"),
        count("refused"),
    );
    if count("duplicates") > 0 {
        summary += &format!(" ({} already stored)", count("duplicates"));
    }
    if report["stored"] == Value::Bool(false) {
        summary += "; atomic: nothing stored";
    }
    eprintln!("{summary}");
    for error in report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .take(SUMMARY_ERRORS)
    {
        eprintln!(
            "  line {}: {}: {}",
            error["line"],
            error["code"].as_str().unwrap_or("-"),
            error["message"].as_str().unwrap_or("-")
        );
    }
    let listed = report["errors"].as_array().map_or(0, Vec::len);
    let more = count("refused").saturating_sub(listed.min(SUMMARY_ERRORS) as u64);
    if more > 0 {
        eprintln!("  … and {more} more refused lines");
    }
    if let Some(line) = report["stopped_at_line"].as_u64() {
        bail!(
            "the import stopped at line {line} (nothing from it on was stored): {}",
            report["error"]["message"].as_str().unwrap_or("error")
        );
    }
    if count("refused") > 0 {
        bail!("{} lines refused", count("refused"));
    }
    Ok(())
}

/// Streams a data set from the node into `output` (a temporary file renamed into place at the
/// end) or stdout.
pub async fn export(
    url: &str,
    token: Option<&str>,
    dataset: Dataset,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let mut response = request(
        reqwest::Method::GET,
        &format!("{base}/v1/admin/export/{}", dataset.as_str()),
        token,
    )
    .send()
    .await
    .with_context(|| format!("no node answers at {base}"))?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let partial = output.map(|path| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        path.with_file_name(name)
    });
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &partial {
        Some(path) => Box::new(tokio::io::BufWriter::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(tokio::io::BufWriter::new(tokio::io::stdout())),
    };
    let progress = bar(None, "{spinner} exporting {msg} {bytes} {bytes_per_sec}");
    let written = copy(&mut response, &mut sink, &progress).await;
    progress.finish_and_clear();
    let lines = match written {
        Ok(lines) => lines,
        Err(error) => {
            if let Some(path) = &partial {
                let _ = tokio::fs::remove_file(path).await;
            }
            return Err(error);
        }
    };
    sink.flush().await?;
    drop(sink);
    if let (Some(partial), Some(output)) = (&partial, output) {
        tokio::fs::rename(partial, output)
            .await
            .with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?;
    }
    let place = output.map_or_else(|| PathBuf::from("stdout"), Path::to_path_buf);
    eprintln!(
        "{}: {lines} lines exported to {}",
        dataset.as_str(),
        place.display()
    );
    Ok(())
}

/// Copies the body; the number of lines. A body cut short (the node failed mid-way) is an
/// error: a complete export ends with a newline.
async fn copy(
    response: &mut reqwest::Response,
    sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    let (mut lines, mut last) = (0u64, b'\n');
    while let Some(chunk) = response.chunk().await.context("the export was cut short")? {
        let Some(&end) = chunk.last() else { continue };
        last = end;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        sink.write_all(&chunk).await?;
        progress.inc(chunk.len() as u64);
        progress.set_message(format!("{lines} lines"));
    }
    if last != b'\n' {
        bail!("the export was cut short");
    }
    Ok(lines)
}
