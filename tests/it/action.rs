//! The GitHub Action (`action.yml`) run the way the runner runs it: the push step's `env:`
//! mapping is read from `action.yml` itself, every input given or empty (the runner sets them
//! all), and the step's `run:` line is executed with `bash` and `GITHUB_ACTION_PATH`, against
//! a real registry and moto for STS and ECR. So a renamed input, an env name the binary does
//! not read, a changed run line or a broken binary-locating script fails here.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::harness::images::{self, TestImage};
use crate::harness::moto::Moto;
use crate::harness::oidc::OidcServer;
use crate::harness::{Registry, Run, sha256, skopeo};

const ACCOUNT: &str = "123456789012";
// The moto helpers of the harness sign for eu-west-1, and moto keeps repositories per region.
const REGION: &str = "eu-west-1";
const SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// action.yml, read with a line parser (no YAML crate on purpose): enough for the file's own,
// simple shape, and strict: anything it does not recognise in the step's env is a failure.
// ---------------------------------------------------------------------------------------------

struct ActionYml {
    /// Input name → required.
    inputs: BTreeMap<String, bool>,
    /// Output name → the expression of its value.
    outputs: BTreeMap<String, String>,
    /// The push step's env: variable → input name.
    env: Vec<(String, String)>,
    step_id: String,
    shell: String,
    run: String,
    using: String,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `key: value` of a line (value may be empty), or `None`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.trim().split_once(':')?;
    Some((key.trim().trim_start_matches("- "), value.trim()))
}

impl ActionYml {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("read action.yml");
        let mut yml = Self {
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            env: Vec::new(),
            step_id: String::new(),
            shell: String::new(),
            run: String::new(),
            using: String::new(),
        };
        let mut section = "";
        let mut current = String::new();
        let mut steps = 0;
        let mut in_env = false;
        for line in text.lines() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            if indent(line) == 0 {
                section = key_value(line).map_or("", |(k, _)| k);
                section = match section {
                    "inputs" => "inputs",
                    "outputs" => "outputs",
                    "runs" => "runs",
                    _ => "",
                };
                continue;
            }
            let Some((key, value)) = key_value(line) else {
                continue;
            };
            match section {
                "inputs" | "outputs" if indent(line) == 2 => {
                    assert!(value.is_empty(), "unexpected line in {section}: {line}");
                    key.clone_into(&mut current);
                    if section == "inputs" {
                        yml.inputs.insert(current.clone(), false);
                    }
                }
                "inputs" if key == "required" => {
                    yml.inputs.insert(current.clone(), value == "true");
                }
                "outputs" if key == "value" => {
                    yml.outputs.insert(current.clone(), value.to_owned());
                }
                "runs" => {
                    if line.trim_start().starts_with("- ") {
                        steps += 1;
                        in_env = false;
                    }
                    if in_env && indent(line) > 6 {
                        let input = value
                            .strip_prefix("${{ inputs.")
                            .and_then(|v| v.strip_suffix(" }}"))
                            .unwrap_or_else(|| {
                                panic!("the step's env must map inputs only: {line}")
                            });
                        yml.env.push((key.to_owned(), input.to_owned()));
                        continue;
                    }
                    in_env = false;
                    match key {
                        "using" => value.clone_into(&mut yml.using),
                        "id" => value.clone_into(&mut yml.step_id),
                        "shell" => value.clone_into(&mut yml.shell),
                        "run" => value.clone_into(&mut yml.run),
                        "env" => in_env = true,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        assert_eq!(steps, 1, "the action has exactly one step");
        yml
    }

    /// The push step's environment for these inputs: every mapped input, empty when not given,
    /// as the runner evaluates `${{ inputs.x }}`.
    fn step_env(&self, given: &[(&str, &str)]) -> Vec<(String, String)> {
        for (name, _) in given {
            assert!(
                self.inputs.contains_key(*name),
                "action.yml has no input `{name}`"
            );
        }
        self.env
            .iter()
            .map(|(var, input)| {
                let value = given
                    .iter()
                    .find(|(name, _)| name == input)
                    .map_or("", |(_, value)| value);
                (var.clone(), value.to_owned())
            })
            .collect()
    }
}

/// A temporary copy of the action as the runner checks it out (`action.yml`, the script, and
/// `dist/` when given a binary), so `dist/` can be arranged per test.
struct ActionCheckout {
    dir: tempfile::TempDir,
}

impl ActionCheckout {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::fs::create_dir_all(dir.path().join("dist")).unwrap();
        std::fs::copy(
            repo_root().join("action.yml"),
            dir.path().join("action.yml"),
        )
        .unwrap();
        std::fs::copy(
            repo_root().join("scripts/action-run.sh"),
            dir.path().join("scripts/action-run.sh"),
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Places `binary` as `dist/<name>` (a symlink: the test binary is large) and lists its
    /// real checksum in `dist/SHA256SUMS`.
    fn with_dist_binary(self, name: &str, binary: &Path) -> Self {
        let placed = self.path().join("dist").join(name);
        std::os::unix::fs::symlink(binary, &placed).unwrap();
        let digest = sha256(&std::fs::read(binary).unwrap());
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.append_sum(&format!("{hex}  {name}\n"));
        self
    }

    fn append_sum(&self, line: &str) {
        let path = self.path().join("dist/SHA256SUMS");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        std::fs::write(path, text).unwrap();
    }
}

/// What one run of the step left behind.
struct StepRun {
    run: Run,
    outputs: BTreeMap<String, String>,
    summary: String,
}

/// Runs the push step of `checkout`'s action.yml with `inputs` on a Linux x64 runner, in a fresh
/// workspace, with `extra` job environment (OIDC, `GITHUB_SHA`).
fn run_step(checkout: &Path, inputs: &[(&str, &str)], extra: &[(String, String)]) -> StepRun {
    let yml = ActionYml::read(&checkout.join("action.yml"));
    assert_eq!(yml.using, "composite");
    assert_eq!(yml.shell, "bash");
    let workspace = tempfile::tempdir().unwrap();
    let output_file = workspace.path().join("github_output");
    let summary_file = workspace.path().join("step_summary");
    std::fs::write(&output_file, "").unwrap();
    std::fs::write(&summary_file, "").unwrap();

    // What the runner does for `shell: bash`: the run text in a file, `bash --noprofile --norc
    // -eo pipefail {0}`.
    let script = workspace.path().join("step.sh");
    std::fs::write(&script, format!("{}\n", yml.run)).unwrap();
    let mut command = Command::new("bash");
    command
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&script)
        .current_dir(workspace.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_ACTION_PATH", checkout)
        .env("GITHUB_OUTPUT", &output_file)
        .env("GITHUB_STEP_SUMMARY", &summary_file)
        .env("GITHUB_WORKSPACE", workspace.path())
        .env("RUNNER_OS", "Linux")
        .env("RUNNER_ARCH", "X64")
        .stdin(Stdio::null());
    for (name, value) in extra {
        command.env(name, value);
    }
    for (name, value) in yml.step_env(inputs) {
        command.env(name, value);
    }
    let output = command.output().expect("run bash");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    StepRun {
        outputs: parse_outputs(&std::fs::read_to_string(&output_file).unwrap()),
        summary: std::fs::read_to_string(&summary_file).unwrap(),
        run,
    }
}

/// `$GITHUB_OUTPUT` in the runner's two forms: `name=value` and `name<<DELIMITER`.
fn parse_outputs(text: &str) -> BTreeMap<String, String> {
    let mut outputs = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            loop {
                let next = lines
                    .next()
                    .unwrap_or_else(|| panic!("unterminated output {name} in:\n{text}"));
                if next == delimiter {
                    break;
                }
                value.push(next);
            }
            outputs.insert(name.to_owned(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            outputs.insert(name.to_owned(), value.to_owned());
        } else {
            panic!("not an output line: {line:?} in:\n{text}");
        }
    }
    outputs
}

fn test_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ecr-push"))
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn action_yml_maps_every_input_to_a_variable_the_binary_reads() {
    let yml = ActionYml::read(&repo_root().join("action.yml"));
    let help = crate::harness::ecr_push(["push", "--help"], &[]);
    help.success();

    // Every input is passed exactly once, and only through the step's env.
    let mut mapped: Vec<&str> = yml.env.iter().map(|(_, input)| input.as_str()).collect();
    mapped.sort_unstable();
    let declared: Vec<&str> = yml.inputs.keys().map(String::as_str).collect();
    assert_eq!(
        mapped, declared,
        "every input mapped once in the step's env"
    );
    assert_eq!(yml.inputs.get("image"), Some(&true));
    assert_eq!(yml.inputs.get("repository"), Some(&true));
    assert!(
        !yml.run.contains("${{"),
        "no expressions inside run: {}",
        yml.run
    );
    assert_eq!(
        yml.run,
        r#"bash "$GITHUB_ACTION_PATH/scripts/action-run.sh""#
    );

    for (var, input) in &yml.env {
        match var.as_str() {
            "INPUT_BINARY_PATH" => assert_eq!(input, "binary-path"),
            // Read by the binary from the environment only, never as a flag.
            "ECR_PUSH_PASSWORD" => assert!(help.stdout.contains("`ECR_PUSH_PASSWORD`")),
            _ => assert!(
                help.stdout.contains(&format!("[env: {var}=")),
                "`ecr-push push` does not read {var} (input `{input}`):\n{}",
                help.stdout
            ),
        }
        // Kebab-case mirrors: the input's name is the flag's, except where the issue names it
        // otherwise.
        let expected = match input.as_str() {
            "image" => "ECR_PUSH_SOURCE".to_owned(),
            "image-name" => "ECR_PUSH_IMAGE".to_owned(),
            "role-to-assume" => "ECR_PUSH_ROLE_ARN".to_owned(),
            "binary-path" => "INPUT_BINARY_PATH".to_owned(),
            other => format!("ECR_PUSH_{}", other.replace('-', "_").to_uppercase()),
        };
        assert_eq!(var, &expected, "input `{input}`");
    }

    // Outputs come from the push step, under the same names.
    let expected_outputs = [
        "config-digest",
        "destinations",
        "digest",
        "image-ref",
        "image-uri",
        "metadata",
        "registry",
        "registry-id",
        "repository-created",
        "repository-uri",
        "scan-findings",
        "tags",
    ];
    assert_eq!(
        yml.outputs.keys().map(String::as_str).collect::<Vec<_>>(),
        expected_outputs
    );
    for (name, value) in &yml.outputs {
        assert_eq!(
            value,
            &format!("${{{{ steps.{}.outputs.{name} }}}}", yml.step_id)
        );
    }
}

#[test]
fn action_step_pushes_to_ecr_and_writes_outputs_and_summary() {
    let moto = Moto::start();
    let registry = Registry::start_with_basic_auth("AWS", &format!("{ACCOUNT}-auth-token"));
    let oidc = OidcServer::start("repo:acme/app:ref:refs/heads/main", "job-request-token");
    let checkout = ActionCheckout::new().with_dist_binary("ecr-push-linux-x86_64", &test_binary());
    let data = tempfile::tempdir().unwrap();
    let archive = data.path().join("image.oci.tar");
    let facts = images::oci_archive(&archive, &TestImage::new("action").seed(7));
    let policy = data.path().join("lifecycle.json");
    let policy_text = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}}]}"#;
    std::fs::write(&policy, policy_text).unwrap();
    let metadata_file = data.path().join("metadata.json");
    let role = format!("arn:aws:iam::{ACCOUNT}:role/ci-push");

    let step = run_step(
        checkout.path(),
        &[
            ("image", archive.to_str().unwrap()),
            ("repository", "team/action"),
            // A YAML block scalar: newline-separated, with a trailing newline.
            ("tags", "v1\nlatest\n"),
            ("region", REGION),
            ("role-to-assume", &role),
            ("registry", &registry.url()),
            ("ecr-endpoint", &moto.url()),
            ("sts-endpoint", &moto.url()),
            ("create-repository", "true"),
            ("scan-on-push", "true"),
            ("tag-mutability", "IMMUTABLE"),
            ("repository-tags", "team=platform\ncost-center=ci\n"),
            ("lifecycle-policy", policy.to_str().unwrap()),
            ("verify", "full"),
            ("jobs", "2"),
            ("metadata-file", metadata_file.to_str().unwrap()),
            ("scan", "off"),
            ("wait-replication", "false"),
        ],
        &[
            ("GITHUB_SHA".into(), SHA.into()),
            ("ACTIONS_ID_TOKEN_REQUEST_URL".into(), oidc.request_url()),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(),
                oidc.request_token.clone(),
            ),
        ],
    );
    step.run.success();
    let outputs = &step.outputs;
    let stderr = &step.run.stderr;

    // The image pushed is the local one, byte for byte, as an independent client reads it.
    let digest = &outputs["digest"];
    assert_eq!(digest, &facts.digest);
    let reference = format!("{}/team/action:latest", registry.host());
    assert_eq!(
        &skopeo::remote_digest(&reference, registry.skopeo_creds()),
        digest
    );
    assert_eq!(outputs["config-digest"], facts.config_digest);

    let repository_uri = format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/action");
    assert_eq!(outputs["repository-uri"], repository_uri);
    // With `registry` set (a VPC endpoint; here the local registry), the image references name
    // the host the image was pushed to.
    let host = registry.host();
    assert_eq!(outputs["registry"], host);
    assert_eq!(outputs["image-ref"], format!("{host}/team/action@{digest}"));
    assert_eq!(outputs["image-uri"], format!("{host}/team/action:v1"));
    assert_eq!(outputs["tags"], "v1\nlatest");
    assert_eq!(outputs["registry-id"], ACCOUNT);
    assert_eq!(outputs["repository-created"], "true");

    let metadata: serde_json::Value = serde_json::from_str(&outputs["metadata"]).unwrap();
    assert_eq!(metadata["digest"], digest.as_str());
    assert_eq!(metadata["tags"], json!(["v1", "latest"]));
    assert_eq!(metadata["repository_created"], true);
    assert_eq!(metadata["verify_mode"], "full");
    assert_eq!(metadata["verified"], true);
    assert_eq!(metadata["registry_id"], ACCOUNT);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metadata_file).unwrap()).unwrap();
    assert_eq!(written, metadata, "metadata-file holds the same report");

    assert_every_output_written(checkout.path(), outputs);

    // The summary names the repository, the digest and each tag.
    for needle in [
        "team/action",
        digest.as_str(),
        "`v1`",
        "`latest`",
        facts.config_digest.as_str(),
        "full: passed",
        "(created)",
    ] {
        assert!(
            step.summary.contains(needle),
            "summary lacks {needle}:\n{}",
            step.summary
        );
    }
    assert_all_blobs_uploaded(&step.summary, &reference, registry.skopeo_creds());
    assert_duration_row(&step.summary, &metadata);

    assert_repository_settings(&moto, policy_text);

    // The OIDC token was used, secrets were masked, the log is grouped.
    assert_eq!(oidc.minted(), 1);
    assert!(
        stderr.contains(&format!("::add-mask::{ACCOUNT}-auth-token")),
        "{stderr}"
    );
    assert!(stderr.contains("::group::"), "{stderr}");
    assert!(!stderr.contains("::error"), "{stderr}");
}

/// Every output the action declares (what a workflow can read) was written by the step, but for
/// those that only a scan or several destinations produce.
#[track_caller]
fn assert_every_output_written(checkout: &Path, outputs: &BTreeMap<String, String>) {
    let yml = ActionYml::read(&checkout.join("action.yml"));
    let always = yml
        .outputs
        .keys()
        .filter(|name| !["scan-findings", "destinations"].contains(&name.as_str()));
    for name in always {
        assert!(
            outputs.contains_key(name),
            "{name} not written: {outputs:?}"
        );
    }
}

/// The repository `team/action` has the settings the action's inputs asked for, as the ECR
/// API says (the newline-separated resource tags included).
fn assert_repository_settings(moto: &Moto, policy_text: &str) {
    let repository = moto.ecr(
        ACCOUNT,
        "DescribeRepositories",
        &json!({"registryId": ACCOUNT, "repositoryNames": ["team/action"]}),
    )["repositories"][0]
        .clone();
    assert_eq!(repository["imageTagMutability"], "IMMUTABLE");
    assert_eq!(repository["imageScanningConfiguration"]["scanOnPush"], true);
    let resource_tags = moto.ecr(
        ACCOUNT,
        "ListTagsForResource",
        &json!({"resourceArn": repository["repositoryArn"]}),
    );
    let mut pairs: Vec<String> = resource_tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}={}",
                t["Key"].as_str().unwrap(),
                t["Value"].as_str().unwrap()
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(pairs, ["cost-center=ci", "team=platform"]);
    let lifecycle = moto.ecr(
        ACCOUNT,
        "GetLifecyclePolicy",
        &json!({"registryId": ACCOUNT, "repositoryName": "team/action"}),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(
            lifecycle["lifecyclePolicyText"].as_str().unwrap()
        )
        .unwrap(),
        serde_json::from_str::<serde_json::Value>(policy_text).unwrap()
    );
}

#[test]
fn action_step_with_binary_path_and_only_the_required_inputs() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let layout = data.path().join("layout");
    let platforms = ["linux/amd64", "linux/arm64"];
    let facts = images::oci_layout_multi(
        &layout,
        &platforms.map(|p| TestImage::new("plain").seed(3).platform(p)),
    );
    let binary = test_binary();
    let inputs = [
        ("image", layout.to_str().unwrap()),
        ("repository", "plain/app"),
        ("registry", &registry.url()),
        ("binary-path", binary.to_str().unwrap()),
    ];

    // Checked out without dist/ binaries, as on the main branch: binary-path is what runs.
    let step = run_step(
        ActionCheckout::new().path(),
        &inputs,
        &[("GITHUB_SHA".into(), SHA.into())],
    );
    step.run.success();
    // Every other input was empty, and the binary's defaults applied: the commit SHA as the
    // tag, gzip, 4 jobs, standard verification.
    assert_eq!(step.outputs["tags"], SHA);
    assert_eq!(step.outputs["digest"], facts.digest);
    assert_eq!(
        step.outputs["image-ref"],
        format!("{}/plain/app@{}", registry.host(), facts.digest)
    );
    assert_eq!(
        skopeo::remote_digest(&format!("{}/plain/app:{SHA}", registry.host()), None),
        facts.digest
    );
    let metadata: serde_json::Value = serde_json::from_str(&step.outputs["metadata"]).unwrap();
    assert_eq!(metadata["verify_mode"], "standard");
    assert!(
        !step.outputs.contains_key("registry-id"),
        "no ECR outputs for a plain registry: {:?}",
        step.outputs
    );

    // The summary: each platform with its manifest, every blob uploaded once (the configs and
    // layers in the layout: every blob but the index and the manifests), and the duration.
    let summary = &step.summary;
    assert!(summary.contains(&facts.digest), "{summary}");
    let platform_row = summary_row(summary, "Platforms");
    assert_eq!(facts.platforms.len(), 2);
    for (platform, manifest, _config) in &facts.platforms {
        assert!(
            platform_row.contains(&format!("{platform} (`{}`)", &manifest[..19])),
            "{platform} {manifest} in {platform_row}"
        );
    }
    let mut blob_sizes = Vec::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let digest = format!("sha256:{}", entry.file_name().to_str().unwrap());
        let document = digest == facts.digest || facts.platforms.iter().any(|p| p.1 == digest);
        if !document {
            blob_sizes.push(entry.metadata().unwrap().len());
        }
    }
    assert_eq!(
        summary_row(summary, "Blobs"),
        format!(
            "{} uploaded ({}), 0 already in the registry",
            blob_sizes.len(),
            human_bytes(blob_sizes.iter().sum())
        )
    );
    assert_duration_row(summary, &metadata);

    // The same image again: nothing uploaded, every blob found in the registry.
    let again = run_step(
        ActionCheckout::new().path(),
        &inputs,
        &[("GITHUB_SHA".into(), SHA.into())],
    );
    again.run.success();
    assert_eq!(
        summary_row(&again.summary, "Blobs"),
        format!(
            "0 uploaded (0 B), {} already in the registry",
            blob_sizes.len()
        )
    );
}

/// The summary's Blobs row: every blob the manifest at `reference` names (as skopeo reads it
/// back) was uploaded, with their sizes, none skipped.
#[track_caller]
fn assert_all_blobs_uploaded(summary: &str, reference: &str, creds: Option<(&str, &str)>) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&skopeo::inspect_raw(reference, creds)).unwrap();
    let sizes: Vec<u64> = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|descriptor| descriptor["size"].as_u64().unwrap())
        .collect();
    assert_eq!(
        summary_row(summary, "Blobs"),
        format!(
            "{} uploaded ({}), 0 already in the registry",
            sizes.len(),
            human_bytes(sizes.iter().sum())
        )
    );
}

/// The value of the step summary's `| <name> | <value> |` row.
#[track_caller]
fn summary_row(summary: &str, name: &str) -> String {
    let prefix = format!("| {name} | ");
    let rows: Vec<&str> = summary
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(rows.len(), 1, "one {name} row in:\n{summary}");
    rows[0]
        .strip_suffix(" |")
        .unwrap_or_else(|| panic!("a table row: {}", rows[0]))
        .to_owned()
}

/// The Duration row says the report's duration, in seconds with one decimal.
#[track_caller]
fn assert_duration_row(summary: &str, metadata: &serde_json::Value) {
    let seconds = metadata["duration_seconds"].as_f64().unwrap();
    assert!(seconds > 0.0, "{metadata}");
    assert_eq!(summary_row(summary, "Duration"), format!("{seconds:.1} s"));
}

/// Sizes as the summary shows them: bytes, then KiB, MiB, … with one decimal.
fn human_bytes(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut units = ["KiB", "MiB", "GiB"].into_iter();
    let mut unit = "B";
    while value >= 1024.0 {
        value /= 1024.0;
        unit = units.next().unwrap();
    }
    format!("{value:.1} {unit}")
}

#[test]
fn invalid_inputs_fail_as_usage_errors_with_an_annotation() {
    // `jobs` is not a number: clap refuses ECR_PUSH_JOBS before anything runs.
    let data = tempfile::tempdir().unwrap();
    let binary = test_binary();
    let step = run_step(
        ActionCheckout::new().path(),
        &[
            ("image", data.path().to_str().unwrap()),
            ("repository", "team/app"),
            ("jobs", "many"),
            ("binary-path", binary.to_str().unwrap()),
        ],
        &[],
    );
    step.run.failure(2);
    assert_error(&step, &["invalid value 'many'", "--jobs"]);
    assert!(
        step.summary.contains("ecr-push failed") && step.summary.contains("'many'"),
        "{}",
        step.summary
    );

    // Help and the version are not failures, on GitHub neither.
    for args in [&["--version"][..], &["push", "--help"]] {
        let run = crate::harness::ecr_push(args, &[("GITHUB_ACTIONS", "true")]);
        run.success();
        assert!(
            !run.stdout.is_empty() && !run.stderr.contains("::error"),
            "{run:?}"
        );
    }
    // Outside GitHub, the same usage error has no annotation, and still exits 2.
    let run = crate::harness::ecr_push(["push", "x", "--repository", "a", "--jobs", "many"], &[]);
    run.failure(2);
    assert!(
        run.stderr.contains("invalid value 'many'") && !run.stderr.contains("::error"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_runner_platform_without_a_binary_gets_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let layout = data.path().join("layout");
    images::oci_layout(&layout, &TestImage::new("none"));
    let inputs = [
        ("image", layout.to_str().unwrap()),
        ("repository", "team/app"),
    ];

    // No binaries at all (a branch, not a release tag).
    let empty = ActionCheckout::new();
    let step = run_step(empty.path(), &inputs, &[]);
    step.run.failure(1);
    assert_error(
        &step,
        &[
            "no binaries in dist/",
            "ecr-push-linux-x86_64",
            "release tag",
            "binary-path",
        ],
    );

    // Binaries for other platforms only: the error lists them.
    let binary = test_binary();
    let others = ActionCheckout::new()
        .with_dist_binary("ecr-push-linux-aarch64", &binary)
        .with_dist_binary("ecr-push-macos-aarch64", &binary);
    let step = run_step(others.path(), &inputs, &[]);
    step.run.failure(1);
    assert_error(
        &step,
        &["linux-x86_64", "linux-aarch64 macos-aarch64", "binary-path"],
    );

    // A binary-path that does not exist.
    let step = run_step(
        empty.path(),
        &[
            inputs[0],
            inputs[1],
            ("binary-path", "/nonexistent/ecr-push"),
        ],
        &[],
    );
    step.run.failure(1);
    assert_error(&step, &["binary-path", "/nonexistent/ecr-push"]);
}

#[test]
fn a_binary_that_fails_its_checksum_is_not_run() {
    let data = tempfile::tempdir().unwrap();
    let marker = data.path().join("ran");
    // A stand-in binary that leaves a trace if it is ever run.
    let fake = data.path().join("fake-ecr-push");
    std::fs::write(&fake, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inputs = [("image", "image.tar"), ("repository", "team/app")];

    // The listed checksum is another file's.
    let tampered = ActionCheckout::new();
    std::fs::copy(&fake, tampered.path().join("dist/ecr-push-linux-x86_64")).unwrap();
    let wrong = "0".repeat(64);
    tampered.append_sum(&format!("{wrong}  ecr-push-linux-x86_64\n"));
    let step = run_step(tampered.path(), &inputs, &[]);
    step.run.failure(1);
    assert_error(&step, &["checksum mismatch", &wrong, "refusing to run"]);
    assert!(!marker.exists(), "the tampered binary was run");

    // No checksum listed for it.
    let unlisted = ActionCheckout::new();
    std::fs::copy(&fake, unlisted.path().join("dist/ecr-push-linux-x86_64")).unwrap();
    unlisted.append_sum(&format!("{wrong}  ecr-push-macos-aarch64\n"));
    let step = run_step(unlisted.path(), &inputs, &[]);
    step.run.failure(1);
    assert_error(
        &step,
        &["no checksum for ecr-push-linux-x86_64", "unverified"],
    );
    assert!(!marker.exists(), "the unlisted binary was run");

    // No SHA256SUMS at all.
    let unsummed = ActionCheckout::new();
    std::fs::copy(&fake, unsummed.path().join("dist/ecr-push-linux-x86_64")).unwrap();
    let step = run_step(unsummed.path(), &inputs, &[]);
    step.run.failure(1);
    assert_error(&step, &["SHA256SUMS is missing"]);
    assert!(!marker.exists(), "the unverified binary was run");

    // The same file with its right checksum is run: the check above is what stopped it.
    let good = ActionCheckout::new().with_dist_binary("ecr-push-linux-x86_64", &fake);
    run_step(good.path(), &inputs, &[]).run.success();
    assert!(marker.exists(), "a verified binary is run");
}

/// One `::error` annotation naming everything in `needles`, and no outputs.
#[track_caller]
fn assert_error(step: &StepRun, needles: &[&str]) {
    let errors: Vec<&str> = step
        .run
        .stderr
        .lines()
        .filter(|l| l.starts_with("::error"))
        .collect();
    assert_eq!(errors.len(), 1, "one annotation:\n{}", step.run.stderr);
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "the error lacks {needle:?}: {}",
            errors[0]
        );
    }
    assert!(step.outputs.is_empty(), "{:?}", step.outputs);
}
