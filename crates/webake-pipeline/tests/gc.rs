//! The gc CronJob (`gc:` in the pipeline config): rendered only when asked for, runs
//! `webake gc` for the recipe's family on the catalog of the PVC with the cluster repositories
//! of the config, unprivileged, with the AWS credentials but no forge token; its settings are
//! validated like the others. (It validates strictly against the Kubernetes schemas in
//! `kubernetes_validate.rs`, and is pinned by the golden files.)

mod common;

use std::path::Path;

use common::{fixture, inputs, rendered};
use webake_pipeline::parse::{Resource, parse_documents};
use webake_pipeline::{PipelineConfig, render};

fn gc_cronjob(case: &str) -> webake_pipeline::k8s::CronJob {
    let out = rendered(case);
    let gc: Vec<_> = out
        .documents
        .iter()
        .filter(|d| d.file_name == "cronjob-gc.yaml")
        .collect();
    assert_eq!(gc.len(), 1, "{case}: one gc CronJob");
    match parse_documents(&gc[0].yaml).unwrap().remove(0) {
        Resource::CronJob(c) => *c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_gc_cronjob_runs_webake_gc_for_the_family_with_the_cluster_repository() {
    let cj = gc_cronjob("ami");
    assert_eq!(
        cj.metadata.name.as_deref(),
        Some("webake-gc-debian-12-base")
    );
    assert_eq!(cj.metadata.labels["app.kubernetes.io/component"], "gc");
    assert_eq!(cj.metadata.labels["webake.dev/family"], "debian-12");
    assert_eq!(cj.spec.schedule, "0 6 * * 0");
    assert_eq!(cj.spec.concurrency_policy, "Forbid");
    let pod = &cj.spec.job_template.spec.template.spec;
    assert!(pod.init_containers.is_empty());
    let [c] = &pod.containers[..] else {
        panic!("one container: {:?}", pod.containers)
    };
    assert_eq!(
        c.command,
        ["/usr/bin/tini", "-s", "--", "/usr/local/bin/webake"]
    );
    assert_eq!(
        c.args,
        [
            "gc",
            "--family",
            "debian-12",
            "--keep",
            "4",
            "--older-than",
            "30d",
            "--repo",
            "https://github.com/example/platform-kubernetes.git",
            "--aws",
            "--grace",
            "7d"
        ]
    );
    assert!(c.security_context.is_none(), "unprivileged");
    let env: Vec<&str> = c.env.iter().map(|e| e.name.as_str()).collect();
    assert!(
        env.contains(&"WEBAKE_DATA_DIR") && env.contains(&"AWS_ACCESS_KEY_ID"),
        "{env:?}"
    );
    assert!(!env.contains(&"GITHUB_TOKEN"), "no forge token: {env:?}");
    assert_eq!(pod.automount_service_account_token, Some(false));
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [("state", "/var/lib/webake"), ("work", "/var/tmp/webake")]
    );
}

#[test]
fn with_several_cluster_repositories_the_gc_reads_the_targets_file() {
    let cj = gc_cronjob("ami-clusters");
    let pod = &cj.spec.job_template.spec.template.spec;
    let c = &pod.containers[0];
    assert_eq!(
        c.args,
        [
            "gc",
            "--family",
            "debian-12",
            "--keep",
            "2",
            "--targets",
            "/etc/webake/rollout/targets.yaml",
            "--aws"
        ]
    );
    assert_eq!(
        cj.spec.schedule,
        webake_pipeline::config::DEFAULT_GC_SCHEDULE
    );
    assert!(
        c.volume_mounts
            .iter()
            .any(|m| m.mount_path == "/etc/webake/rollout" && m.read_only == Some(true))
    );
    assert!(pod.volumes.iter().any(|v| v.name == "rollout-targets"));
}

#[test]
fn no_gc_section_renders_no_gc_cronjob() {
    let mut i = inputs("ami");
    i.config = PipelineConfig::load(&fixture("config-minimal.yaml")).expect("minimal config");
    assert!(i.config.gc.is_none());
    let out = render(&i).unwrap();
    assert!(
        out.documents
            .iter()
            .all(|d| d.file_name != "cronjob-gc.yaml")
    );
    let crons = out.documents.iter().filter(|d| d.kind == "CronJob").count();
    assert_eq!(crons, 1, "only the bake's");
}

#[test]
fn local_publishing_gc_keeps_to_the_catalog_unless_told() {
    let minimal = std::fs::read_to_string(fixture("config-minimal.yaml")).unwrap();
    let text = format!("{minimal}publish:\n  to: local\ngc:\n  olderThan: 2w\n");
    let mut i = inputs("ami");
    i.config = PipelineConfig::from_yaml(&text, Path::new("p.yaml")).unwrap();
    let out = render(&i).unwrap();
    let doc = out
        .documents
        .iter()
        .find(|d| d.file_name == "cronjob-gc.yaml")
        .unwrap();
    assert!(!doc.yaml.contains("--aws"), "{}", doc.yaml);
    assert!(
        doc.yaml.contains("- --older-than\n") && doc.yaml.contains("- 2w\n"),
        "{}",
        doc.yaml
    );
    assert!(!doc.yaml.contains("AWS_ACCESS_KEY_ID"), "{}", doc.yaml);
}

#[test]
fn gc_settings_are_validated_with_the_field_named() {
    let minimal = std::fs::read_to_string(fixture("config-minimal.yaml")).unwrap();
    let cases = [
        ("gc:\n  keep: 0\n", "field `gc.keep`"),
        ("gc:\n  olderThan: a month\n", "field `gc.olderThan`"),
        ("gc:\n  grace: 7\n", "field `gc.grace`"),
        ("gc:\n  schedule: weekly\n", "field `gc.schedule`"),
        ("gc:\n  keepLast: 2\n", "field `gc.keepLast`"),
        (
            "publish:\n  to: local\ngc:\n  grace: 7d\n",
            "field `gc.grace`: applies to AMIs",
        ),
        (
            "gc:\n  aws: false\n  deprecateOnly: true\n",
            "field `gc.deprecateOnly`: applies to AMIs",
        ),
    ];
    for (add, expected) in cases {
        let err = PipelineConfig::from_yaml(&format!("{minimal}{add}"), Path::new("p.yaml"))
            .expect_err(add)
            .to_string();
        assert!(
            err.starts_with("p.yaml") && err.contains(expected),
            "{add:?}: expected {expected}: {err}"
        );
    }
}
