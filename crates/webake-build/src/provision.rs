//! Provisioners: what each recipe step runs inside the chroot, and what its cache key covers.
//!
//! Every step runs in the sandbox against an overlay: the lower layers are the bootstrap tree
//! and the previous steps' layers, the upper dir receives this step's changes and becomes its
//! cached layer. Inputs from the host are bind-mounted read-only under `/run/webake` (a tmpfs
//! in the sandbox), so nothing of them stays in the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use webake_spec::{LoadedRecipe, Provisioner};
use webake_sys::sandbox::Bind;

use crate::digest::{sha256_hex, sha256_path};
use crate::error::{BuildError, Result};

/// Where host inputs appear inside the chroot during a step.
pub const STAGING: &str = "/run/webake";

/// A planned step: its label, cache key and the digests of the inputs it reads.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub index: usize,
    pub label: String,
    pub kind: String,
    pub key: String,
    /// Input name -> sha256 (the step definition itself is `definition`).
    pub inputs: BTreeMap<String, String>,
}

/// A file webake writes for a step into the step's `gen` directory (bound read-only at
/// `STAGING/gen` in the image, or read by the host-mode controller at its host path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Relative to the gen directory.
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

impl GeneratedFile {
    fn new(path: &str, content: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self {
            path: path.into(),
            content: content.into(),
            mode,
        }
    }
}

/// What a step runs, and where.
#[derive(Debug, Clone)]
pub enum StepCommand {
    /// Inside the image (shell, file, ansible-local): `argv` with `env` as root in the image,
    /// recipe inputs bound under [`STAGING`].
    InImage {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        binds: Vec<Bind>,
        secrets: Vec<String>,
        generated: Vec<GeneratedFile>,
    },
    /// Ansible host mode: the host's `ansible-playbook` with `args` against the image at
    /// `/image` (chroot connection). The inventory is written by the bake (it lists the image
    /// and `inventory_groups`); `vars_dirs` (group_vars, host_vars) sit next to it.
    HostAnsible {
        args: Vec<String>,
        env: Vec<(String, String)>,
        generated: Vec<GeneratedFile>,
        inventory_groups: String,
        vars_dirs: Vec<(String, PathBuf)>,
        /// Host paths the controller reads (playbooks, roles, vars): bound read-only.
        host_paths: Vec<PathBuf>,
    },
}

pub fn step_label(i: usize, p: &Provisioner) -> String {
    match p.name() {
        Some(n) => format!("{}. {} ({})", i + 1, n, p.kind()),
        None => format!("{}. {}", i + 1, p.kind()),
    }
}

/// Paths a step reads from the host, by input name.
pub fn step_inputs(recipe: &LoadedRecipe, p: &Provisioner) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    // A playbook is read together with its directory (roles/, group_vars/ next to it; that is
    // what ansible-local stages): the key covers that directory too.
    let mut siblings = Vec::new();
    let mut playbook_dir_of = |pb: &webake_spec::RecipePath| {
        if let Some(d) = recipe.resolve(pb).parent() {
            siblings.push((format!("playbook_siblings:{pb}"), d.to_path_buf()));
        }
    };
    let mut add = |name: String, rp: &webake_spec::RecipePath| v.push((name, recipe.resolve(rp)));
    match p {
        Provisioner::Shell(s) => {
            if let Some(sc) = &s.script {
                add(format!("script:{sc}"), sc);
            }
        }
        Provisioner::File(f) => add(format!("source:{}", f.source), &f.source),
        Provisioner::AnsibleLocal(a) => {
            for pb in a.playbook_file.as_slice() {
                add(format!("playbook:{pb}"), pb);
                playbook_dir_of(pb);
            }
            if let Some(d) = &a.playbook_dir {
                add(format!("playbook_dir:{d}"), d);
            }
            for r in &a.role_paths {
                add(format!("roles:{r}"), r);
            }
            for r in &a.collection_paths {
                add(format!("collections:{r}"), r);
            }
            for (k, d) in [
                ("group_vars", &a.group_vars),
                ("host_vars", &a.host_vars),
                ("galaxy_file", &a.galaxy_file),
            ] {
                if let Some(d) = d {
                    add(format!("{k}:{d}"), d);
                }
            }
        }
        Provisioner::Ansible(a) => {
            for pb in a.playbook_file.as_slice() {
                add(format!("playbook:{pb}"), pb);
                playbook_dir_of(pb);
            }
            for r in &a.role_paths {
                add(format!("roles:{r}"), r);
            }
            for r in &a.collection_paths {
                add(format!("collections:{r}"), r);
            }
            for (k, d) in [("group_vars", &a.group_vars), ("host_vars", &a.host_vars)] {
                if let Some(d) = d {
                    add(format!("{k}:{d}"), d);
                }
            }
        }
    }
    v.extend(siblings);
    v
}

/// The script of an `inline` step: the commands in order under `set -e`; when one fails, the
/// script says which (its position and text) and its exit status before exiting.
fn inline_script(inline: &[String]) -> String {
    let n = inline.len();
    let mut body = String::from("set -e\n");
    body.push_str(&format!(
        "trap 'rc=$?; if [ \"$rc\" -ne 0 ] && [ -n \"${{webake_inline:-}}\" ]; then \
         echo \"webake: inline command $webake_inline of {n} failed with exit status $rc: \
         $webake_inline_cmd\" >&2; fi' EXIT\n"
    ));
    for (i, l) in inline.iter().enumerate() {
        let shown = l.lines().next().unwrap_or_default();
        let shown = if l.lines().count() > 1 {
            format!("{shown} ...")
        } else {
            shown.to_string()
        };
        body.push_str(&format!(
            "webake_inline={} webake_inline_cmd={}\n",
            i + 1,
            webake_sys::process::shell_quote(&shown)
        ));
        body.push_str(l);
        body.push('\n');
    }
    body.push_str("webake_inline=\n");
    body
}

/// Plan every step: key_i = sha256(key_{i-1}, definition, input digests).
///
/// `steps_upstream`: the generation of the apt sources the steps added (a fingerprint of what
/// they offer; see webake-engine's upstream check), an input of the first step: a new one
/// reruns every step on the same base.
pub fn plan_steps(
    recipe: &LoadedRecipe,
    base_key: &str,
    extra: &[(String, String)],
    first: FirstStepInputs<'_>,
) -> Result<Vec<StepPlan>> {
    let mut prev = base_key.to_string();
    let mut out = Vec::new();
    // The definition as written, with secret variables masked: the key never holds a secret
    // (a step that uses one is never cached, see the bake).
    let masked = &recipe.masked_recipe().provisioners;
    for (i, p) in recipe.recipe.provisioners.iter().enumerate() {
        let mut inputs = BTreeMap::new();
        let def = serde_json::to_string(masked.get(i).unwrap_or(p))
            .map_err(|e| BuildError::Invalid(e.to_string()))?;
        inputs.insert("definition".to_string(), sha256_hex(def.as_bytes()));
        for (name, path) in step_inputs(recipe, p) {
            let d = sha256_path(&path).map_err(|e| match e {
                BuildError::Io { path, source } => BuildError::Invalid(format!(
                    "{}: input {} of step {}: {source}",
                    recipe.path.display(),
                    path.display(),
                    i + 1
                )),
                other => other,
            })?;
            inputs.insert(name, d);
        }
        if let (0, Some(u)) = (i, first.steps_upstream) {
            inputs.insert("upstream".to_string(), sha256_hex(u.as_bytes()));
        }
        // Every step sees SOURCE_DATE_EPOCH: the first step's key holds it, the others chain.
        if let (0, Some(t)) = (i, first.source_date) {
            inputs.insert("source_date".to_string(), t.to_string());
        }
        for (k, v) in extra {
            if matches!(p, Provisioner::AnsibleLocal(_) | Provisioner::Ansible(_)) {
                inputs.insert(k.clone(), sha256_hex(v.as_bytes()));
            }
        }
        // v2: layers are written by an overlay mounted in the sandbox's user namespace
        // (user.overlay.* xattrs instead of trusted.overlay.*).
        let keyed = serde_json::json!({"v": "webake-step-v2", "prev": prev, "inputs": inputs});
        let key = sha256_hex(keyed.to_string().as_bytes());
        out.push(StepPlan {
            index: i,
            label: step_label(i, p),
            kind: p.kind().to_string(),
            key: key.clone(),
            inputs,
        });
        prev = key;
    }
    Ok(out)
}

fn ro(source: PathBuf, target: impl Into<PathBuf>) -> Bind {
    Bind {
        source,
        target: target.into(),
        readonly: true,
    }
}

/// Inputs of the first step beyond its own (the later steps chain its key).
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstStepInputs<'a> {
    /// The generation of the apt sources the steps added.
    pub steps_upstream: Option<&'a str>,
    /// The source date every step sees as `SOURCE_DATE_EPOCH`.
    pub source_date: Option<i64>,
}

/// Variables describing the bake, given to every step (and to Ansible as extra vars).
#[derive(Debug, Clone)]
pub struct BakeVars {
    pub image_name: String,
    pub image_family: String,
    pub image_version: String,
    pub bake_id: String,
    /// `SOURCE_DATE_EPOCH`: dpkg, Python, initramfs-tools, man-db and many more take their
    /// clock from it instead of the build's.
    pub source_date: i64,
}

impl BakeVars {
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WEBAKE_IMAGE_NAME".into(), self.image_name.clone()),
            ("WEBAKE_IMAGE_FAMILY".into(), self.image_family.clone()),
            ("WEBAKE_IMAGE_VERSION".into(), self.image_version.clone()),
            ("WEBAKE_BAKE_ID".into(), self.bake_id.clone()),
            ("WEBAKE_BUILD".into(), "1".into()),
            ("SOURCE_DATE_EPOCH".into(), self.source_date.to_string()),
        ]
    }
}

/// Build the command for step `p`.
pub fn step_command(
    recipe: &LoadedRecipe,
    p: &Provisioner,
    vars: &BakeVars,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<StepCommand> {
    let mut env = webake_sys::sandbox::default_env();
    env.extend(vars.env());
    match p {
        Provisioner::Shell(s) => {
            let mut secrets = Vec::new();
            for (k, v) in &s.env {
                env.push((k.clone(), v.clone()));
            }
            for k in &s.secret_env {
                let v = host_env(k).ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "secret environment variable {k} is not set on the build host"
                    ))
                })?;
                secrets.push(v.clone());
                env.push((k.clone(), v));
            }
            let mut binds = Vec::new();
            let mut generated = Vec::new();
            let argv = if let Some(script) = &s.script {
                let src = recipe.resolve(script);
                binds.push(ro(src.clone(), format!("{STAGING}/script")));
                let text = std::fs::read(&src).map_err(|e| BuildError::io(&src, e))?;
                if text.starts_with(b"#!") {
                    let line = String::from_utf8_lossy(
                        text.split(|b| *b == b'\n').next().unwrap_or_default(),
                    )
                    .to_string();
                    let mut parts: Vec<String> =
                        line[2..].split_whitespace().map(String::from).collect();
                    parts.push(format!("{STAGING}/script"));
                    parts
                } else {
                    vec!["/bin/sh".into(), "-e".into(), format!("{STAGING}/script")]
                }
            } else {
                let body = inline_script(&s.inline);
                generated.push(GeneratedFile::new("inline.sh", body, 0o644));
                vec![
                    "/bin/sh".into(),
                    "-e".into(),
                    format!("{STAGING}/gen/inline.sh"),
                ]
            };
            Ok(StepCommand::InImage {
                argv,
                env,
                binds,
                secrets,
                generated,
            })
        }
        Provisioner::File(f) => {
            let src = recipe.resolve(&f.source);
            let md = std::fs::metadata(&src).map_err(|e| BuildError::io(&src, e))?;
            let staged = format!("{STAGING}/src");
            let binds = vec![ro(src, staged.clone())];
            // cp runs inside the chroot, so the destination (and any symlink on its way) is
            // resolved by the kernel inside the image root: it can never land on the host.
            let owner = f.owner.clone().unwrap_or_else(|| "root:root".into());
            let mut script = String::from("set -e\n");
            script.push_str("dest=\"$WEBAKE_DEST\"\n");
            if md.is_dir() {
                script.push_str("mkdir -p \"$dest\"\ncp -a --no-preserve=ownership \"$WEBAKE_SRC/.\" \"$dest/\"\nchown -R \"$WEBAKE_OWNER\" \"$dest\"\n");
                if f.mode.is_some() {
                    script.push_str("find \"$dest\" -type f -exec chmod \"$WEBAKE_MODE\" {} +\n");
                }
            } else {
                script.push_str("mkdir -p \"$(dirname \"$dest\")\"\nrm -f \"$dest\"\ncp --no-preserve=ownership \"$WEBAKE_SRC\" \"$dest\"\nchown \"$WEBAKE_OWNER\" \"$dest\"\n");
                if f.mode.is_some() {
                    script.push_str("chmod \"$WEBAKE_MODE\" \"$dest\"\n");
                }
            }
            env.push(("WEBAKE_SRC".into(), staged));
            env.push(("WEBAKE_DEST".into(), f.destination.clone()));
            env.push(("WEBAKE_OWNER".into(), owner));
            if let Some(m) = &f.mode {
                env.push(("WEBAKE_MODE".into(), m.clone()));
            }
            Ok(StepCommand::InImage {
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                env,
                binds,
                secrets: vec![],
                generated: vec![],
            })
        }
        Provisioner::AnsibleLocal(_) | Provisioner::Ansible(_) => {
            crate::provision::ansible_command(recipe, p, vars, env)
        }
    }
}

/// Ansible steps, in the image (ansible-local) or from the host (ansible).
pub fn ansible_command(
    recipe: &LoadedRecipe,
    p: &Provisioner,
    vars: &BakeVars,
    mut env: Vec<(String, String)>,
) -> Result<StepCommand> {
    env.extend(
        ANSIBLE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    match p {
        Provisioner::AnsibleLocal(a) => ansible_local(recipe, a, vars, env),
        Provisioner::Ansible(a) => ansible_host(recipe, a, vars, env),
        _ => unreachable!("only ansible steps"),
    }
}

/// The environment of every Ansible run: no color, no retry files, private temp dirs (the
/// sandbox's /tmp), no galaxy server, and the sandbox's offline tools (systemctl, hostnamectl,
/// modprobe, iptables, mount, ... that act on the image and record, never on the build host),
/// so roles written for live hosts run unmodified.
const ANSIBLE_ENV: &[(&str, &str)] = &[
    (webake_sys::sandbox::OFFLINE_TOOLS_ENV, "1"),
    ("ANSIBLE_FORCE_COLOR", "0"),
    ("ANSIBLE_NOCOLOR", "1"),
    ("ANSIBLE_RETRY_FILES_ENABLED", "0"),
    ("ANSIBLE_HOST_KEY_CHECKING", "0"),
    ("PYTHONUNBUFFERED", "1"),
    ("ANSIBLE_LOCAL_TEMP", "/tmp/.ansible-local"),
    ("ANSIBLE_REMOTE_TEMP", "/tmp/.ansible-remote"),
    ("ANSIBLE_GALAXY_SERVER_LIST", ""),
];

/// `--extra-vars` of every Ansible run: webake's variables, Packer's name, then the recipe's.
fn extra_vars_json(vars: &BakeVars, user: &BTreeMap<String, String>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("webake_build".into(), true.into());
    for (k, v) in [
        ("webake_image_name", &vars.image_name),
        ("webake_image_family", &vars.image_family),
        ("webake_image_version", &vars.image_version),
        ("webake_bake_id", &vars.bake_id),
        ("packer_build_name", &vars.image_name),
    ] {
        m.insert(k.into(), v.clone().into());
    }
    for (k, v) in user {
        m.insert(k.clone(), v.clone().into());
    }
    serde_json::Value::Object(m).to_string()
}

/// Bind `dirs` read-only under STAGING/`name`N, returning where they are inside.
fn stage_dirs<'r>(
    recipe: &LoadedRecipe,
    dirs: impl IntoIterator<Item = &'r webake_spec::RecipePath>,
    name: &str,
    binds: &mut Vec<Bind>,
) -> Vec<String> {
    dirs.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let t = format!("{STAGING}/{name}{i}");
            binds.push(ro(recipe.resolve(r), t.clone()));
            t
        })
        .collect()
}

const NO_ANSIBLE: &str = "command -v ansible-playbook >/dev/null || { echo 'ansible-playbook is not installed in the image: install ansible in an earlier shell step, or use the `ansible` (host) provisioner' >&2; exit 127; }";

/// ansible-local: the playbooks (each with its directory, as Packer stages them), roles,
/// collections and vars bound into the image, run by the image's own ansible-playbook.
fn ansible_local(
    recipe: &LoadedRecipe,
    a: &webake_spec::AnsibleLocalStep,
    vars: &BakeVars,
    mut env: Vec<(String, String)>,
) -> Result<StepCommand> {
    let mut binds = Vec::new();
    let mut playbooks = Vec::new();
    for (i, pb) in a.playbook_file.as_slice().iter().enumerate() {
        let src = recipe.resolve(pb);
        // A playbook is staged with its directory so relative includes, group_vars and roles/
        // next to it keep working.
        let dir = src
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| recipe.dir.clone());
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = format!("{STAGING}/playbook{i}");
        binds.push(ro(dir, target.clone()));
        playbooks.push(format!("{target}/{name}"));
    }
    if let Some(d) = &a.playbook_dir {
        binds.push(ro(recipe.resolve(d), format!("{STAGING}/playbook_dir")));
    }
    let mut roles = stage_dirs(recipe, &a.role_paths, "roles", &mut binds);
    if a.playbook_dir.is_some() {
        roles.push(format!("{STAGING}/playbook_dir/roles"));
    }
    let collections = stage_dirs(recipe, &a.collection_paths, "collections", &mut binds);
    if !roles.is_empty() {
        env.push(("ANSIBLE_ROLES_PATH".into(), roles.join(":")));
    }
    if !collections.is_empty() {
        env.push(("ANSIBLE_COLLECTIONS_PATH".into(), collections.join(":")));
    }
    // Inventory: the local host in the requested groups, connection local.
    let mut inv = String::from(
        "[all]\n127.0.0.1 ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n",
    );
    for g in &a.inventory_groups {
        inv.push_str(&format!("\n[{g}]\n127.0.0.1\n"));
    }
    for (dir, name) in [(&a.group_vars, "group_vars"), (&a.host_vars, "host_vars")] {
        if let Some(d) = dir {
            binds.push(ro(
                recipe.resolve(d),
                format!("{STAGING}/gen/inventory/{name}"),
            ));
        }
    }
    let mut script = format!("set -e\n{NO_ANSIBLE}\n");
    if let Some(g) = &a.galaxy_file {
        script.push_str(&galaxy_install(recipe, g, &mut binds)?);
    }
    for pb in &playbooks {
        let dir = Path::new(pb)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut cmd = format!(
            "cd {} && ansible-playbook -i {STAGING}/gen/inventory/hosts -c local --extra-vars @{STAGING}/gen/extra_vars.json",
            webake_sys::process::shell_quote(&dir)
        );
        for x in a.extra_arguments.iter().chain(std::iter::once(pb)) {
            cmd.push(' ');
            cmd.push_str(&webake_sys::process::shell_quote(x));
        }
        script.push_str(&cmd);
        script.push('\n');
    }
    Ok(StepCommand::InImage {
        argv: vec![
            "/bin/sh".into(),
            "-e".into(),
            format!("{STAGING}/gen/ansible.sh"),
        ],
        env,
        binds,
        secrets: vec![],
        generated: vec![
            GeneratedFile::new("inventory/hosts", inv, 0o644),
            GeneratedFile::new(
                "extra_vars.json",
                extra_vars_json(vars, &a.extra_vars),
                0o600,
            ),
            GeneratedFile::new("ansible.sh", script, 0o644),
        ],
    })
}

/// The script lines that install a (local-only) galaxy requirements file's roles.
fn galaxy_install(
    recipe: &LoadedRecipe,
    g: &webake_spec::RecipePath,
    binds: &mut Vec<Bind>,
) -> Result<String> {
    let gf = recipe.resolve(g);
    let text = std::fs::read_to_string(&gf).map_err(|e| BuildError::io(&gf, e))?;
    check_galaxy_local_only(&text)
        .map_err(|m| BuildError::Invalid(format!("{}: {m}", gf.display())))?;
    binds.push(ro(
        gf.parent().unwrap_or(Path::new(".")).to_path_buf(),
        format!("{STAGING}/galaxy"),
    ));
    let name = gf
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!(
        "cd {STAGING}/galaxy && ansible-galaxy install -r {name} -p /tmp/.webake-galaxy/roles --ignore-errors=false\nexport ANSIBLE_ROLES_PATH=\"/tmp/.webake-galaxy/roles${{ANSIBLE_ROLES_PATH:+:$ANSIBLE_ROLES_PATH}}\"\n"
    ))
}

/// ansible (host mode): the host's ansible-playbook, with every path absolute and canonical
/// (bound at the same paths into the controller's sandbox).
fn ansible_host(
    recipe: &LoadedRecipe,
    a: &webake_spec::AnsibleStep,
    vars: &BakeVars,
    mut env: Vec<(String, String)>,
) -> Result<StepCommand> {
    let abs = |r: &webake_spec::RecipePath| {
        let p = recipe.resolve(r);
        p.canonicalize()
            .or_else(|_| std::path::absolute(&p))
            .unwrap_or(p)
    };
    let mut args = Vec::new();
    let mut host_paths = Vec::new();
    for pb in a.playbook_file.as_slice() {
        let p = abs(pb);
        host_paths.push(p.parent().map(Path::to_path_buf).unwrap_or(p.clone()));
        args.push(p.display().to_string());
    }
    for (var, dirs) in [
        ("ANSIBLE_ROLES_PATH", &a.role_paths),
        ("ANSIBLE_COLLECTIONS_PATH", &a.collection_paths),
    ] {
        let paths: Vec<PathBuf> = dirs.iter().map(abs).collect();
        if !paths.is_empty() {
            let joined: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            env.push((var.into(), joined.join(":")));
        }
        host_paths.extend(paths);
    }
    args.extend(a.extra_arguments.iter().cloned());
    let mut inventory_groups = String::new();
    for g in &a.inventory_groups {
        inventory_groups.push_str(&format!("\n[{g}]\nimage\n"));
    }
    let mut vars_dirs = Vec::new();
    for (name, dir) in [("group_vars", &a.group_vars), ("host_vars", &a.host_vars)] {
        if let Some(d) = dir {
            host_paths.push(abs(d));
            vars_dirs.push((name.to_string(), abs(d)));
        }
    }
    Ok(StepCommand::HostAnsible {
        args,
        env,
        generated: vec![GeneratedFile::new(
            "extra_vars.json",
            extra_vars_json(vars, &a.extra_vars),
            0o600,
        )],
        inventory_groups,
        vars_dirs,
        host_paths,
    })
}

/// The sandbox network of a recipe's bootstrap and steps.
pub fn sandbox_network(recipe: &LoadedRecipe) -> webake_sys::sandbox::Network {
    use webake_spec::NetworkAllow;
    use webake_sys::sandbox::{Allow, Network};
    let n = &recipe.recipe.network;
    if !n.outbound {
        return Network::None;
    }
    let allow = n
        .allow
        .iter()
        .filter_map(|a| NetworkAllow::parse(a).ok())
        .map(|a| match a {
            NetworkAllow::HostLoopbackPort(p) => Allow::HostLoopbackPort(p),
            NetworkAllow::Network(addr, prefix) => Allow::Network { addr, prefix },
        })
        .collect();
    Network::Outbound { allow }
}

/// Every secret value the recipe's steps read from the host (to redact from every step's
/// output, the bake log and the catalog, whichever step prints it).
pub fn recipe_secrets(
    recipe: &LoadedRecipe,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out: Vec<String> = recipe
        .secret_values()
        .into_iter()
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect();
    for p in &recipe.recipe.provisioners {
        if let Provisioner::Shell(s) = p {
            for k in &s.secret_env {
                if let Some(v) = host_env(k).filter(|v| !v.is_empty())
                    && !out.contains(&v)
                {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// A galaxy requirements file may only name local sources (no network to a galaxy server).
pub fn check_galaxy_local_only(text: &str) -> std::result::Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        let l = line.trim().trim_start_matches("- ").trim();
        if let Some(v) = l.strip_prefix("src:").or_else(|| l.strip_prefix("source:")) {
            let v = v.trim().trim_matches(['"', '\'']);
            let local = v.starts_with('/')
                || v.starts_with("./")
                || v.starts_with("../")
                || v.starts_with("file://");
            if !local {
                return Err(format!(
                    "line {}: galaxy source {v:?} is not a local path; webake never fetches from a galaxy server or the network",
                    n + 1
                ));
            }
        } else if (l.starts_with("name:") || l.starts_with("- name:"))
            && !text.contains("src:")
            && !text.contains("source:")
        {
            return Err(format!(
                "line {}: requirement without a local `src:`; webake never fetches from a galaxy server",
                n + 1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn galaxy_requirements_must_be_local() {
        assert!(check_galaxy_local_only("- src: ./roles/foo\n  name: foo\n").is_ok());
        assert!(check_galaxy_local_only("- src: file:///srv/roles/foo.tar.gz\n").is_ok());
        let e = check_galaxy_local_only("- src: geerlingguy.docker\n").unwrap_err();
        assert!(
            e.contains("line 1") && e.contains("not a local path"),
            "{e}"
        );
        assert!(check_galaxy_local_only("- src: https://github.com/x/y\n").is_err());
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    fn recipe(dir: &Path, body: &str) -> LoadedRecipe {
        let p = dir.join("r.yaml");
        std::fs::write(&p, body).unwrap();
        webake_spec::load(&p).unwrap()
    }

    const BODY: &str = "version: 1
image: {name: k}
base: {mmdebstrap: {suite: bookworm}}
provisioners:
  - shell: {script: scripts/a.sh}
  - file: {source: files/motd, destination: /etc/motd}
  - ansible-local: {playbook_file: pb/site.yml, role_paths: [roles]}
";

    fn keys(dir: &Path) -> Vec<String> {
        plan_steps(&recipe(dir, BODY), "base", &[], Default::default())
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect()
    }

    #[test]
    fn keys_change_when_and_only_when_a_referenced_input_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for (f, c) in [
            ("scripts/a.sh", "echo a\n"),
            ("files/motd", "hi\n"),
            ("pb/site.yml", "- hosts: all\n"),
            ("roles/r1/tasks/main.yml", "- debug: msg=x\n"),
            ("unrelated.txt", "x"),
        ] {
            std::fs::create_dir_all(p.join(f).parent().unwrap()).unwrap();
            std::fs::write(p.join(f), c).unwrap();
        }
        let k0 = keys(p);
        assert_eq!(k0, keys(p), "keys are deterministic");
        // An unreferenced file changes: nothing changes.
        std::fs::write(p.join("unrelated.txt"), "y").unwrap();
        assert_eq!(k0, keys(p));
        // The file step's source changes: that step and every later one change, earlier ones don't.
        std::fs::write(p.join("files/motd"), "hello\n").unwrap();
        let k1 = keys(p);
        assert_eq!(k1[0], k0[0]);
        assert_ne!(k1[1], k0[1]);
        assert_ne!(k1[2], k0[2]);
        // A role file deep in a role directory changes: only the ansible step.
        std::fs::write(p.join("roles/r1/tasks/main.yml"), "- debug: msg=y\n").unwrap();
        let k2 = keys(p);
        assert_eq!(k2[..2], k1[..2]);
        assert_ne!(k2[2], k1[2]);
        // A new file in a role directory counts too.
        std::fs::write(p.join("roles/r1/tasks/extra.yml"), "[]\n").unwrap();
        assert_ne!(keys(p)[2], k2[2]);
        // The script's mode is an input as well.
        use std::os::unix::fs::PermissionsExt;
        let k3 = keys(p);
        std::fs::set_permissions(
            p.join("scripts/a.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(keys(p)[0], k3[0]);
        // The base key is the root of the chain.
        let r = recipe(p, BODY);
        assert_ne!(
            plan_steps(&r, "other-base", &[], Default::default()).unwrap()[0].key,
            keys(p)[0]
        );
    }
}
