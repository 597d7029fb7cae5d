//! Several cluster repositories (`clusterRepos`): the rollout targets file in the ConfigMap is
//! read by webake-rollout's own parser, and names the forge and the token variable of each
//! repository; every token variable the targets name is given to the pods that run the
//! rollout, from the Secret the config names.

mod common;

use std::path::Path;

use common::{fixture, rendered};
use webake_pipeline::parse::{Resource, parse_documents};
use webake_pipeline::{PipelineConfig, render::targets_yaml};
use webake_rollout::{ForgeConfig, RolloutTargets};

fn config() -> PipelineConfig {
    PipelineConfig::load(&fixture("config-clusters.yaml")).unwrap()
}

#[test]
fn the_configmap_holds_a_targets_file_the_rollout_reads() {
    let out = rendered("ami-clusters");
    let resources = parse_documents(&out.to_multi_document()).unwrap();
    let Some(Resource::ConfigMap(cm)) = resources.first() else {
        panic!("the first document is the ConfigMap: {resources:?}")
    };
    assert_eq!(cm.metadata.name.as_deref(), Some("webake-rollout-targets"));
    let text = &cm.data["targets.yaml"];
    assert_eq!(text, &targets_yaml(&config()).unwrap());
    let targets = RolloutTargets::from_yaml(text, "targets.yaml").unwrap();
    let forges: Vec<ForgeConfig> = targets
        .repositories
        .iter()
        .map(|t| t.forge_config())
        .collect();
    assert_eq!(
        forges,
        [
            ForgeConfig::GitHub {
                api_base: webake_rollout::GITHUB_API.into(),
                owner: "example".into(),
                repo: "platform-kubernetes".into(),
                token_env: "GITHUB_TOKEN".into(),
            },
            ForgeConfig::GitLab {
                api_base: "https://gitlab.example.com/api/v4".into(),
                project: "infra/edge-clusters".into(),
                token_env: "GITLAB_TOKEN".into(),
            },
        ]
    );
    let edge = &targets.repositories[1];
    assert_eq!(edge.base_branch.as_deref(), Some("production"));
    assert_eq!(edge.config.as_deref(), Some("ops/webake-rollout.yaml"));
    assert_eq!(edge.labels, ["edge"]);
}

#[test]
fn the_rollout_pods_get_every_token_the_targets_name() {
    let out = rendered("ami-clusters");
    let resources = parse_documents(&out.to_multi_document()).unwrap();
    let env_of = |env: &[webake_pipeline::k8s::EnvVar]| -> Vec<(String, String)> {
        env.iter()
            .filter_map(|e| {
                let secret = &e.value_from.as_ref()?.secret_key_ref;
                (secret.key == "token").then(|| (e.name.clone(), secret.name.clone()))
            })
            .collect()
    };
    let want = [
        ("GITHUB_TOKEN".to_string(), "webake-forge".to_string()),
        ("GITLAB_TOKEN".to_string(), "webake-gitlab".to_string()),
    ];
    let mut checked = 0;
    for r in &resources {
        match r {
            Resource::Job(job) => {
                let pod = &job.spec.template.spec;
                let [clone, bake] = pod.init_containers.as_slice() else {
                    panic!("clone and bake run first: {pod:?}")
                };
                assert_eq!((clone.name.as_str(), bake.name.as_str()), ("clone", "bake"));
                assert!(bake.args.contains(&"--no-rollout".to_string()));
                assert!(
                    env_of(&bake.env).is_empty(),
                    "the bake needs no forge token"
                );
                let [rollout] = pod.containers.as_slice() else {
                    panic!("{pod:?}")
                };
                assert_eq!(env_of(&rollout.env), want);
                assert_eq!(
                    rollout.security_context, None,
                    "the rollout is unprivileged"
                );
                checked += 1;
            }
            Resource::Task(task) if task.metadata.name.as_deref() == Some("webake-rollout") => {
                assert_eq!(env_of(&task.spec.steps[0].env), want);
                checked += 1;
            }
            _ => {}
        }
    }
    assert_eq!(checked, 2);
}

#[test]
fn cluster_repos_mistakes_name_the_field() {
    let base = std::fs::read_to_string(fixture("config-clusters.yaml")).unwrap();
    let path = Path::new("ops/pipeline.yaml");
    let err = |text: &str| {
        PipelineConfig::from_yaml(text, path)
            .expect_err("must be rejected")
            .to_string()
    };
    let both = format!("{base}clusterRepo: https://github.com/example/x.git\n");
    assert!(
        err(&both).contains("field `clusterRepos`"),
        "{}",
        err(&both)
    );
    let github = format!("{base}github: example/x\n");
    assert!(err(&github).contains("field `github`"), "{}", err(&github));
    let edit = |from: &str, to: &str| {
        assert!(base.contains(from), "fixture changed: {from}");
        base.replacen(from, to, 1)
    };
    for (text, field) in [
        (
            edit("gitlab: infra/edge-clusters", "gitlab: edge-clusters"),
            "clusterRepos[1].gitlab",
        ),
        (
            edit(
                "gitlab: infra/edge-clusters",
                "gitlab: infra/edge-clusters\n    github: infra/edge",
            ),
            "clusterRepos[1].gitlab",
        ),
        (
            edit(
                "gitlabApi: https://gitlab.example.com/api/v4",
                "gitlabApi: gitlab.example.com",
            ),
            "clusterRepos[1].gitlabApi",
        ),
        (
            edit("tokenEnv: GITLAB_TOKEN", "tokenEnv: GITHUB_TOKEN"),
            "clusterRepos[1].tokenEnv",
        ),
        (
            edit("baseBranch: production", "baseBranch: prod~1"),
            "clusterRepos[1].baseBranch",
        ),
        (
            edit("config: ops/webake-rollout.yaml", "config: ../rollout.yaml"),
            "clusterRepos[1].config",
        ),
        (
            edit(
                "https://gitlab.example.com/infra/edge-clusters.git",
                "https://github.com/example/platform-kubernetes.git",
            ),
            "clusterRepos[1].repo",
        ),
        (
            edit(
                "  - repo: https://github.com/example/platform-kubernetes.git\n",
                "  - repo: https://github.com/example/platform-kubernetes.git\n    sshKey: x\n",
            ),
            "sshKey",
        ),
    ] {
        let message = err(&text);
        assert!(
            message.starts_with("ops/pipeline.yaml") && message.contains(field),
            "expected {field}: {message}"
        );
    }
    let none = base.split("clusterRepos:").next().unwrap().to_string()
        + "source:\n  repo: https://github.com/example/webake-images.git\ncachePvc: c\n";
    let message = err(&none);
    assert!(
        message.contains("field `clusterRepo`: missing"),
        "a config without a cluster repository is refused: {message}"
    );
}
