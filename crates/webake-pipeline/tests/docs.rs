//! docs/kubernetes.md stays true: its config and service examples parse with the real types, and
//! its IAM policy is valid JSON granting every action publishing needs.

use std::path::Path;

use webake_pipeline::{PipelineConfig, ServiceDescriptor};

fn guide() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubernetes.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fenced blocks of `lang`, dedented (a block inside a list item is indented).
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed == format!("```{lang}") => current = Some((indent, String::new())),
            Some(_) if trimmed == "```" => out.push(current.take().unwrap().1),
            Some((indent, body)) => {
                body.push_str(line.get(*indent..).unwrap_or("").trim_end());
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn the_guide_config_example_is_a_valid_config() {
    let guide = guide();
    let example = blocks(&guide, "yaml")
        .into_iter()
        .find(|b| b.starts_with("namespace:"))
        .expect("a config example starting with `namespace:`");
    let config = PipelineConfig::from_yaml(&example, Path::new("docs/kubernetes.md")).unwrap();
    assert_eq!(config.schedule, webake_pipeline::config::DEFAULT_SCHEDULE);
    assert_eq!(
        config.job,
        webake_pipeline::config::JobSettings::default(),
        "the guide shows the defaults"
    );
    assert_eq!(
        config.tool_images,
        webake_pipeline::config::ToolImages::default(),
        "the guide shows the defaults"
    );
}

#[test]
fn the_guide_service_example_is_a_valid_descriptor() {
    let guide = guide();
    let example = blocks(&guide, "yaml")
        .into_iter()
        .find(|b| b.starts_with("kind: ami"))
        .expect("a service descriptor example");
    ServiceDescriptor::from_yaml(&example, Path::new("docs/kubernetes.md")).unwrap();
}

#[test]
fn the_guide_iam_policy_grants_every_publishing_action() {
    let guide = guide();
    let policy = blocks(&guide, "json")
        .into_iter()
        .next()
        .expect("an IAM policy");
    let policy: serde_json::Value =
        serde_json::from_str(&policy).expect("the IAM policy is valid JSON");
    let mut granted = Vec::new();
    for statement in policy["Statement"].as_array().expect("Statement list") {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            serde_json::Value::String(a) => granted.push(a.clone()),
            serde_json::Value::Array(list) => {
                granted.extend(list.iter().map(|a| a.as_str().unwrap().to_owned()))
            }
            other => panic!("unexpected Action {other}"),
        }
    }
    let required = [
        "ebs:StartSnapshot",
        "ebs:PutSnapshotBlock",
        "ebs:CompleteSnapshot",
        "ebs:ListSnapshotBlocks",
        "ebs:GetSnapshotBlock",
        "ec2:DescribeSnapshots",
        "ec2:RegisterImage",
        "ec2:DescribeImages",
        "ec2:CopyImage",
        "ec2:CreateTags",
        "ec2:ModifyImageAttribute",
        "ec2:ModifySnapshotAttribute",
        "ec2:DeregisterImage",
        "ec2:DeleteSnapshot",
        "ec2:EnableImageDeprecation",
        "kms:CreateGrant",
        "kms:DescribeKey",
        "kms:GenerateDataKeyWithoutPlaintext",
    ];
    let missing: Vec<_> = required
        .iter()
        .filter(|a| !granted.iter().any(|g| g == *a))
        .collect();
    assert!(
        missing.is_empty(),
        "the IAM policy in docs/kubernetes.md lacks {missing:?}"
    );
}
