//! Finds and loads ONNX Runtime once per process.
//!
//! ONNX Runtime is a shared library (`libonnxruntime.so`) that the project's setup script takes
//! from the `onnxruntime` wheel on PyPI, so no build step downloads a binary. It is looked for,
//! in order: the configured path, `ORT_DYLIB_PATH`, next to the executable, the project's tool
//! cache (`$STREAMREC_CACHE`, else `$XDG_CACHE_HOME/streamrec`, else `~/.cache/streamrec`, each
//! under `onnxruntime/`), then the system library directories.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::ModelError;

static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

/// What to run when the library is missing.
pub const INSTALL_HINT: &str = "run `make setup` (or `scripts/setup.sh`), which installs it from the PyPI \
    `onnxruntime` wheel into ~/.cache/streamrec/onnxruntime, or set model.onnxruntime_path \
    (STREAMREC__MODEL__ONNXRUNTIME_PATH) to a libonnxruntime.so of version 1.31 or newer";

fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("lib"));
        dirs.push(exe_dir);
    }
    dirs.push(tool_cache().join("onnxruntime"));
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(PathBuf::from),
    );
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("libonnxruntime.so")
                        || n == "libonnxruntime.dylib"
                        || n == "onnxruntime.dll"
                })
            })
            .collect();
        libs.sort();
        found.extend(libs.into_iter().rev());
    }
    found
}

/// The project's tool cache directory.
pub fn tool_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("STREAMREC_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("streamrec");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/streamrec")
}

/// Loads ONNX Runtime (once) and returns the process environment.
pub fn environment(explicit: Option<&Path>) -> Result<&'static Environment, ModelError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let candidates = candidates(explicit);
        let Some(path) = candidates.into_iter().find(|p| p.is_file()) else {
            return Err(format!(
                "ONNX Runtime (libonnxruntime.so) was not found; {INSTALL_HINT}"
            ));
        };
        let env = ort::init_from(&path)
            .map_err(|e| {
                format!(
                    "failed to load ONNX Runtime from {}: {e}; {INSTALL_HINT}",
                    path.display()
                )
            })?
            .with_name("streamrec")
            .build()
            .map_err(|e| format!("failed to start ONNX Runtime from {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "loaded ONNX Runtime");
        Ok((env, path))
    });
    match result {
        Ok((env, _)) => Ok(env),
        Err(message) => Err(ModelError::RuntimeMissing(message.clone())),
    }
}
