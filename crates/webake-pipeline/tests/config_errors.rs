//! Config, service descriptor and recipe errors name the file and the field.

mod common;

use std::path::Path;

use common::fixture;
use webake_pipeline::config::DEFAULT_SCHEDULE;
use webake_pipeline::{
    Error, Inputs, PipelineConfig, RecipeRef, ServiceDescriptor, ServiceKind, render,
};

const PATH: &str = "ops/webake-pipeline.yaml";

fn minimal() -> String {
    std::fs::read_to_string(fixture("config-minimal.yaml")).unwrap()
}

fn config_error(text: &str) -> String {
    let err =
        PipelineConfig::from_yaml(text, Path::new(PATH)).expect_err("config must be rejected");
    let message = err.to_string();
    assert!(
        message.starts_with(PATH),
        "the error should start with the file name: {message}"
    );
    message
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = PipelineConfig::from_yaml(&minimal(), Path::new(PATH)).unwrap();
    assert_eq!(config.schedule, DEFAULT_SCHEDULE);
    assert_eq!(config.time_zone, "Etc/UTC");
    assert_eq!(config.source.revision, "main");
    assert_eq!(config.job.backoff_limit, 1);
    assert!(config.secrets.aws.is_none());
}

#[test]
fn unknown_field_names_file_and_field() {
    let message = config_error(&format!("{}imagePullSecrets: [x]\n", minimal()));
    assert!(
        message.starts_with(&format!(
            "{PATH}:10:1: field `imagePullSecrets`: unknown field `imagePullSecrets`"
        )),
        "{message}"
    );
}

#[test]
fn unknown_nested_field_names_file_and_field() {
    let text = minimal().replace(
        "  forge: webake-forge\n",
        "  forge: webake-forge\n  github: gh\n",
    );
    let message = config_error(&text);
    assert!(
        message.starts_with(&format!(
            "{PATH}:6:3: field `secrets.github`: unknown field `github`"
        )),
        "{message}"
    );
}

#[test]
fn missing_field_names_file_and_field() {
    let text = minimal().replace("cachePvc: webake-cache\n", "");
    let message = config_error(&text);
    assert!(message.contains("cachePvc"), "{message}");
}

#[test]
fn wrong_type_names_file_line_and_field() {
    let text = format!("{}job:\n  backoffLimit: many\n", minimal());
    let message = config_error(&text);
    assert_eq!(
        message,
        format!("{PATH}:11:17: field `job.backoffLimit`: invalid i32")
    );
}

#[test]
fn invalid_values_name_the_field() {
    let cases = [
        (
            "namespace: webake\n",
            "namespace: Web_Bake\n",
            "field `namespace`",
        ),
        (
            "serviceAccount: webake\n",
            "serviceAccount: \"\"\n",
            "field `serviceAccount`",
        ),
        (
            "clusterRepo: git@github.com:example/platform-kubernetes.git\n",
            "clusterRepo: platform\n",
            "field `clusterRepo`",
        ),
        (
            "cachePvc: webake-cache\n",
            "cachePvc: webake cache\n",
            "field `cachePvc`",
        ),
        (
            "  forge: webake-forge\n",
            "  forge: Forge\n",
            "field `secrets.forge`",
        ),
    ];
    for (from, to, expected) in cases {
        let text = minimal().replace(from, to);
        assert_ne!(text, minimal(), "{from}");
        let message = config_error(&text);
        assert!(message.contains(expected), "expected {expected}: {message}");
    }
    let extra = [
        ("schedule: weekly\n", "field `schedule`"),
        (
            "resources:\n  limits:\n    gpu: \"1\"\n",
            "field `resources.limits.gpu`",
        ),
        (
            "resources:\n  requests:\n    memory: 4GB\n",
            "field `resources.requests.memory`",
        ),
        ("workDirSizeLimit: lots\n", "field `workDirSizeLimit`"),
        (
            "tolerations:\n  - key: a\n    operator: Is\n",
            "field `tolerations[0].operator`",
        ),
        (
            "job:\n  activeDeadlineSeconds: 0\n",
            "field `job.activeDeadlineSeconds`",
        ),
    ];
    for (add, expected) in extra {
        let message = config_error(&format!("{}{add}", minimal()));
        assert!(message.contains(expected), "expected {expected}: {message}");
    }
}

#[test]
fn missing_file_is_named() {
    let err = PipelineConfig::load(Path::new("/nonexistent/pipeline.yaml")).unwrap_err();
    assert!(matches!(err, Error::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/pipeline.yaml"),
        "{err}"
    );
}

#[test]
fn service_descriptor_errors_name_file_and_field() {
    let path = Path::new("service.yaml");
    let err = ServiceDescriptor::from_yaml("kind: lambda\nname: x\n", path)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("service.yaml") && err.contains("lambda"),
        "{err}"
    );
    let err = ServiceDescriptor::from_yaml("kind: docker\nname: thumbnailer\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("service.yaml: field `image`"), "{err}");
    let err = ServiceDescriptor::from_yaml("kind: ami\nname: x\nimage: y\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `image`"), "{err}");
    let err = ServiceDescriptor::from_yaml("kind: ami\nname: x\nowner: me\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("owner"), "{err}");
    let ok = ServiceDescriptor::from_yaml("kind: ami\nname: webake\n", path).unwrap();
    assert_eq!(ok.kind, ServiceKind::Ami);
    assert_eq!(ok.dockerfile, "Dockerfile");
}

#[test]
fn recipe_is_read_leniently_but_needs_a_name() {
    let path = Path::new("recipes/x.yaml");
    let text = "version: 1\nimage:\n  name: base\n  version: x\nprovisioners: []\n";
    let recipe = RecipeRef::from_yaml(text, path, "recipes/x.yaml").unwrap();
    assert_eq!(recipe.family, "base", "family defaults to the name");
    let text = "image:\n  role: base\n";
    let err = RecipeRef::from_yaml(text, path, "recipes/x.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "recipes/x.yaml: field `image.name`: missing: the recipe must name its image"
    );
    let text = "image:\n  name: a b\n";
    let err = RecipeRef::from_yaml(text, path, "recipes/x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `image.name`"), "{err}");
    let text = "image:\n  name: base\n";
    let err = RecipeRef::from_yaml(text, path, "../x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("relative path inside the repository"), "{err}");
}

#[test]
fn ami_kind_without_recipe_is_an_error() {
    let config = PipelineConfig::load(&fixture("config-minimal.yaml")).unwrap();
    let inputs = Inputs {
        config,
        config_path: "c.yaml".to_owned(),
        service: ServiceDescriptor::default_ami("webake"),
        service_path: None,
        recipe: None,
        recipe_path: None,
    };
    assert!(matches!(render(&inputs), Err(Error::RecipeRequired)));
}

#[test]
fn too_long_recipe_name_is_reported() {
    let config = PipelineConfig::load(&fixture("config-minimal.yaml")).unwrap();
    let name = "a".repeat(50);
    let recipe = RecipeRef::from_yaml(
        &format!("image:\n  name: {name}\n"),
        Path::new("r.yaml"),
        "r.yaml",
    )
    .unwrap();
    let inputs = Inputs {
        config,
        config_path: "c.yaml".to_owned(),
        service: ServiceDescriptor::default_ami("webake"),
        service_path: None,
        recipe: Some(recipe),
        recipe_path: Some("r.yaml".to_owned()),
    };
    let err = render(&inputs).unwrap_err().to_string();
    assert!(err.contains("recipe name") && err.contains("52"), "{err}");
}

#[test]
fn minimal_config_renders_without_optional_sections() {
    let config = PipelineConfig::load(&fixture("config-minimal.yaml")).unwrap();
    let recipe = RecipeRef::load(&fixture("recipe.yaml"), "recipes/debian.yaml").unwrap();
    let inputs = Inputs {
        config,
        config_path: "c.yaml".to_owned(),
        service: ServiceDescriptor::default_ami(&recipe.name),
        service_path: None,
        recipe: Some(recipe),
        recipe_path: Some("r.yaml".to_owned()),
    };
    let out = render(&inputs).unwrap();
    let text = out.to_multi_document();
    assert!(
        text.contains("# service: none given (kind ami, name debian-12-base)"),
        "{text}"
    );
    assert!(
        !text.contains("AWS_ACCESS_KEY_ID"),
        "no AWS secret configured: IRSA"
    );
    assert!(!text.contains("registry-auth"));
    assert!(!text.contains("tolerations"));
    webake_pipeline::parse::parse_documents(&text).unwrap();
}

/// The recipe shipped in the repository is read by the lenient reader (guards format drift).
#[test]
fn the_example_recipe_of_the_repository_is_readable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/debian-minimal.yaml");
    let recipe = RecipeRef::load(&path, "recipes/debian-minimal.yaml").unwrap();
    assert_eq!(recipe.name, "debian-minimal");
    assert_eq!(recipe.family, "debian-12-minimal");
}

#[test]
fn publish_defaults_to_aws_and_github_comes_from_the_cluster_repo() {
    let config = PipelineConfig::from_yaml(&minimal(), Path::new(PATH)).unwrap();
    assert_eq!(
        config.publish.to,
        webake_pipeline::config::PublishTarget::Aws
    );
    assert!(config.publish.region.is_none() && config.publish.copy_to.is_empty());
    // git@github.com:example/platform-kubernetes.git
    assert_eq!(
        config.github_repo().as_deref(),
        Some("example/platform-kubernetes")
    );
    for (url, slug) in [
        ("https://github.com/o/r.git", Some("o/r")),
        ("https://github.com/o/r", Some("o/r")),
        ("ssh://git@github.com/o/r.git", Some("o/r")),
        ("https://gitlab.com/o/r.git", None),
        ("https://github.com/o", None),
    ] {
        assert_eq!(
            webake_pipeline::config::github_slug_of(url).as_deref(),
            slug,
            "{url}"
        );
    }
}

#[test]
fn bad_publish_and_github_settings_name_the_field() {
    let message = config_error(&format!("{}github: not-a-slug\n", minimal()));
    assert!(message.contains("field `github`"), "{message}");
    let message = config_error(&format!("{}publish:\n  region: Ireland\n", minimal()));
    assert!(message.contains("field `publish.region`"), "{message}");
    let message = config_error(&format!(
        "{}publish:\n  region: eu-west-1\n  copyTo: [us-east-1, x]\n",
        minimal()
    ));
    assert!(message.contains("field `publish.copyTo[1]`"), "{message}");
    let message = config_error(&format!(
        "{}publish:\n  to: local\n  region: eu-west-1\n",
        minimal()
    ));
    assert!(message.contains("field `publish.to`"), "{message}");
    let message = config_error(&format!("{}publish:\n  to: gcp\n", minimal()));
    assert!(message.contains("publish.to"), "{message}");
}
