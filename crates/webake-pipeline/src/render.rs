//! Rendering: config + service descriptor + recipe -> typed resources -> YAML documents.
//!
//! The functions that build resources are pure; their output is pinned by golden files. The
//! command lines webake is started with inside the pods are built in [`contract`], in one place,
//! so the CLI and the manifests cannot drift apart unnoticed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Error;
use crate::config::{
    ClusterForge, GcSettings, PipelineConfig, RecipeRef, ServiceDescriptor, ServiceKind,
};
use crate::k8s::{
    ConfigMap, Container, CronJob, CronJobSpec, EnvVar, Job, JobSpec, JobTemplateSpec, KeyToPath,
    ObjectMeta, PersistentVolumeClaimSpec, PersistentVolumeClaimTemplate,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use crate::tekton::{
    self, Param, ParamSpec, Pipeline, PipelineRef, PipelineResult, PipelineRun, PipelineRunSpec,
    PipelineSpec, PipelineTask, PipelineTaskRunTemplate, PipelineWorkspaceDeclaration, PodTemplate,
    Step, Task, TaskRef, TaskResult, TaskSpec, TimeoutFields, TriggerBinding, TriggerBindingSpec,
    TriggerParamSpec, TriggerTemplate, TriggerTemplateSpec, WorkspaceBinding, WorkspaceDeclaration,
    WorkspacePipelineTaskBinding,
};

/// Where the bake pod keeps things (the same paths in the Job and in Tekton's bake task).
pub mod paths {
    /// The git checkout of the recipes (Job: emptyDir filled by the clone init container).
    pub const SOURCE: &str = "/workspace/source";
    /// The PVC: `data/` (catalog, artifacts) and `cache/` (bootstrap and layer cache).
    pub const STATE: &str = "/var/lib/webake";
    /// Scratch space (emptyDir on the node's disk). Overlayfs refuses an overlay filesystem as
    /// its upper directory, so layers cannot be built on the container's own root filesystem.
    pub const WORK: &str = "/var/tmp/webake";
    /// With several cluster repositories: the rollout targets file, from the ConfigMap.
    pub const TARGETS: &str = "/etc/webake/rollout";
    /// With several cluster repositories, the Job's bake (an init container) hands the image id
    /// to its rollout container here (on the shared scratch volume).
    pub const IMAGE_ID_FILE: &str = "/var/tmp/webake/image-id";
    pub const AMI_IDS_FILE: &str = "/var/tmp/webake/ami-ids.json";
}

/// The ConfigMap holding the rollout targets file (several cluster repositories).
pub const TARGETS_CONFIG_MAP: &str = "webake-rollout-targets";

/// The command lines of webake inside the pods. `webake run` and `webake rollout` must accept
/// these arguments (a unit test of the `webake` crate, `cmd::run::tests`, parses them with the
/// real CLI); change them here and the golden files show every manifest that changes.
pub mod contract {
    /// How webake is started in the container: under tini (as in the Dockerfile's ENTRYPOINT),
    /// which reaps orphaned grandchildren (mmdebstrap, ansible, qemu). `-s` makes tini a
    /// subreaper where it is not PID 1 (Tekton runs steps under its own entrypoint).
    pub const COMMAND: [&str; 4] = ["/usr/bin/tini", "-s", "--", "/usr/local/bin/webake"];

    pub fn command() -> Vec<String> {
        to_strings(&COMMAND)
    }

    /// Key of the forge token in its Secret.
    pub const FORGE_TOKEN_KEY: &str = "token";

    /// Where and how the pods publish and propose: from the config.
    #[derive(Debug, Clone, Copy)]
    pub struct Targets<'a> {
        /// `aws` or `local` (`webake run --publish`).
        pub publish: &'a str,
        /// `--region` for `--publish aws` (else `$AWS_REGION` in the pod).
        pub region: Option<&'a str>,
        /// `--copy-to` regions for `--publish aws`.
        pub copy_to: &'a [String],
        /// `OWNER/REPO` for `--github` (no pull request without it: the branch is pushed).
        pub github: Option<&'a str>,
        /// The variable the forge token is given in (`--token-env`).
        pub token_env: &'a str,
    }

    impl<'a> Targets<'a> {
        pub fn of(config: &'a crate::config::PipelineConfig, github: Option<&'a str>) -> Self {
            Self {
                publish: config.publish.to.as_str(),
                region: config.publish.region.as_deref(),
                copy_to: &config.publish.copy_to,
                github,
                token_env: &config.secrets.forge_token_env,
            }
        }

        /// `--publish TO`, and the AWS options after `--` (they must come last).
        fn publish_args(&self) -> (Vec<String>, Vec<String>) {
            let publish = to_strings(&["--publish", self.publish]);
            let mut aws = Vec::new();
            if self.publish == "aws" {
                if let Some(region) = self.region {
                    aws.extend(to_strings(&["--region", region]));
                }
                if !self.copy_to.is_empty() {
                    aws.push("--copy-to".to_owned());
                    aws.push(self.copy_to.join(","));
                }
            }
            let aws = if aws.is_empty() {
                aws
            } else {
                std::iter::once("--".to_owned()).chain(aws).collect()
            };
            (publish, aws)
        }

        fn forge_args(&self) -> Vec<String> {
            match self.github {
                Some(slug) => to_strings(&["--github", slug, "--token-env", self.token_env]),
                None => Vec::new(),
            }
        }
    }

    /// The Job: `webake run`: bake (skipped when the inputs are unchanged), boot test,
    /// publish, and the rollout pull request.
    pub fn run(recipe: &str, cluster_repo: &str, targets: &Targets<'_>) -> Vec<String> {
        let (publish, aws) = targets.publish_args();
        let mut args = to_strings(&["run", recipe]);
        args.extend(publish);
        args.extend(to_strings(&["--cluster-repo", cluster_repo]));
        args.extend(targets.forge_args());
        args.extend(aws);
        args
    }

    /// Tekton's bake task: `webake run` without the rollout; the image id and the AMI ids
    /// (JSON object region -> AMI id) written to result files.
    pub fn run_no_rollout(
        recipe: &str,
        image_id_file: &str,
        ami_ids_file: &str,
        targets: &Targets<'_>,
    ) -> Vec<String> {
        let (publish, aws) = targets.publish_args();
        let mut args = to_strings(&["run", recipe]);
        args.extend(publish);
        args.extend(to_strings(&[
            "--no-rollout",
            "--image-id-file",
            image_id_file,
            "--ami-ids-file",
            ami_ids_file,
        ]));
        args.extend(aws);
        args
    }

    /// Tekton's rollout task: `webake rollout IMAGE_ID --repo URL`, the pull request for an
    /// image already in the catalog (its AMIs from the catalog's publications); the pull
    /// request URL written to a result file (empty when none was opened).
    pub fn rollout(
        image_id: &str,
        cluster_repo: &str,
        pr_url_file: &str,
        targets: &Targets<'_>,
    ) -> Vec<String> {
        let mut args = to_strings(&[
            "rollout",
            image_id,
            "--repo",
            cluster_repo,
            "--pr-url-file",
            pr_url_file,
        ]);
        args.extend(targets.forge_args());
        args
    }

    /// Key of the rollout targets file in its ConfigMap, and where the pods see it.
    pub const TARGETS_KEY: &str = "targets.yaml";
    pub const TARGETS_FILE: &str = "/etc/webake/rollout/targets.yaml";

    /// The image `webake rollout` proposes: a catalog id, or a file holding one.
    #[derive(Debug, Clone, Copy)]
    pub enum RolloutImage<'a> {
        Id(&'a str),
        IdFile(&'a str),
    }

    /// Several cluster repositories: `webake rollout IMAGE --targets FILE`, one pull request
    /// (or merge request) in each repository of the file, each with its own forge and token;
    /// the URLs written one per line to `pr_url_file`.
    pub fn rollout_targets(
        image: RolloutImage<'_>,
        targets_file: &str,
        pr_url_file: Option<&str>,
    ) -> Vec<String> {
        let mut args = vec!["rollout".to_owned()];
        match image {
            RolloutImage::Id(id) => args.push(id.to_owned()),
            RolloutImage::IdFile(file) => args.extend(to_strings(&["--image-file", file])),
        }
        args.extend(to_strings(&["--targets", targets_file]));
        if let Some(file) = pr_url_file {
            args.extend(to_strings(&["--pr-url-file", file]));
        }
        args
    }

    /// Where the gc finds the cluster repositories whose references keep images.
    #[derive(Debug, Clone, Copy)]
    pub enum GcRepos<'a> {
        /// One cluster repository (`--repo`).
        Repo(&'a str),
        /// The rollout targets file of several (`--targets`).
        Targets(&'a str),
    }

    /// The gc CronJob: `webake gc --family F --keep N [--older-than D] (--repo URL |
    /// --targets FILE) [--aws [--grace D] [--deprecate-only]]`.
    pub fn gc(
        family: &str,
        settings: &crate::config::GcSettings,
        repos: GcRepos<'_>,
        aws: bool,
    ) -> Vec<String> {
        let keep = settings.keep.to_string();
        let mut args = to_strings(&["gc", "--family", family, "--keep", &keep]);
        if let Some(age) = &settings.older_than {
            args.extend(to_strings(&["--older-than", age]));
        }
        args.extend(match repos {
            GcRepos::Repo(url) => to_strings(&["--repo", url]),
            GcRepos::Targets(file) => to_strings(&["--targets", file]),
        });
        if aws {
            args.push("--aws".to_owned());
            if let Some(grace) = &settings.grace {
                args.extend(to_strings(&["--grace", grace]));
            }
            if settings.deprecate_only {
                args.push("--deprecate-only".to_owned());
            }
        }
        args
    }

    fn to_strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }
}

const PRIVILEGED_ANNOTATION: &str = "webake.dev/privileged-because";
const PRIVILEGED_REASON: &str = "the bake mounts in a private mount namespace (mount/unshare need CAP_SYS_ADMIN \
     outside the runtime's seccomp and AppArmor profiles), may attach /dev/loop* and uses /dev/kvm, which \
     the device cgroup only opens to privileged containers; see docs/kubernetes.md";

/// What the documents were rendered from, for the header comment.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub config: PipelineConfig,
    /// The config path as the user gave it (shown in the header).
    pub config_path: String,
    pub service: ServiceDescriptor,
    /// The service descriptor path, or `None` when the default ami kind was used.
    pub service_path: Option<String>,
    /// The recipe (required for the ami kind).
    pub recipe: Option<RecipeRef>,
    /// The recipe path as the user gave it (shown in the header).
    pub recipe_path: Option<String>,
}

/// One rendered YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// File name used with `--out DIR`, e.g. `job.yaml`.
    pub file_name: String,
    pub kind: &'static str,
    pub name: String,
    /// The YAML text, without header or document marker; ends with a newline.
    pub yaml: String,
}

/// All rendered documents, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Comment lines (each starting with `# `) naming the tool and the inputs.
    pub header: String,
    pub documents: Vec<Document>,
}

impl Rendered {
    /// One multi-document YAML stream: the header, then each document after `---`.
    pub fn to_multi_document(&self) -> String {
        let mut out = self.header.clone();
        for doc in &self.documents {
            out.push_str("---\n");
            out.push_str(&doc.yaml);
        }
        out
    }

    /// Write each document to `dir/<file_name>` (header included), replacing files atomically.
    /// Returns the paths written, in order.
    pub fn write_to_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        let mut written = Vec::with_capacity(self.documents.len());
        for doc in &self.documents {
            let path = dir.join(&doc.file_name);
            let tmp = dir.join(format!(".{}.tmp", doc.file_name));
            let text = format!("{}---\n{}", self.header, doc.yaml);
            std::fs::write(&tmp, text).map_err(|source| Error::Write {
                path: tmp.clone(),
                source,
            })?;
            std::fs::rename(&tmp, &path).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Render everything the service's kind calls for.
pub fn render(inputs: &Inputs) -> Result<Rendered, Error> {
    let header = header(inputs);
    let mut docs = Vec::new();
    match inputs.service.kind {
        ServiceKind::Ami => {
            let recipe = inputs.recipe.as_ref().ok_or(Error::RecipeRequired)?;
            let r = AmiRenderer::new(&inputs.config, &inputs.service, recipe)?;
            if r.several {
                docs.push(document(
                    "configmap-rollout-targets.yaml",
                    "ConfigMap",
                    &targets_config_map(&inputs.config)?,
                )?);
            }
            docs.push(document("job.yaml", "Job", &r.job())?);
            docs.push(document("cronjob.yaml", "CronJob", &r.cronjob())?);
            if let Some(gc) = &inputs.config.gc {
                docs.push(document("cronjob-gc.yaml", "CronJob", &r.gc_cronjob(gc)?)?);
            }
            let tasks = [
                git_clone_task(&inputs.config),
                build_image_task(&inputs.config),
                r.bake_task(),
                r.rollout_task(),
            ];
            push_tekton(
                &mut docs,
                &tasks,
                &r.pipeline(),
                &inputs.config,
                &r.pipeline_name,
            )?;
        }
        ServiceKind::Docker => {
            let d = DockerRenderer::new(&inputs.config, &inputs.service)?;
            let tasks = [
                git_clone_task(&inputs.config),
                build_image_task(&inputs.config),
                d.deploy_task(),
            ];
            push_tekton(
                &mut docs,
                &tasks,
                &d.pipeline(),
                &inputs.config,
                &d.pipeline_name,
            )?;
        }
    }
    Ok(Rendered {
        header,
        documents: docs,
    })
}

fn push_tekton(
    docs: &mut Vec<Document>,
    tasks: &[Task],
    pipeline: &Pipeline,
    config: &PipelineConfig,
    pipeline_name: &str,
) -> Result<(), Error> {
    for task in tasks {
        let name = task.metadata.name.clone().unwrap_or_default();
        docs.push(document(&format!("task-{name}.yaml"), "Task", task)?);
    }
    docs.push(document("pipeline.yaml", "Pipeline", pipeline)?);
    let run = pipeline_run(config, pipeline_name, &config.source.revision, pipeline);
    docs.push(document("pipelinerun.yaml", "PipelineRun", &run)?);
    docs.push(document(
        "triggertemplate.yaml",
        "TriggerTemplate",
        &trigger_template(config, pipeline_name, pipeline),
    )?);
    docs.push(document(
        "triggerbinding.yaml",
        "TriggerBinding",
        &trigger_binding(config, pipeline_name, pipeline),
    )?);
    Ok(())
}

fn header(inputs: &Inputs) -> String {
    let mut h = String::from(
        "# Rendered by `webake pipeline render`. Do not edit: change the inputs and render again.\n",
    );
    if let (Some(path), Some(recipe)) = (&inputs.recipe_path, &inputs.recipe) {
        h.push_str(&format!(
            "# recipe: {path} (name {}, family {}, in repository as {})\n",
            recipe.name, recipe.family, recipe.path_in_repo
        ));
    }
    h.push_str(&format!("# config: {}\n", inputs.config_path));
    match &inputs.service_path {
        Some(path) => h.push_str(&format!(
            "# service: {path} (kind {}, name {})\n",
            inputs.service.kind.as_str(),
            inputs.service.name
        )),
        None => h.push_str(&format!(
            "# service: none given (kind {}, name {})\n",
            inputs.service.kind.as_str(),
            inputs.service.name
        )),
    }
    h
}

fn document<T: Serialize>(
    file_name: &str,
    kind: &'static str,
    value: &T,
) -> Result<Document, Error> {
    let yaml = to_yaml(value).map_err(|message| Error::Serialize { kind, message })?;
    let name = name_of(&yaml);
    Ok(Document {
        file_name: file_name.to_owned(),
        kind,
        name,
        yaml,
    })
}

/// Serialize one document as block YAML (strings that YAML 1.1 would read as another type are
/// quoted, so Kubernetes' YAML reader sees the same values).
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, String> {
    let mut yaml = serde_saphyr::to_string(value).map_err(|e| e.to_string())?;
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    Ok(yaml)
}

fn name_of(yaml: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Head {
        metadata: Meta,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        name: Option<String>,
        #[serde(rename = "generateName")]
        generate_name: Option<String>,
    }
    serde_saphyr::from_str::<Head>(yaml)
        .ok()
        .and_then(|h| h.metadata.name.or(h.metadata.generate_name))
        .unwrap_or_default()
}

fn labels(service: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "webake".to_owned(),
        ),
        ("app.kubernetes.io/name".to_owned(), service.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "webake".to_owned()),
    ])
}

fn meta(name: &str, config: &PipelineConfig, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(config.namespace.clone()),
        labels,
        ..ObjectMeta::default()
    }
}

/// A DNS-label name `prefix-name`, checked against `max` (Kubernetes derives labels and child
/// names from it: Job names become a label, CronJob names get an 11-character suffix).
fn object_name(prefix: &str, name: &str, max: usize, field_path: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(prefix.len() + name.len() + 1);
    out.push_str(prefix);
    out.push('-');
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        out.push(if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        });
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.len() > max || !crate::config::is_dns_label(&out) {
        return Err(Error::Name {
            name: out,
            max,
            field: field_path.to_owned(),
        });
    }
    Ok(out)
}

fn pod_env_state(state: &str) -> Vec<EnvVar> {
    vec![
        EnvVar::value("WEBAKE_DATA_DIR", format!("{state}/data")),
        EnvVar::value("WEBAKE_CACHE_DIR", format!("{state}/cache")),
        EnvVar::value("TMPDIR", paths::WORK),
        EnvVar::value("WEBAKE_LOG_FORMAT", "json"),
    ]
}

fn aws_env(config: &PipelineConfig) -> Vec<EnvVar> {
    match &config.secrets.aws {
        Some(secret) => vec![
            EnvVar::secret("AWS_ACCESS_KEY_ID", secret, "AWS_ACCESS_KEY_ID", false),
            EnvVar::secret(
                "AWS_SECRET_ACCESS_KEY",
                secret,
                "AWS_SECRET_ACCESS_KEY",
                false,
            ),
            EnvVar::secret("AWS_SESSION_TOKEN", secret, "AWS_SESSION_TOKEN", true),
        ],
        None => Vec::new(),
    }
}

fn forge_env(config: &PipelineConfig) -> EnvVar {
    EnvVar::secret(
        &config.secrets.forge_token_env,
        &config.secrets.forge,
        contract::FORGE_TOKEN_KEY,
        false,
    )
}

/// The forge tokens of the rollout: one variable per token (`clusterRepos` may name several),
/// each from its Secret's `token` key.
fn rollout_forge_env(config: &PipelineConfig) -> Vec<EnvVar> {
    if config.cluster_repos.is_empty() {
        return vec![forge_env(config)];
    }
    let mut seen = Vec::new();
    let mut env = Vec::new();
    for r in config.cluster_repos.iter().filter(|r| r.has_forge()) {
        let name = r.token_env(config);
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        env.push(EnvVar::secret(
            name,
            r.token_secret(config),
            contract::FORGE_TOKEN_KEY,
            false,
        ));
    }
    env
}

/// The rollout targets file of `clusterRepos`, in the form `webake rollout --targets` reads.
pub fn targets_yaml(config: &PipelineConfig) -> Result<String, Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct TargetsFile<'a> {
        repositories: Vec<Entry<'a>>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct Entry<'a> {
        repo: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        github: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        github_api: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gitlab: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gitlab_api: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token_env: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        base_branch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        config: Option<&'a str>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        labels: &'a [String],
    }
    let repositories = config
        .cluster_repos
        .iter()
        .map(|r| {
            let (github, gitlab) = match r.forge() {
                ClusterForge::GitHub(s) => (Some(s), None),
                ClusterForge::GitLab(p) => (None, Some(p)),
                ClusterForge::None => (None, None),
            };
            Entry {
                repo: &r.repo,
                github_api: github.as_ref().and(r.github_api.as_deref()),
                gitlab_api: gitlab.as_ref().and(r.gitlab_api.as_deref()),
                token_env: r.has_forge().then(|| r.token_env(config)),
                github,
                gitlab,
                base_branch: r.base_branch.as_deref(),
                config: r.config.as_deref(),
                labels: &r.labels,
            }
        })
        .collect();
    to_yaml(&TargetsFile { repositories }).map_err(|message| Error::Serialize {
        kind: "ConfigMap",
        message,
    })
}

fn targets_config_map(config: &PipelineConfig) -> Result<ConfigMap, Error> {
    Ok(ConfigMap {
        api_version: "v1".to_owned(),
        kind: "ConfigMap".to_owned(),
        metadata: meta(TARGETS_CONFIG_MAP, config, labels("webake", "rollout")),
        data: BTreeMap::from([(contract::TARGETS_KEY.to_owned(), targets_yaml(config)?)]),
    })
}

fn targets_volume() -> Volume {
    Volume::config_map("rollout-targets", TARGETS_CONFIG_MAP)
}

fn targets_mount() -> VolumeMount {
    VolumeMount {
        name: "rollout-targets".to_owned(),
        mount_path: paths::TARGETS.to_owned(),
        sub_path: None,
        read_only: Some(true),
    }
}

fn privileged() -> SecurityContext {
    SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    }
}

fn resources(config: &PipelineConfig) -> Option<ResourceRequirements> {
    (!config.resources.is_empty()).then(|| config.resources.clone())
}

struct AmiRenderer<'a> {
    config: &'a PipelineConfig,
    service: &'a ServiceDescriptor,
    recipe: &'a RecipeRef,
    job_name: String,
    cronjob_name: String,
    pipeline_name: String,
    /// `OWNER/REPO` of the cluster repository on GitHub, when known.
    github: Option<String>,
    /// Several cluster repositories (`clusterRepos`): the rollout reads a targets file.
    several: bool,
}

impl<'a> AmiRenderer<'a> {
    fn new(
        config: &'a PipelineConfig,
        service: &'a ServiceDescriptor,
        recipe: &'a RecipeRef,
    ) -> Result<Self, Error> {
        Ok(Self {
            config,
            service,
            recipe,
            // A Job's name becomes the `job-name` label of its pods: at most 63 characters.
            job_name: object_name("webake-bake", &recipe.name, 63, "recipe name")?,
            // The CronJob controller appends `-<11 digits>` to name its Jobs.
            cronjob_name: object_name("webake-bake", &recipe.name, 52, "recipe name")?,
            pipeline_name: object_name("ami", &service.name, 63, "service name")?,
            github: config.github_repo(),
            several: !config.cluster_repos.is_empty(),
        })
    }

    fn targets(&self) -> contract::Targets<'_> {
        contract::Targets::of(self.config, self.github.as_deref())
    }

    fn bake_labels(&self) -> BTreeMap<String, String> {
        let mut l = labels(&self.service.name, "bake");
        l.insert("webake.dev/recipe".to_owned(), self.recipe.name.clone());
        l.insert("webake.dev/family".to_owned(), self.recipe.family.clone());
        l
    }

    fn job_spec(&self) -> JobSpec {
        let c = self.config;
        let source = &c.source;
        let clone = Container {
            name: "clone".to_owned(),
            image: c.image.clone(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: vec!["git".to_owned()],
            args: vec![
                "clone".to_owned(),
                "--depth=1".to_owned(),
                format!("--branch={}", source.revision),
                "--".to_owned(),
                source.repo.clone(),
                paths::SOURCE.to_owned(),
            ],
            working_dir: None,
            env: Vec::new(),
            resources: None,
            security_context: None,
            volume_mounts: vec![VolumeMount::new("source", paths::SOURCE)],
        };
        let mut env = pod_env_state(paths::STATE);
        env.extend(aws_env(c));
        // One cluster repository: `webake run` bakes and proposes. Several: the bake runs as an
        // init container (`--no-rollout`, the image id on the scratch volume), then the
        // rollout container proposes in each repository of the targets file.
        let (args, rollout) = match &c.cluster_repo {
            Some(repo) if !self.several => {
                env.push(forge_env(c));
                (
                    contract::run(&self.recipe.path_in_repo, repo, &self.targets()),
                    None,
                )
            }
            _ => (
                contract::run_no_rollout(
                    &self.recipe.path_in_repo,
                    paths::IMAGE_ID_FILE,
                    paths::AMI_IDS_FILE,
                    &self.targets(),
                ),
                Some(self.rollout_container()),
            ),
        };
        let bake = Container {
            name: "bake".to_owned(),
            image: c.image.clone(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: contract::command(),
            args,
            working_dir: Some(paths::SOURCE.to_owned()),
            env,
            resources: resources(c),
            security_context: Some(privileged()),
            volume_mounts: vec![
                VolumeMount::new("source", paths::SOURCE),
                VolumeMount::new("state", paths::STATE),
                VolumeMount::new("work", paths::WORK),
            ],
        };
        let (init_containers, containers) = match rollout {
            None => (vec![clone], vec![bake]),
            Some(rollout) => (vec![clone, bake], vec![rollout]),
        };
        let mut volumes = vec![
            Volume::empty_dir("source", None),
            Volume::pvc("state", &c.cache_pvc),
            Volume::empty_dir("work", c.work_dir_size_limit.as_deref()),
        ];
        if self.several {
            volumes.push(targets_volume());
        }
        let mut pod_meta = ObjectMeta {
            labels: self.bake_labels(),
            ..ObjectMeta::default()
        };
        pod_meta.annotations.insert(
            PRIVILEGED_ANNOTATION.to_owned(),
            PRIVILEGED_REASON.to_owned(),
        );
        JobSpec {
            backoff_limit: c.job.backoff_limit,
            active_deadline_seconds: c.job.active_deadline_seconds,
            ttl_seconds_after_finished: Some(c.job.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: pod_meta,
                spec: PodSpec {
                    service_account_name: c.service_account.clone(),
                    // The bake talks to AWS and the forge, never to the Kubernetes API.
                    // (IRSA / Pod Identity inject their own token volume regardless.)
                    automount_service_account_token: Some(false),
                    restart_policy: "Never".to_owned(),
                    termination_grace_period_seconds: Some(c.job.termination_grace_period_seconds),
                    node_selector: c.node_selector.clone(),
                    tolerations: c.tolerations.clone(),
                    init_containers,
                    containers,
                    volumes,
                },
            },
        }
    }

    /// The Job's rollout container with several cluster repositories: unprivileged, the
    /// catalog on the PVC, the image id from the bake, the targets from the ConfigMap.
    fn rollout_container(&self) -> Container {
        let c = self.config;
        let mut env = pod_env_state(paths::STATE);
        env.extend(rollout_forge_env(c));
        Container {
            name: "rollout".to_owned(),
            image: c.image.clone(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: contract::command(),
            args: contract::rollout_targets(
                contract::RolloutImage::IdFile(paths::IMAGE_ID_FILE),
                contract::TARGETS_FILE,
                None,
            ),
            working_dir: None,
            env,
            resources: None,
            security_context: None,
            volume_mounts: vec![
                VolumeMount::new("state", paths::STATE),
                VolumeMount::new("work", paths::WORK),
                targets_mount(),
            ],
        }
    }

    fn job(&self) -> Job {
        Job {
            api_version: "batch/v1".to_owned(),
            kind: "Job".to_owned(),
            metadata: meta(&self.job_name, self.config, self.bake_labels()),
            spec: self.job_spec(),
        }
    }

    fn cronjob(&self) -> CronJob {
        let c = self.config;
        CronJob {
            api_version: "batch/v1".to_owned(),
            kind: "CronJob".to_owned(),
            metadata: meta(&self.cronjob_name, c, self.bake_labels()),
            spec: CronJobSpec {
                schedule: c.schedule.clone(),
                time_zone: Some(c.time_zone.clone()),
                // Two bakes of one recipe would share the cache PVC and race on the catalog.
                concurrency_policy: "Forbid".to_owned(),
                starting_deadline_seconds: c.job.starting_deadline_seconds,
                successful_jobs_history_limit: c.job.successful_jobs_history_limit,
                failed_jobs_history_limit: c.job.failed_jobs_history_limit,
                job_template: JobTemplateSpec {
                    metadata: ObjectMeta {
                        labels: self.bake_labels(),
                        ..ObjectMeta::default()
                    },
                    spec: self.job_spec(),
                },
            },
        }
    }

    /// Labels of the gc's objects: the recipe's, as the gc component.
    fn gc_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.bake_labels();
        labels.insert("app.kubernetes.io/component".to_owned(), "gc".to_owned());
        labels
    }

    /// The gc's container: `webake gc` of the recipe's family on the catalog of the PVC,
    /// unprivileged (it reads git and AWS and deletes files and AMIs; it mounts nothing).
    fn gc_container(&self, gc: &GcSettings) -> Container {
        let c = self.config;
        let aws = gc.aws(c);
        let repos = match &c.cluster_repo {
            Some(repo) if !self.several => contract::GcRepos::Repo(repo),
            _ => contract::GcRepos::Targets(contract::TARGETS_FILE),
        };
        let mut env = pod_env_state(paths::STATE);
        if aws {
            env.extend(aws_env(c));
        }
        let mut volume_mounts = vec![
            VolumeMount::new("state", paths::STATE),
            VolumeMount::new("work", paths::WORK),
        ];
        if self.several {
            volume_mounts.push(targets_mount());
        }
        Container {
            name: "gc".to_owned(),
            image: c.image.clone(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: contract::command(),
            args: contract::gc(&self.recipe.family, gc, repos, aws),
            working_dir: None,
            env,
            resources: None,
            security_context: None,
            volume_mounts,
        }
    }

    fn gc_job_spec(&self, gc: &GcSettings) -> JobSpec {
        let c = self.config;
        let mut volumes = vec![
            Volume::pvc("state", &c.cache_pvc),
            Volume::empty_dir("work", None),
        ];
        if self.several {
            volumes.push(targets_volume());
        }
        JobSpec {
            backoff_limit: c.job.backoff_limit,
            active_deadline_seconds: c.job.active_deadline_seconds,
            ttl_seconds_after_finished: Some(c.job.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: ObjectMeta {
                    labels: self.gc_labels(),
                    ..ObjectMeta::default()
                },
                spec: PodSpec {
                    service_account_name: c.service_account.clone(),
                    automount_service_account_token: Some(false),
                    restart_policy: "Never".to_owned(),
                    termination_grace_period_seconds: Some(c.job.termination_grace_period_seconds),
                    node_selector: c.node_selector.clone(),
                    tolerations: c.tolerations.clone(),
                    init_containers: Vec::new(),
                    containers: vec![self.gc_container(gc)],
                    volumes,
                },
            },
        }
    }

    /// The gc CronJob (`gc:` in the config), named after the recipe like the bake's.
    fn gc_cronjob(&self, gc: &GcSettings) -> Result<CronJob, Error> {
        let c = self.config;
        let name = object_name("webake-gc", &self.recipe.name, 52, "recipe name")?;
        Ok(CronJob {
            api_version: "batch/v1".to_owned(),
            kind: "CronJob".to_owned(),
            metadata: meta(&name, c, self.gc_labels()),
            spec: CronJobSpec {
                schedule: gc.schedule.clone(),
                time_zone: Some(c.time_zone.clone()),
                // Two gcs of one family would retire the same images twice over.
                concurrency_policy: "Forbid".to_owned(),
                starting_deadline_seconds: c.job.starting_deadline_seconds,
                successful_jobs_history_limit: c.job.successful_jobs_history_limit,
                failed_jobs_history_limit: c.job.failed_jobs_history_limit,
                job_template: JobTemplateSpec {
                    metadata: ObjectMeta {
                        labels: self.gc_labels(),
                        ..ObjectMeta::default()
                    },
                    spec: self.gc_job_spec(gc),
                },
            },
        })
    }

    fn bake_task(&self) -> Task {
        let c = self.config;
        let mut env = pod_env_state("$(workspaces.state.path)");
        env.extend(aws_env(c));
        Task {
            api_version: tekton::API_VERSION.to_owned(),
            kind: "Task".to_owned(),
            metadata: meta("webake-bake", c, labels("webake", "bake")),
            spec: TaskSpec {
                description: Some(
                    "Bake, boot-test and publish a recipe with webake; the rollout is a separate task.".to_owned(),
                ),
                params: vec![
                    ParamSpec::string("recipe", "Recipe path inside the source workspace.", None),
                    ParamSpec::string("webake-image", "The webake image to run (by digest).", None),
                ],
                results: vec![
                    TaskResult { name: "image-id".to_owned(), description: Some("Catalog id of the image.".to_owned()) },
                    TaskResult {
                        name: "ami-ids".to_owned(),
                        description: Some("JSON object: region -> AMI id.".to_owned()),
                    },
                ],
                workspaces: vec![
                    workspace_decl("source", "The recipes checkout."),
                    workspace_decl("state", "PVC with data/ (catalog, artifacts) and cache/ (layers)."),
                ],
                volumes: vec![Volume::empty_dir("work", c.work_dir_size_limit.as_deref())],
                steps: vec![Step {
                    name: "bake".to_owned(),
                    image: "$(params.webake-image)".to_owned(),
                    working_dir: Some("$(workspaces.source.path)".to_owned()),
                    command: contract::command(),
                    args: contract::run_no_rollout(
                        "$(params.recipe)",
                        "$(results.image-id.path)",
                        "$(results.ami-ids.path)",
                        &self.targets(),
                    ),
                    env,
                    script: None,
                    compute_resources: resources(c),
                    security_context: Some(privileged()),
                    volume_mounts: vec![VolumeMount::new("work", paths::WORK)],
                }],
            },
        }
    }

    fn rollout_task(&self) -> Task {
        let c = self.config;
        let mut env = pod_env_state("$(workspaces.state.path)");
        env.extend(rollout_forge_env(c));
        let mut params = vec![ParamSpec::string(
            "image-id",
            "Catalog id of the baked image.",
            None,
        )];
        let mut volumes = vec![Volume::empty_dir("work", None)];
        let mut volume_mounts = vec![VolumeMount::new("work", paths::WORK)];
        let (args, description, result) = if self.several {
            volumes.push(targets_volume());
            volume_mounts.push(targets_mount());
            (
                contract::rollout_targets(
                    contract::RolloutImage::Id("$(params.image-id)"),
                    contract::TARGETS_FILE,
                    Some("$(results.pull-request.path)"),
                ),
                "Open the pull requests that bump the image reference in each cluster repository.",
                "URLs of the pull requests, one per line (none when no forge opened one).",
            )
        } else {
            params.push(ParamSpec::string(
                "cluster-repo",
                "Git URL of the cluster repository.",
                None,
            ));
            (
                contract::rollout(
                    "$(params.image-id)",
                    "$(params.cluster-repo)",
                    "$(results.pull-request.path)",
                    &self.targets(),
                ),
                "Open the pull request that bumps the image reference in the cluster repository.",
                "URL of the pull request (empty when none was opened).",
            )
        };
        params.push(ParamSpec::string(
            "webake-image",
            "The webake image to run (by digest).",
            None,
        ));
        Task {
            api_version: tekton::API_VERSION.to_owned(),
            kind: "Task".to_owned(),
            metadata: meta("webake-rollout", c, labels("webake", "rollout")),
            spec: TaskSpec {
                description: Some(description.to_owned()),
                params,
                results: vec![TaskResult {
                    name: "pull-request".to_owned(),
                    description: Some(result.to_owned()),
                }],
                workspaces: vec![
                    workspace_decl("source", "The recipes checkout."),
                    workspace_decl("state", "PVC with data/ (catalog) and cache/."),
                ],
                volumes,
                steps: vec![Step {
                    name: "rollout".to_owned(),
                    image: "$(params.webake-image)".to_owned(),
                    working_dir: Some("$(workspaces.source.path)".to_owned()),
                    command: contract::command(),
                    args,
                    env,
                    script: None,
                    compute_resources: None,
                    security_context: None,
                    volume_mounts,
                }],
            },
        }
    }

    fn pipeline(&self) -> Pipeline {
        let c = self.config;
        let webake_image = "$(params.image)@$(tasks.build-image.results.IMAGE_DIGEST)";
        let mut params = common_pipeline_params(c, self.service, &c.image);
        params.push(ParamSpec::string(
            "recipe",
            "Recipe path inside the repository.",
            Some(&self.recipe.path_in_repo),
        ));
        let cluster_repo = c.cluster_repo.as_deref().filter(|_| !self.several);
        if let Some(repo) = cluster_repo {
            params.push(ParamSpec::string(
                "cluster-repo",
                "Git URL of the cluster repository the pull request targets.",
                Some(repo),
            ));
        }
        let mut tasks = common_pipeline_tasks();
        tasks.push(PipelineTask {
            name: "bake".to_owned(),
            task_ref: TaskRef {
                name: "webake-bake".to_owned(),
            },
            run_after: vec!["build-image".to_owned()],
            params: vec![
                Param::new("recipe", "$(params.recipe)"),
                Param::new("webake-image", webake_image),
            ],
            workspaces: vec![
                WorkspacePipelineTaskBinding::new("source", "source"),
                WorkspacePipelineTaskBinding::new("state", "state"),
            ],
            timeout: None,
        });
        tasks.push(PipelineTask {
            name: "rollout".to_owned(),
            task_ref: TaskRef {
                name: "webake-rollout".to_owned(),
            },
            run_after: vec!["bake".to_owned()],
            params: [
                Some(Param::new("image-id", "$(tasks.bake.results.image-id)")),
                cluster_repo.map(|_| Param::new("cluster-repo", "$(params.cluster-repo)")),
                Some(Param::new("webake-image", webake_image)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            workspaces: vec![
                WorkspacePipelineTaskBinding::new("source", "source"),
                WorkspacePipelineTaskBinding::new("state", "state"),
            ],
            timeout: None,
        });
        Pipeline {
            api_version: tekton::API_VERSION.to_owned(),
            kind: "Pipeline".to_owned(),
            metadata: meta(
                &self.pipeline_name,
                c,
                labels(&self.service.name, "pipeline"),
            ),
            spec: PipelineSpec {
                description: Some(format!(
                    "Build the webake image, bake {} (test, publish), open the rollout pull request.",
                    self.recipe.name
                )),
                params,
                workspaces: vec![
                    PipelineWorkspaceDeclaration {
                        name: "source".to_owned(),
                        description: Some("The repository checkout.".to_owned()),
                    },
                    PipelineWorkspaceDeclaration {
                        name: "state".to_owned(),
                        description: Some("webake's catalog and cache (the cache PVC).".to_owned()),
                    },
                ],
                tasks,
                results: vec![
                    PipelineResult {
                        name: "image-id".to_owned(),
                        description: Some("Catalog id of the baked image.".to_owned()),
                        value: "$(tasks.bake.results.image-id)".to_owned(),
                    },
                    PipelineResult {
                        name: "ami-ids".to_owned(),
                        description: Some("JSON object: region -> AMI id.".to_owned()),
                        value: "$(tasks.bake.results.ami-ids)".to_owned(),
                    },
                    PipelineResult {
                        name: "pull-request".to_owned(),
                        description: Some(
                            if self.several {
                                "URLs of the rollout pull requests, one per line."
                            } else {
                                "URL of the rollout pull request."
                            }
                            .to_owned(),
                        ),
                        value: "$(tasks.rollout.results.pull-request)".to_owned(),
                    },
                ],
            },
        }
    }
}

struct DockerRenderer<'a> {
    config: &'a PipelineConfig,
    service: &'a ServiceDescriptor,
    pipeline_name: String,
}

impl<'a> DockerRenderer<'a> {
    fn new(config: &'a PipelineConfig, service: &'a ServiceDescriptor) -> Result<Self, Error> {
        Ok(Self {
            config,
            service,
            pipeline_name: object_name("docker", &service.name, 63, "service name")?,
        })
    }

    fn deployment(&self) -> &str {
        self.service
            .deployment
            .as_deref()
            .unwrap_or(&self.service.name)
    }

    fn deploy_task(&self) -> Task {
        let c = self.config;
        let kubectl = |name: &str, args: &[&str]| Step {
            name: name.to_owned(),
            image: c.tool_images.kubectl.clone(),
            working_dir: None,
            command: vec!["kubectl".to_owned()],
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            script: None,
            compute_resources: None,
            security_context: None,
            volume_mounts: Vec::new(),
        };
        Task {
            api_version: tekton::API_VERSION.to_owned(),
            kind: "Task".to_owned(),
            metadata: meta("webake-deploy", c, labels("webake", "deploy")),
            spec: TaskSpec {
                description: Some(
                    "Point a Deployment's container at the new image and wait for the rollout."
                        .to_owned(),
                ),
                params: vec![
                    ParamSpec::string("namespace", "Namespace of the Deployment.", None),
                    ParamSpec::string("deployment", "Deployment name.", None),
                    ParamSpec::string("container", "Container name in the Deployment.", None),
                    ParamSpec::string("image", "Image reference, by digest.", None),
                ],
                results: Vec::new(),
                workspaces: Vec::new(),
                volumes: Vec::new(),
                steps: vec![
                    kubectl(
                        "set-image",
                        &[
                            "--namespace=$(params.namespace)",
                            "set",
                            "image",
                            "deployment/$(params.deployment)",
                            "$(params.container)=$(params.image)",
                        ],
                    ),
                    kubectl(
                        "wait",
                        &[
                            "--namespace=$(params.namespace)",
                            "rollout",
                            "status",
                            "deployment/$(params.deployment)",
                            "--timeout=15m",
                        ],
                    ),
                ],
            },
        }
    }

    fn pipeline(&self) -> Pipeline {
        let c = self.config;
        let image = self.service.image.as_deref().unwrap_or(&c.image);
        let params = common_pipeline_params(c, self.service, image);
        let mut tasks = common_pipeline_tasks();
        tasks.push(PipelineTask {
            name: "deploy".to_owned(),
            task_ref: TaskRef {
                name: "webake-deploy".to_owned(),
            },
            run_after: vec!["build-image".to_owned()],
            params: vec![
                Param::new("namespace", c.namespace.clone()),
                Param::new("deployment", self.deployment()),
                Param::new("container", self.deployment()),
                Param::new(
                    "image",
                    "$(params.image)@$(tasks.build-image.results.IMAGE_DIGEST)",
                ),
            ],
            workspaces: Vec::new(),
            timeout: None,
        });
        Pipeline {
            api_version: tekton::API_VERSION.to_owned(),
            kind: "Pipeline".to_owned(),
            metadata: meta(
                &self.pipeline_name,
                c,
                labels(&self.service.name, "pipeline"),
            ),
            spec: PipelineSpec {
                description: Some(format!(
                    "Build and push {}, then roll its Deployment.",
                    self.service.name
                )),
                params,
                workspaces: vec![PipelineWorkspaceDeclaration {
                    name: "source".to_owned(),
                    description: Some("The repository checkout.".to_owned()),
                }],
                tasks,
                results: vec![PipelineResult {
                    name: "image-digest".to_owned(),
                    description: Some("Digest of the pushed image.".to_owned()),
                    value: "$(tasks.build-image.results.IMAGE_DIGEST)".to_owned(),
                }],
            },
        }
    }
}

fn workspace_decl(name: &str, description: &str) -> WorkspaceDeclaration {
    WorkspaceDeclaration {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        mount_path: None,
        read_only: None,
    }
}

fn common_pipeline_params(
    c: &PipelineConfig,
    service: &ServiceDescriptor,
    image: &str,
) -> Vec<ParamSpec> {
    let repo = service.repo.as_deref().unwrap_or(&c.source.repo);
    vec![
        ParamSpec::string(
            "repo-url",
            "Git URL of the repository to build.",
            Some(repo),
        ),
        ParamSpec::string(
            "revision",
            "Branch, tag or commit to build.",
            Some(&c.source.revision),
        ),
        ParamSpec::string(
            "image",
            "Image to build and push (repository:tag).",
            Some(image),
        ),
        ParamSpec::string(
            "dockerfile",
            "Dockerfile path inside the repository.",
            Some(&service.dockerfile),
        ),
        ParamSpec::string(
            "context",
            "Build context inside the repository.",
            Some(&service.context),
        ),
    ]
}

fn common_pipeline_tasks() -> Vec<PipelineTask> {
    vec![
        PipelineTask {
            name: "fetch-source".to_owned(),
            task_ref: TaskRef {
                name: "webake-git-clone".to_owned(),
            },
            run_after: Vec::new(),
            params: vec![
                Param::new("url", "$(params.repo-url)"),
                Param::new("revision", "$(params.revision)"),
            ],
            workspaces: vec![WorkspacePipelineTaskBinding::new("output", "source")],
            timeout: None,
        },
        PipelineTask {
            name: "build-image".to_owned(),
            task_ref: TaskRef {
                name: "webake-build-image".to_owned(),
            },
            run_after: vec!["fetch-source".to_owned()],
            params: vec![
                Param::new("image", "$(params.image)"),
                Param::new("dockerfile", "$(params.dockerfile)"),
                Param::new("context", "$(params.context)"),
            ],
            workspaces: vec![WorkspacePipelineTaskBinding::new("source", "source")],
            timeout: None,
        },
    ]
}

/// Clone one revision into the `output` workspace. Parameters reach the script through the
/// environment, never by substitution into its text.
fn git_clone_task(c: &PipelineConfig) -> Task {
    let script = "#!/bin/sh\n\
set -eu\n\
cd \"$(workspaces.output.path)\"\n\
git init -q .\n\
git remote add origin \"$PARAM_URL\"\n\
git fetch -q --depth=1 origin \"$PARAM_REVISION\"\n\
git -c advice.detachedHead=false checkout -q FETCH_HEAD\n\
git rev-parse HEAD | tr -d '\\n' > \"$(results.commit.path)\"\n";
    Task {
        api_version: tekton::API_VERSION.to_owned(),
        kind: "Task".to_owned(),
        metadata: meta("webake-git-clone", c, labels("webake", "fetch-source")),
        spec: TaskSpec {
            description: Some("Shallow-clone one revision of a git repository.".to_owned()),
            params: vec![
                ParamSpec::string("url", "Git URL.", None),
                ParamSpec::string("revision", "Branch, tag or commit.", None),
            ],
            results: vec![TaskResult {
                name: "commit".to_owned(),
                description: Some("The commit checked out.".to_owned()),
            }],
            workspaces: vec![workspace_decl("output", "Receives the checkout (empty).")],
            volumes: Vec::new(),
            steps: vec![Step {
                name: "clone".to_owned(),
                image: c.tool_images.git.clone(),
                working_dir: None,
                command: Vec::new(),
                args: Vec::new(),
                env: vec![
                    EnvVar::value("PARAM_URL", "$(params.url)"),
                    EnvVar::value("PARAM_REVISION", "$(params.revision)"),
                ],
                script: Some(script.to_owned()),
                compute_resources: None,
                security_context: None,
                volume_mounts: Vec::new(),
            }],
        },
    }
}

/// Build and push an image with kaniko (no privileges, no Docker daemon).
fn build_image_task(c: &PipelineConfig) -> Task {
    let mut volumes = Vec::new();
    let mut volume_mounts = Vec::new();
    if let Some(secret) = &c.secrets.registry {
        volumes.push(Volume {
            name: "registry-auth".to_owned(),
            empty_dir: None,
            persistent_volume_claim: None,
            config_map: None,
            secret: Some(SecretVolumeSource {
                secret_name: secret.clone(),
                items: vec![KeyToPath {
                    key: ".dockerconfigjson".to_owned(),
                    path: "config.json".to_owned(),
                }],
            }),
        });
        volume_mounts.push(VolumeMount {
            name: "registry-auth".to_owned(),
            mount_path: "/kaniko/.docker".to_owned(),
            sub_path: None,
            read_only: Some(true),
        });
    }
    Task {
        api_version: tekton::API_VERSION.to_owned(),
        kind: "Task".to_owned(),
        metadata: meta("webake-build-image", c, labels("webake", "build-image")),
        spec: TaskSpec {
            description: Some(
                "Build an image from a Dockerfile with kaniko and push it.".to_owned(),
            ),
            params: vec![
                ParamSpec::string("image", "Destination (repository:tag).", None),
                ParamSpec::string(
                    "dockerfile",
                    "Dockerfile path inside the source workspace.",
                    Some("Dockerfile"),
                ),
                ParamSpec::string(
                    "context",
                    "Build context inside the source workspace.",
                    Some("."),
                ),
            ],
            results: vec![TaskResult {
                name: "IMAGE_DIGEST".to_owned(),
                description: Some("Digest of the pushed image (sha256:...).".to_owned()),
            }],
            workspaces: vec![workspace_decl("source", "The checkout to build.")],
            volumes,
            steps: vec![Step {
                name: "build-and-push".to_owned(),
                image: c.tool_images.kaniko.clone(),
                working_dir: None,
                command: Vec::new(),
                args: vec![
                    "--dockerfile=$(workspaces.source.path)/$(params.dockerfile)".to_owned(),
                    "--context=$(workspaces.source.path)/$(params.context)".to_owned(),
                    "--destination=$(params.image)".to_owned(),
                    "--digest-file=$(results.IMAGE_DIGEST.path)".to_owned(),
                    "--reproducible".to_owned(),
                ],
                env: Vec::new(),
                script: None,
                compute_resources: None,
                security_context: None,
                volume_mounts,
            }],
        },
    }
}

fn pipeline_run(
    c: &PipelineConfig,
    pipeline_name: &str,
    revision: &str,
    pipeline: &Pipeline,
) -> PipelineRun {
    let mut workspaces = vec![WorkspaceBinding {
        name: "source".to_owned(),
        persistent_volume_claim: None,
        volume_claim_template: Some(PersistentVolumeClaimTemplate {
            spec: PersistentVolumeClaimSpec {
                access_modes: vec!["ReadWriteOnce".to_owned()],
                resources: VolumeResourceRequirements {
                    requests: BTreeMap::from([("storage".to_owned(), "1Gi".to_owned())]),
                },
            },
        }),
    }];
    if pipeline.spec.workspaces.iter().any(|w| w.name == "state") {
        workspaces.push(WorkspaceBinding {
            name: "state".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.cache_pvc.clone(),
            }),
            volume_claim_template: None,
        });
    }
    let pod_template =
        (!c.node_selector.is_empty() || !c.tolerations.is_empty()).then(|| PodTemplate {
            node_selector: c.node_selector.clone(),
            tolerations: c.tolerations.clone(),
        });
    PipelineRun {
        api_version: tekton::API_VERSION.to_owned(),
        kind: "PipelineRun".to_owned(),
        metadata: ObjectMeta {
            generate_name: Some(format!("{pipeline_name}-")),
            namespace: Some(c.namespace.clone()),
            labels: pipeline.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        spec: PipelineRunSpec {
            pipeline_ref: PipelineRef {
                name: pipeline_name.to_owned(),
            },
            params: vec![Param::new("revision", revision)],
            workspaces,
            task_run_template: PipelineTaskRunTemplate {
                service_account_name: c.service_account.clone(),
                pod_template,
            },
            timeouts: Some(TimeoutFields {
                pipeline: format!("{}s", c.job.active_deadline_seconds),
            }),
        },
    }
}

fn trigger_template(
    c: &PipelineConfig,
    pipeline_name: &str,
    pipeline: &Pipeline,
) -> TriggerTemplate {
    TriggerTemplate {
        api_version: tekton::TRIGGERS_API_VERSION.to_owned(),
        kind: "TriggerTemplate".to_owned(),
        metadata: meta(
            &format!("{pipeline_name}-on-merge"),
            c,
            labels(&pipeline_name_label(pipeline), "trigger"),
        ),
        spec: TriggerTemplateSpec {
            params: vec![TriggerParamSpec {
                name: "revision".to_owned(),
                description: Some(
                    "The commit that was merged (pushed to the default branch).".to_owned(),
                ),
                default: Some(c.source.revision.clone()),
            }],
            resource_templates: vec![pipeline_run(
                c,
                pipeline_name,
                "$(tt.params.revision)",
                pipeline,
            )],
        },
    }
}

fn pipeline_name_label(pipeline: &Pipeline) -> String {
    pipeline
        .metadata
        .labels
        .get("app.kubernetes.io/name")
        .cloned()
        .unwrap_or_default()
}

/// Binds a push event (GitHub, Gitea and GitLab all send `after`) to the template's `revision`.
fn trigger_binding(c: &PipelineConfig, pipeline_name: &str, pipeline: &Pipeline) -> TriggerBinding {
    TriggerBinding {
        api_version: tekton::TRIGGERS_API_VERSION.to_owned(),
        kind: "TriggerBinding".to_owned(),
        metadata: meta(
            &format!("{pipeline_name}-on-merge"),
            c,
            labels(&pipeline_name_label(pipeline), "trigger"),
        ),
        spec: TriggerBindingSpec {
            params: vec![Param::new("revision", "$(body.after)")],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_labels_within_the_limit() {
        assert_eq!(
            object_name("webake-bake", "Debian_12.base", 63, "f").unwrap(),
            "webake-bake-debian-12-base"
        );
        assert_eq!(object_name("ami", "x-", 63, "f").unwrap(), "ami-x");
        let err = object_name("webake-bake", &"a".repeat(41), 52, "recipe name").unwrap_err();
        assert!(err.to_string().contains("recipe name"), "{err}");
        assert!(object_name("webake-bake", &"a".repeat(40), 52, "recipe name").is_ok());
    }

    #[test]
    fn yaml_quotes_strings_other_readers_would_retype() {
        #[derive(Serialize)]
        struct S {
            a: &'static str,
            b: &'static str,
            c: &'static str,
            d: &'static str,
        }
        let yaml = to_yaml(&S {
            a: "2",
            b: "yes",
            c: "0 4 * * 1",
            d: "$(params.x)",
        })
        .unwrap();
        assert_eq!(yaml, "a: \"2\"\nb: \"yes\"\nc: 0 4 * * 1\nd: $(params.x)\n");
    }
}
