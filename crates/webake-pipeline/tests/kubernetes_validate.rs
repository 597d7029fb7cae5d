//! The rendered Job and CronJobs (the bake's and the gc's) validate offline against the Kubernetes OpenAPI schemas in strict
//! mode (unknown fields are errors) with PyPI's `kubernetes-validate`. The tool is a test
//! requirement (see requirements-test.txt): when it is missing this test fails, it never skips.

mod common;

use std::process::Command;

use common::rendered;

const TOOL: &str = "kubernetes-validate";
const KUBERNETES_VERSION: &str = "1.30";

#[test]
fn job_and_cronjob_validate_strictly_against_kubernetes_schemas() {
    // The Job, the bake's CronJob and the gc's.
    validate_case("ami", 3);
}

/// Several cluster repositories: the Job's bake is an init container, the rollout its
/// container, the targets file a ConfigMap.
#[test]
fn job_cronjob_and_configmap_of_several_clusters_validate_strictly() {
    validate_case("ami-clusters", 4);
}

fn validate_case(case: &str, expected: usize) {
    let out = rendered(case);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for doc in out
        .documents
        .iter()
        .filter(|d| matches!(d.kind, "Job" | "CronJob" | "ConfigMap"))
    {
        let path = dir.path().join(&doc.file_name);
        std::fs::write(&path, format!("{}---\n{}", out.header, doc.yaml)).unwrap();
        files.push(path);
    }
    assert_eq!(
        files.len(),
        expected,
        "{case}: Job, CronJobs (and ConfigMap)"
    );

    let output = validate(&files);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{TOOL} --strict -k {KUBERNETES_VERSION} rejected the rendered manifests ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Be sure each file was really validated, not skipped as an unknown kind.
    for file in &files {
        let name = file.display().to_string();
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("INFO") && l.contains(&name) && l.contains(" passed ")),
            "{TOOL} did not report {name} as valid:\n{stdout}\n{stderr}"
        );
    }
}

/// The check has teeth: strict mode rejects a field the schema does not know.
#[test]
fn kubernetes_validate_rejects_an_unknown_field_in_strict_mode() {
    let out = rendered("ami");
    let job = out.documents.iter().find(|d| d.kind == "Job").unwrap();
    let tampered = job.yaml.replacen("spec:\n", "spec:\n  retries: 2\n", 1);
    assert_ne!(tampered, job.yaml);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, tampered).unwrap();
    let output = validate(&[path]);
    assert!(
        !output.status.success(),
        "{TOOL} --strict accepted an unknown field"
    );
}

fn validate(files: &[std::path::PathBuf]) -> std::process::Output {
    match Command::new(TOOL)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
    {
        Ok(output) => output,
        Err(err) => panic!(
            "cannot run `{TOOL}` ({err}); it is required by this test: \
             pip install -r crates/webake-pipeline/requirements-test.txt \
             (or: pip install kubernetes-validate)"
        ),
    }
}
