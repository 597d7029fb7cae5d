//! Find the image references the rules select and plan byte-exact edits of them.
//!
//! Pure: takes file contents, returns edits. Applying an edit splices the bytes of one scalar (or
//! one regex group); every other byte of the file stays as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use saphyr_parser::ScalarStyle;
use serde::Serialize;

use crate::error::RolloutError;
use crate::reference::{ImageReference, RegionLookup, region_of_zone};
use crate::rules::{InstanceGroupRule, RegexRule, Rule, YamlPathRule, canonical_role, glob};
use crate::yaml::{Document, Node, Scalar, YamlError, parse_documents, parse_path};

/// Files that instance-group rules look at when they name no `files` glob.
pub const DEFAULT_KOPS_FILES: &str = "**/*.{yaml,yml}";

/// One replaced reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edit {
    /// Path relative to the repository root, `/`-separated.
    pub file: String,
    /// 1-based line of the reference.
    pub line: usize,
    /// What was matched: `InstanceGroup nodes-eu-west-1a (cluster …) spec.image`, a YAML path, …
    pub what: String,
    /// Index of the rule that selected it.
    pub rule: usize,
    pub region: Option<String>,
    /// The build it got of a per-architecture reference (`x86_64`, `arm64`); `None` for the
    /// other references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// The reference before and after.
    pub old: String,
    pub new: String,
    #[serde(skip)]
    pub(crate) bytes: Range<usize>,
    /// The source text written in place of `bytes` (quoted like the original).
    #[serde(skip)]
    pub(crate) replacement: String,
    /// The edit replaces a YAML scalar (checked by parsing the result).
    #[serde(skip)]
    pub(crate) yaml_scalar: bool,
}

impl Edit {
    pub fn changes(&self) -> bool {
        self.old != self.new
    }
}

/// A file's path and text (UTF-8), as read from the clone.
#[derive(Debug, Clone)]
pub(crate) struct RepoFile {
    pub path: String,
    pub text: String,
}

/// A file's documents, or why it is not YAML.
type ParsedYaml = Result<Vec<Document>, YamlError>;

/// The files of a repository with their YAML parsed once (parse errors kept for later).
struct Parsed<'a> {
    files: &'a [RepoFile],
    yaml: BTreeMap<usize, ParsedYaml>,
}

fn yaml_error(file: &RepoFile, e: &YamlError) -> RolloutError {
    RolloutError::Yaml {
        file: file.path.clone(),
        line: e.line,
        col: e.col,
        message: e.message.clone(),
    }
}

impl<'a> Parsed<'a> {
    fn new(files: &'a [RepoFile], yaml_globs: &[String]) -> Result<Self, RolloutError> {
        let mut builder = globset::GlobSetBuilder::new();
        for g in yaml_globs {
            builder.add(
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| RolloutError::InvalidRequest(format!("bad glob {g:?}: {e}")))?,
            );
        }
        let set = builder
            .build()
            .map_err(|e| RolloutError::InvalidRequest(e.to_string()))?;
        let yaml = files
            .iter()
            .enumerate()
            .filter(|(_, f)| set.is_match(&f.path))
            .map(|(i, f)| (i, parse_documents(&f.text)))
            .collect();
        Ok(Self { files, yaml })
    }

    /// Files matching `pattern`, with their documents (or the parse error).
    fn yaml_matching(
        &self,
        pattern: &str,
    ) -> Result<Vec<(&'a RepoFile, &ParsedYaml)>, RolloutError> {
        let matcher = glob(pattern).map_err(RolloutError::InvalidRequest)?;
        Ok(self
            .yaml
            .iter()
            .filter(|(i, _)| matcher.is_match(&self.files[**i].path))
            .map(|(i, docs)| (&self.files[*i], docs))
            .collect())
    }
}

/// Plan the edits of every rule that applies to `family`, over all files. `architectures` are
/// the rollout config's overrides of the architecture table (instance family or machine type ->
/// architecture).
pub(crate) fn plan(
    files: &[RepoFile],
    rules: &[Rule],
    reference: &ImageReference,
    family: &str,
    architectures: &BTreeMap<String, String>,
) -> Result<Vec<Edit>, RolloutError> {
    let mut active = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        rule.validate()
            .map_err(|e| RolloutError::InvalidRequest(format!("rule {i}: {e}")))?;
        if rule
            .applies_to_family(family)
            .map_err(RolloutError::InvalidRequest)?
        {
            active.push((i, rule));
        }
    }
    // Only parse what a rule reads; kops rules read every YAML file (Cluster documents, for
    // regions, can live anywhere).
    let mut yaml_globs = Vec::new();
    for (_, rule) in &active {
        match rule {
            Rule::InstanceGroup(r) => {
                yaml_globs.push(DEFAULT_KOPS_FILES.to_string());
                yaml_globs.extend(r.files.clone());
            }
            Rule::YamlPath(r) => yaml_globs.push(r.files.clone()),
            Rule::Regex(_) => {}
        }
    }
    let parsed = Parsed::new(files, &yaml_globs)?;
    let mut edits = Vec::new();
    if active
        .iter()
        .any(|(_, r)| matches!(r, Rule::InstanceGroup(_)))
    {
        let kops = KopsIndex::build(&parsed)?;
        for (i, rule) in &active {
            if let Rule::InstanceGroup(r) = rule {
                let target = GroupTarget {
                    rule_index: *i,
                    rule: r,
                    reference,
                    architectures,
                };
                plan_instance_groups(&kops, &target, &mut edits)?;
            }
        }
    }
    for (i, rule) in &active {
        match rule {
            Rule::InstanceGroup(_) => {}
            Rule::YamlPath(r) => plan_yaml_path(&parsed, *i, r, reference, &mut edits)?,
            Rule::Regex(r) => plan_regex(files, *i, r, reference, &mut edits)?,
        }
    }
    check_overlaps(&mut edits, rules)?;
    check_single_ami_region(&edits, reference)?;
    Ok(edits)
}

/// Apply the edits of one file (any order; they must not overlap), then check the result: the
/// YAML still parses and each edited scalar now reads as the new reference.
pub(crate) fn apply(file: &RepoFile, edits: &[&Edit]) -> Result<String, RolloutError> {
    let mut sorted: Vec<&Edit> = edits.to_vec();
    sorted.sort_by_key(|e| e.bytes.start);
    let mut out = String::with_capacity(file.text.len());
    let mut at = 0;
    // Where each edited scalar starts in the new text.
    let mut starts = Vec::new();
    for e in sorted {
        out.push_str(&file.text[at..e.bytes.start]);
        if e.yaml_scalar {
            starts.push((out.len(), e));
        }
        out.push_str(&e.replacement);
        at = e.bytes.end;
    }
    out.push_str(&file.text[at..]);
    if !starts.is_empty() {
        let docs = parse_documents(&out).map_err(|err| RolloutError::CannotEdit {
            file: file.path.clone(),
            line: err.line,
            what: "the edited file".into(),
            message: format!(
                "is no longer valid YAML ({}); nothing was written",
                err.message
            ),
        })?;
        let mut scalars = BTreeMap::new();
        for doc in &docs {
            collect_scalars(&doc.root, &mut scalars);
        }
        for (start, e) in starts {
            if scalars.get(&start).map(|s| s.as_str()) != Some(e.new.as_str()) {
                return Err(RolloutError::CannotEdit {
                    file: file.path.clone(),
                    line: e.line,
                    what: e.what.clone(),
                    message: format!(
                        "the edited value does not read back as {:?}; nothing was written",
                        e.new
                    ),
                });
            }
        }
    }
    Ok(out)
}

fn collect_scalars(node: &Node, out: &mut BTreeMap<usize, String>) {
    match node {
        Node::Scalar(s) => {
            out.insert(s.bytes.start, s.value.clone());
        }
        Node::Seq(items) => items.iter().for_each(|n| collect_scalars(n, out)),
        Node::Map(entries) => entries.iter().for_each(|(k, v)| {
            collect_scalars(k, out);
            collect_scalars(v, out);
        }),
        Node::Alias => {}
    }
}

/// One AMI id cannot serve matches in several regions (it exists in one): refuse instead of
/// proposing a change that kops would fail to apply.
/// For a per-architecture reference, each build's own matches count.
fn check_single_ami_region(edits: &[Edit], reference: &ImageReference) -> Result<(), RolloutError> {
    // (architecture of the build, `None`: every match; its AMI id)
    let singles: Vec<(Option<&str>, &str)> = match reference {
        ImageReference::Single(ami) => vec![(None, ami.as_str())],
        ImageReference::PerRegion(_) => Vec::new(),
        ImageReference::PerArchitecture(map) => map
            .iter()
            .filter_map(|(arch, inner)| match inner {
                ImageReference::Single(ami) => Some((Some(arch.as_str()), ami.as_str())),
                _ => None,
            })
            .collect(),
    };
    for (arch, ami) in singles {
        if crate::reference::ReferenceKind::of(ami) != Ok(crate::reference::ReferenceKind::AmiId) {
            continue;
        }
        let regions: BTreeSet<&str> = edits
            .iter()
            .filter(|e| arch.is_none() || e.architecture.as_deref() == arch)
            .filter_map(|e| e.region.as_deref())
            .collect();
        if regions.len() > 1 {
            return Err(RolloutError::AmiInSeveralRegions {
                ami: ami.to_string(),
                regions: regions.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}

fn check_overlaps(edits: &mut [Edit], rules: &[Rule]) -> Result<(), RolloutError> {
    edits.sort_by(|a, b| (&a.file, a.bytes.start, a.rule).cmp(&(&b.file, b.bytes.start, b.rule)));
    for pair in edits.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.file == b.file && b.bytes.start < a.bytes.end {
            return Err(RolloutError::Ambiguous {
                file: a.file.clone(),
                line: a.line,
                what: a.what.clone(),
                first: a.rule,
                first_rule: rules[a.rule].describe(),
                second: b.rule,
                second_rule: rules[b.rule].describe(),
            });
        }
    }
    Ok(())
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The reference for a match, or an error naming the match when its region has no AMI.
fn reference_for(
    reference: &ImageReference,
    region: Option<&str>,
    file: &str,
    line: usize,
    what: &str,
) -> Result<String, RolloutError> {
    reference
        .for_region(region)
        .map(str::to_string)
        .map_err(|e| match e {
            RegionLookup::Unknown { available } => RolloutError::RegionUnknown {
                file: file.into(),
                line,
                what: what.into(),
                available: available.join(", "),
            },
            RegionLookup::NotPublished { region, available } => RolloutError::RegionNotPublished {
                file: file.into(),
                line,
                what: what.into(),
                region,
                available: available.join(", "),
            },
            // Never reached: the build of an architecture is picked before its region.
            RegionLookup::ArchitectureUnknown { available } => RolloutError::ArchitectureUnknown {
                file: file.into(),
                line,
                what: what.into(),
                message: format!("the image has builds for {}", available.join(", ")),
            },
        })
}

/// The build of a per-architecture reference that a match of a yaml-path or regex rule gets:
/// the rule's `architecture:`, else the only build. Other references are returned as they are
/// (no architecture).
fn rule_build<'r>(
    reference: &'r ImageReference,
    architecture: Option<&str>,
    file: &str,
    line: usize,
    what: &str,
) -> Result<(Option<String>, &'r ImageReference), RolloutError> {
    let ImageReference::PerArchitecture(map) = reference else {
        return Ok((None, reference));
    };
    let available = map.keys().cloned().collect::<Vec<_>>().join(", ");
    let arch = match (architecture, map.keys().next()) {
        (Some(arch), _) => arch,
        (None, Some(only)) if map.len() == 1 => only.as_str(),
        _ => {
            return Err(RolloutError::ArchitectureUnknown {
                file: file.into(),
                line,
                what: what.into(),
                message: format!(
                    "the image has builds for {available}; set `architecture:` on the rule to \
                     pick one"
                ),
            });
        }
    };
    match map.get(arch) {
        Some(build) => Ok((Some(arch.to_string()), build)),
        None => Err(RolloutError::ArchitectureNotPublished {
            file: file.into(),
            line,
            what: format!("{what} (the rule's `architecture:`)"),
            architecture: arch.to_string(),
            available,
        }),
    }
}

/// Plain scalars we write unquoted: what kops references look like, nothing YAML could misread.
fn plain_safe(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@+=".contains(c))
        && !value.contains(": ")
        && !value.ends_with(':')
}

/// The source text for `new` in place of `scalar`, in the scalar's own quoting style.
fn render_scalar(
    file: &RepoFile,
    scalar: &Scalar,
    what: &str,
    new: &str,
) -> Result<String, RolloutError> {
    let raw = &file.text[scalar.bytes.clone()];
    let fail = |message: String| RolloutError::CannotEdit {
        file: file.path.clone(),
        line: scalar.line,
        what: what.to_string(),
        message,
    };
    if matches!(scalar.style, ScalarStyle::Literal | ScalarStyle::Folded) {
        return Err(fail(
            "block scalars (| or >) are not edited; write the reference on one line".into(),
        ));
    }
    if raw.contains('\n') {
        return Err(fail(
            "the value spans several lines; cannot edit it in place".into(),
        ));
    }
    let double = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    match scalar.style {
        ScalarStyle::Plain if raw == scalar.value => Ok(if plain_safe(new) {
            new.to_string()
        } else {
            double(new)
        }),
        ScalarStyle::SingleQuoted
            if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') =>
        {
            Ok(format!("'{}'", new.replace('\'', "''")))
        }
        ScalarStyle::DoubleQuoted
            if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') =>
        {
            Ok(double(new))
        }
        ScalarStyle::Literal | ScalarStyle::Folded => Err(fail(
            "block scalars (| or >) are not edited; write the reference on one line".into(),
        )),
        _ => Err(fail(format!(
            "unexpected source text {raw:?} for the value; cannot edit it in place"
        ))),
    }
}

fn scalar_edit(
    file: &RepoFile,
    scalar: &Scalar,
    what: String,
    rule: usize,
    region: Option<String>,
    new: String,
) -> Result<Edit, RolloutError> {
    let replacement = render_scalar(file, scalar, &what, &new)?;
    Ok(Edit {
        file: file.path.clone(),
        line: scalar.line,
        what,
        rule,
        region,
        architecture: None,
        old: scalar.value.clone(),
        new,
        bytes: scalar.bytes.clone(),
        replacement,
        yaml_scalar: true,
    })
}

// ---------------------------------------------------------------------------------------------
// kops

struct KopsCluster {
    /// Subnet name -> region.
    subnet_regions: BTreeMap<String, String>,
    /// Regions of all subnets.
    regions: BTreeSet<String>,
}

struct KopsGroup<'p> {
    file: &'p RepoFile,
    doc: &'p Document,
}

struct KopsIndex<'p> {
    clusters: BTreeMap<String, KopsCluster>,
    groups: Vec<KopsGroup<'p>>,
}

fn is_kops_kind(doc: &Document, kind: &str) -> bool {
    doc.root.get("kind").and_then(Node::as_str) == Some(kind)
        && doc
            .root
            .get("apiVersion")
            .and_then(Node::as_str)
            .is_none_or(|v| v.starts_with("kops.k8s.io/") || v.starts_with("kops/"))
}

fn cluster_of(doc: &Document) -> KopsCluster {
    let mut subnet_regions = BTreeMap::new();
    let mut regions = BTreeSet::new();
    for subnet in doc
        .root
        .get_path(&["spec", "subnets"])
        .map(Node::items)
        .unwrap_or_default()
    {
        let region = subnet
            .get("region")
            .and_then(Node::as_str)
            .and_then(region_of_zone)
            .or_else(|| {
                subnet
                    .get("zone")
                    .and_then(Node::as_str)
                    .and_then(region_of_zone)
            });
        if let Some(region) = region {
            if let Some(name) = subnet.get("name").and_then(Node::as_str) {
                subnet_regions.insert(name.to_string(), region.clone());
            }
            regions.insert(region);
        }
    }
    KopsCluster {
        subnet_regions,
        regions,
    }
}

impl<'p> KopsIndex<'p> {
    fn build(parsed: &'p Parsed<'p>) -> Result<Self, RolloutError> {
        static MENTIONS_IG: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"(?m)^\s*kind:\s*InstanceGroup\s*$").expect("static regex")
        });
        let mut clusters = BTreeMap::new();
        let mut groups = Vec::new();
        for (i, docs) in &parsed.yaml {
            let file = &parsed.files[*i];
            let docs = match docs {
                Ok(docs) => docs,
                // Templates (Helm, Jinja) are not YAML; only fail where kops would read it.
                Err(e) if MENTIONS_IG.is_match(&file.text) => return Err(yaml_error(file, e)),
                Err(e) => {
                    tracing::debug!(file = %file.path, error = %e.message, "skipping a file that is not YAML");
                    continue;
                }
            };
            for doc in docs {
                if is_kops_kind(doc, "Cluster") {
                    if let Some(name) = doc
                        .root
                        .get_path(&["metadata", "name"])
                        .and_then(Node::as_str)
                    {
                        clusters.insert(name.to_string(), cluster_of(doc));
                    }
                } else if is_kops_kind(doc, "InstanceGroup") {
                    groups.push(KopsGroup { file, doc });
                }
            }
        }
        Ok(Self { clusters, groups })
    }
}

/// The kops cluster an InstanceGroup belongs to.
fn group_cluster(doc: &Document) -> Option<&str> {
    doc.root
        .get_path(&["metadata", "labels", "kops.k8s.io/cluster"])
        .and_then(Node::as_str)
}

fn group_matches(rule: &InstanceGroupRule, doc: &Document) -> Result<bool, RolloutError> {
    let bad = RolloutError::InvalidRequest;
    let name = doc
        .root
        .get_path(&["metadata", "name"])
        .and_then(Node::as_str)
        .unwrap_or("");
    if let Some(pattern) = &rule.cluster {
        let cluster = group_cluster(doc).unwrap_or("");
        if !glob(pattern).map_err(bad)?.is_match(cluster) {
            return Ok(false);
        }
    }
    if !rule.names.is_empty() {
        let mut any = false;
        for pattern in &rule.names {
            any |= glob(pattern).map_err(bad)?.is_match(name);
        }
        if !any {
            return Ok(false);
        }
    }
    if !rule.roles.is_empty() {
        let role = doc
            .root
            .get_path(&["spec", "role"])
            .and_then(Node::as_str)
            .and_then(canonical_role);
        if !rule
            .roles
            .iter()
            .any(|r| canonical_role(r).is_some() && canonical_role(r) == role)
        {
            return Ok(false);
        }
    }
    for (key, value) in &rule.labels {
        let have = doc
            .root
            .get_path(&["metadata", "labels", key.as_str()])
            .and_then(Node::as_str);
        if have != Some(value.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The one region of an InstanceGroup: from its zones, else its subnets in the cluster spec,
/// else the cluster's subnets when they are all in one region. `None` when unknown or mixed.
fn group_region(kops: &KopsIndex<'_>, doc: &Document) -> Option<String> {
    let one = |regions: BTreeSet<String>| {
        if regions.len() == 1 {
            regions.into_iter().next()
        } else {
            None
        }
    };
    let zones: BTreeSet<String> = doc
        .root
        .get_path(&["spec", "zones"])
        .map(Node::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|z| z.as_str().and_then(region_of_zone))
        .collect();
    if !zones.is_empty() {
        return one(zones);
    }
    let cluster = group_cluster(doc).and_then(|c| kops.clusters.get(c))?;
    let subnets: Vec<&str> = doc
        .root
        .get_path(&["spec", "subnets"])
        .map(Node::items)
        .unwrap_or_default()
        .iter()
        .filter_map(Node::as_str)
        .collect();
    if !subnets.is_empty() {
        let regions: Option<BTreeSet<String>> = subnets
            .iter()
            .map(|s| cluster.subnet_regions.get(*s).cloned())
            .collect();
        return regions.and_then(one);
    }
    one(cluster.regions.clone())
}

/// `(file, line, what, image)` of the `spec.image` of every kops InstanceGroup in `files`,
/// whatever rules select (for `webake gc`: every image a cluster boots from).
pub(crate) fn instance_group_images(
    files: &[RepoFile],
) -> Result<Vec<(String, usize, String, String)>, RolloutError> {
    let parsed = Parsed::new(files, &[DEFAULT_KOPS_FILES.to_string()])?;
    let kops = KopsIndex::build(&parsed)?;
    let mut out = Vec::new();
    for group in &kops.groups {
        let Some(scalar) = group
            .doc
            .root
            .get_path(&["spec", "image"])
            .and_then(Node::as_scalar)
        else {
            continue;
        };
        let what = format!("{} spec.image", group_label(group.doc));
        out.push((
            group.file.path.clone(),
            scalar.line,
            what,
            scalar.value.clone(),
        ));
    }
    Ok(out)
}

/// What an instance-group rule rolls out, and how an InstanceGroup's architecture is told.
struct GroupTarget<'a> {
    rule_index: usize,
    rule: &'a InstanceGroupRule,
    reference: &'a ImageReference,
    /// The rollout config's overrides of the architecture table.
    architectures: &'a BTreeMap<String, String>,
}

fn plan_instance_groups(
    kops: &KopsIndex<'_>,
    target: &GroupTarget<'_>,
    edits: &mut Vec<Edit>,
) -> Result<(), RolloutError> {
    let rule = target.rule;
    let files = match &rule.files {
        Some(pattern) => Some(glob(pattern).map_err(RolloutError::InvalidRequest)?),
        None => None,
    };
    for group in &kops.groups {
        if files
            .as_ref()
            .is_some_and(|m| !m.is_match(&group.file.path))
        {
            continue;
        }
        if !group_matches(rule, group.doc)? {
            continue;
        }
        let name = group_label(group.doc);
        let what = format!("{name} spec.image");
        let Some(image) = group.doc.root.get_path(&["spec", "image"]) else {
            tracing::warn!(file = %group.file.path, group = %name, "InstanceGroup has no spec.image; skipped");
            continue;
        };
        let Some(scalar) = image.as_scalar() else {
            return Err(RolloutError::CannotEdit {
                file: group.file.path.clone(),
                line: 0,
                what,
                message: "spec.image is not a string".into(),
            });
        };
        let (architecture, build) = group_build(target, group, scalar.line)?;
        let region = rule
            .region
            .clone()
            .or_else(|| group_region(kops, group.doc));
        let new = reference_for(
            build,
            region.as_deref(),
            &group.file.path,
            scalar.line,
            &what,
        )?;
        let mut edit = scalar_edit(group.file, scalar, what, target.rule_index, region, new)?;
        edit.architecture = architecture;
        edits.push(edit);
    }
    Ok(())
}

/// `InstanceGroup NAME (cluster C)`, or `InstanceGroup NAME` without a cluster label.
fn group_label(doc: &Document) -> String {
    let name = doc
        .root
        .get_path(&["metadata", "name"])
        .and_then(Node::as_str)
        .unwrap_or("?");
    match group_cluster(doc) {
        Some(cluster) => format!("InstanceGroup {name} (cluster {cluster})"),
        None => format!("InstanceGroup {name}"),
    }
}

/// The build of a per-architecture reference that an InstanceGroup gets, by the architecture
/// of its machine types (`image_line`: the line of its `spec.image`, for errors). Other
/// references are returned as they are (no architecture): their machine types are not read.
fn group_build<'r>(
    target: &GroupTarget<'r>,
    group: &KopsGroup<'_>,
    image_line: usize,
) -> Result<(Option<String>, &'r ImageReference), RolloutError> {
    let ImageReference::PerArchitecture(map) = target.reference else {
        return Ok((None, target.reference));
    };
    let file = &group.file.path;
    let label = group_label(group.doc);
    let available = map.keys().cloned().collect::<Vec<_>>().join(", ");
    let types = machine_types(group, &label)?;
    if types.is_empty() {
        return Err(RolloutError::ArchitectureUnknown {
            file: file.clone(),
            line: image_line,
            what: format!("{label} spec.image"),
            message: format!(
                "it has no spec.machineType (nor spec.mixedInstancesPolicy.instances), and the \
                 image has builds for {available}"
            ),
        });
    }
    let arch = one_architecture(group, &label, &types, target.architectures)?;
    let mut names: Vec<&str> = Vec::new();
    for t in &types {
        if !names.contains(&t.name.as_str()) {
            names.push(&t.name);
        }
    }
    match map.get(arch) {
        Some(build) => Ok((Some(arch.to_string()), build)),
        None => Err(RolloutError::ArchitectureNotPublished {
            file: file.clone(),
            line: image_line,
            what: format!("{label} on {}", names.join(", ")),
            architecture: arch.to_string(),
            available,
        }),
    }
}

/// A machine type of an InstanceGroup, where it is written.
struct MachineType {
    name: String,
    line: usize,
    /// From `spec.mixedInstancesPolicy.instances` (else `spec.machineType`).
    mixed: bool,
}

/// `spec.machineType`, then each of `spec.mixedInstancesPolicy.instances`.
fn machine_types(group: &KopsGroup<'_>, label: &str) -> Result<Vec<MachineType>, RolloutError> {
    let spec = group.doc.root.get("spec");
    let mut out = Vec::new();
    if let Some(s) = spec
        .and_then(|s| s.get("machineType"))
        .and_then(Node::as_scalar)
        .filter(|s| !s.value.trim().is_empty())
    {
        out.push(MachineType {
            name: s.value.trim().to_string(),
            line: s.line,
            mixed: false,
        });
    }
    let Some(policy) = spec.and_then(|s| s.get("mixedInstancesPolicy")) else {
        return Ok(out);
    };
    let policy_line = spec
        .and_then(|s| s.key_line("mixedInstancesPolicy"))
        .unwrap_or(0);
    let not_a_list = |message: &str| RolloutError::ArchitectureUnknown {
        file: group.file.path.clone(),
        line: policy_line,
        what: format!("{label} spec.mixedInstancesPolicy.instances"),
        message: message.into(),
    };
    match policy.get("instances") {
        None => {}
        Some(Node::Seq(items)) => {
            for item in items {
                let s = item
                    .as_scalar()
                    .ok_or_else(|| not_a_list("an entry is not a machine type (a string)"))?;
                out.push(MachineType {
                    name: s.value.trim().to_string(),
                    line: s.line,
                    mixed: true,
                });
            }
        }
        Some(_) => return Err(not_a_list("not a list of machine types")),
    }
    Ok(out)
}

/// The one architecture of an InstanceGroup's machine types (not empty); several are an error
/// at the first machine type of another architecture than the first.
fn one_architecture<'a>(
    group: &KopsGroup<'_>,
    label: &str,
    types: &[MachineType],
    overrides: &'a BTreeMap<String, String>,
) -> Result<&'a str, RolloutError> {
    let archs: Vec<&str> = types
        .iter()
        .map(|t| crate::arch::resolve_architecture(&t.name, overrides))
        .collect();
    let Some(offending) = archs.iter().position(|a| *a != archs[0]) else {
        return Ok(archs[0]);
    };
    // Which machine types of which architecture, in the order they are written.
    let mut found: Vec<(&str, Vec<&str>)> = Vec::new();
    for (t, arch) in types.iter().zip(&archs) {
        match found.iter_mut().find(|(a, _)| a == arch) {
            Some((_, names)) if names.contains(&t.name.as_str()) => {}
            Some((_, names)) => names.push(&t.name),
            None => found.push((arch, vec![&t.name])),
        }
    }
    let mixed_archs: BTreeSet<&str> = types
        .iter()
        .zip(&archs)
        .filter(|(t, _)| t.mixed)
        .map(|(_, a)| *a)
        .collect();
    let field = if mixed_archs.len() > 1 {
        "spec.mixedInstancesPolicy.instances"
    } else {
        "spec.machineType and spec.mixedInstancesPolicy.instances"
    };
    Err(RolloutError::MixedArchitectures {
        file: group.file.path.clone(),
        line: types[offending].line,
        what: format!("{label} {field}"),
        found: found
            .iter()
            .map(|(arch, names)| format!("{arch} ({})", names.join(", ")))
            .collect::<Vec<_>>()
            .join(" and "),
    })
}

// ---------------------------------------------------------------------------------------------
// generic rules

fn plan_yaml_path(
    parsed: &Parsed<'_>,
    rule_index: usize,
    rule: &YamlPathRule,
    reference: &ImageReference,
    edits: &mut Vec<Edit>,
) -> Result<(), RolloutError> {
    let path = parse_path(&rule.path).map_err(RolloutError::InvalidRequest)?;
    for (file, docs) in parsed.yaml_matching(&rule.files)? {
        let docs = docs.as_ref().map_err(|e| yaml_error(file, e))?;
        for (d, doc) in docs.iter().enumerate() {
            for (concrete, node) in doc.root.select(&path) {
                let what = if docs.len() > 1 {
                    format!("{concrete} (document {})", d + 1)
                } else {
                    concrete
                };
                let Some(scalar) = node.as_scalar() else {
                    return Err(RolloutError::CannotEdit {
                        file: file.path.clone(),
                        line: 0,
                        what,
                        message: "not a string (a mapping, sequence or alias)".into(),
                    });
                };
                let (architecture, build) = rule_build(
                    reference,
                    rule.architecture.as_deref(),
                    &file.path,
                    scalar.line,
                    &what,
                )?;
                let new = reference_for(
                    build,
                    rule.region.as_deref(),
                    &file.path,
                    scalar.line,
                    &what,
                )?;
                let mut edit =
                    scalar_edit(file, scalar, what, rule_index, rule.region.clone(), new)?;
                edit.architecture = architecture;
                edits.push(edit);
            }
        }
    }
    Ok(())
}

fn plan_regex(
    files: &[RepoFile],
    rule_index: usize,
    rule: &RegexRule,
    reference: &ImageReference,
    edits: &mut Vec<Edit>,
) -> Result<(), RolloutError> {
    let matcher = glob(&rule.files).map_err(RolloutError::InvalidRequest)?;
    let re = crate::rules::compile_regex(&rule.pattern).map_err(RolloutError::InvalidRequest)?;
    let named = re.capture_names().any(|n| n == Some("ref"));
    for file in files.iter().filter(|f| matcher.is_match(&f.path)) {
        for caps in re.captures_iter(&file.text) {
            let m = if named {
                caps.name("ref")
            } else if re.captures_len() > 1 {
                caps.get(1)
            } else {
                caps.get(0)
            };
            let Some(m) = m else { continue };
            let line = line_of(&file.text, m.start());
            let what = format!("match of {:?}", rule.pattern);
            let (architecture, build) = rule_build(
                reference,
                rule.architecture.as_deref(),
                &file.path,
                line,
                &what,
            )?;
            let new = reference_for(build, rule.region.as_deref(), &file.path, line, &what)?;
            edits.push(Edit {
                file: file.path.clone(),
                line,
                what,
                rule: rule_index,
                region: rule.region.clone(),
                architecture,
                old: m.as_str().to_string(),
                new: new.clone(),
                bytes: m.range(),
                replacement: new,
                yaml_scalar: false,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> RepoFile {
        RepoFile {
            path: path.into(),
            text: text.into(),
        }
    }

    fn ig_rule(f: impl FnOnce(&mut InstanceGroupRule)) -> Rule {
        let mut r = InstanceGroupRule {
            all: true,
            ..Default::default()
        };
        f(&mut r);
        Rule::InstanceGroup(r)
    }

    fn single(r: &str) -> ImageReference {
        ImageReference::Single(r.into())
    }

    /// Plan and apply over one file; the new text.
    fn roll(
        text: &str,
        rules: &[Rule],
        reference: &ImageReference,
    ) -> Result<String, RolloutError> {
        let files = vec![file("ig.yaml", text)];
        let edits = plan(&files, rules, reference, "fam", &BTreeMap::new())?;
        let refs: Vec<&Edit> = edits.iter().collect();
        apply(&files[0], &refs)
    }

    const IG: &str =
        "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: nodes\nspec:\n";

    #[test]
    fn flow_style_crlf_anchors_and_tags_are_edited_in_place() {
        let flow = "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata: {name: n}\nspec: {role: Node, image: ami-1, zones: [eu-west-1a]}\n";
        assert_eq!(
            roll(flow, &[ig_rule(|_| {})], &single("ami-2")).unwrap(),
            flow.replace("ami-1", "ami-2")
        );
        let crlf = IG.replace('\n', "\r\n") + "  image: ami-1\r\n  role: Node\r\n";
        assert_eq!(
            roll(&crlf, &[ig_rule(|_| {})], &single("ami-2")).unwrap(),
            crlf.replace("ami-1", "ami-2")
        );
        let anchored = format!("{IG}  image: &img ami-1 # c\n");
        assert_eq!(
            roll(&anchored, &[ig_rule(|_| {})], &single("ami-2")).unwrap(),
            anchored.replace("ami-1", "ami-2")
        );
        let tagged = format!("{IG}  image: !!str 'ami-1'\n");
        assert_eq!(
            roll(&tagged, &[ig_rule(|_| {})], &single("ami-2")).unwrap(),
            tagged.replace("ami-1", "ami-2")
        );
        let unicode = format!("# ünïcödé ✓\n{IG}  # ✓ before\n  image: \"ami-1\" # ✓ after\n");
        assert_eq!(
            roll(&unicode, &[ig_rule(|_| {})], &single("ami-2")).unwrap(),
            unicode.replace("ami-1", "ami-2")
        );
    }

    #[test]
    fn quoting_follows_the_original_and_odd_values_are_quoted() {
        let plain = format!("{IG}  image: ami-1\n");
        assert_eq!(
            roll(&plain, &[ig_rule(|_| {})], &single("ssm:/aws/service/x")).unwrap(),
            plain.replace("ami-1", "ssm:/aws/service/x")
        );
        let single_quoted = format!("{IG}  image: 'ami-1'\n");
        assert_eq!(
            roll(
                &single_quoted,
                &[ig_rule(|_| {})],
                &single("kope.io/k8s-1.18")
            )
            .unwrap(),
            single_quoted.replace("ami-1", "kope.io/k8s-1.18")
        );
        assert!(plain_safe(
            "099720109477/ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240927"
        ));
        assert!(!plain_safe("a: b") && !plain_safe("#x") && !plain_safe("*x") && !plain_safe("x:"));
    }

    #[test]
    fn values_that_cannot_be_spliced_are_refused() {
        for (text, needle) in [
            (format!("{IG}  image: |\n    ami-1\n"), "block scalars"),
            (
                format!("{IG}  image: ami-1\n    continued\n"),
                "several lines",
            ),
            (
                format!("{IG}  x: &img ami-1\n  image: *img\n"),
                "not a string",
            ),
            (format!("{IG}  image: [ami-1]\n"), "not a string"),
        ] {
            let err = roll(&text, &[ig_rule(|_| {})], &single("ami-2")).unwrap_err();
            assert!(
                matches!(err, RolloutError::CannotEdit { .. }),
                "{text}: {err:?}"
            );
            assert!(
                err.to_string().contains(needle) && err.to_string().contains("ig.yaml"),
                "{err}"
            );
        }
    }

    #[test]
    fn regions_come_from_zones_subnets_cluster_or_the_rule() {
        let reference = ImageReference::PerRegion(
            [
                ("eu-west-1".to_string(), "ami-e".to_string()),
                ("us-east-1".to_string(), "ami-u".to_string()),
            ]
            .into(),
        );
        let cluster = "apiVersion: kops.k8s.io/v1alpha2\nkind: Cluster\nmetadata:\n  name: c1\nspec:\n  subnets:\n  - name: a\n    zone: us-east-1a\n---\n";
        let labelled = "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: n\n  labels:\n    kops.k8s.io/cluster: c1\nspec:\n  image: ami-0\n";
        // From the cluster's subnets (one region).
        let out = roll(
            &format!("{cluster}{labelled}"),
            &[ig_rule(|_| {})],
            &reference,
        )
        .unwrap();
        assert!(out.ends_with("image: ami-u\n"), "{out}");
        // From the group's zones.
        let zoned = format!("{labelled}  zones: [eu-west-1b]\n");
        assert!(
            roll(&format!("{cluster}{zoned}"), &[ig_rule(|_| {})], &reference)
                .unwrap()
                .contains("image: ami-e")
        );
        // Unknown without a cluster; the rule's region settles it.
        let err = roll(labelled, &[ig_rule(|_| {})], &reference).unwrap_err();
        assert!(
            matches!(err, RolloutError::RegionUnknown { line: 8, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("set `region:`"), "{err}");
        let out = roll(
            labelled,
            &[ig_rule(|r| r.region = Some("eu-west-1".into()))],
            &reference,
        )
        .unwrap();
        assert!(out.contains("image: ami-e"));
        // Zones in two regions: unknown, never guessed.
        let mixed = format!("{labelled}  zones: [eu-west-1a, us-east-1a]\n");
        assert!(matches!(
            roll(&mixed, &[ig_rule(|_| {})], &reference).unwrap_err(),
            RolloutError::RegionUnknown { .. }
        ));
    }

    #[test]
    fn selectors_combine() {
        let docs = "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: a\n  labels: {kops.k8s.io/cluster: c1, pool: gpu}\nspec: {role: Node, image: ami-1}\n---\napiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: b\n  labels: {kops.k8s.io/cluster: c2}\nspec: {role: Master, image: ami-1}\n---\napiVersion: v1\nkind: InstanceGroup\nmetadata: {name: not-kops}\nspec: {image: ami-1}\n";
        let files = vec![file("x.yml", docs)];
        let names = |rule: Rule| -> Vec<String> {
            plan(&files, &[rule], &single("ami-2"), "fam", &BTreeMap::new())
                .unwrap()
                .into_iter()
                .map(|e| e.what)
                .collect()
        };
        assert_eq!(
            names(ig_rule(|_| {})).len(),
            2,
            "not-kops apiVersion is ignored"
        );
        assert_eq!(
            names(ig_rule(|r| r.roles = vec!["controlplane".into()])),
            ["InstanceGroup b (cluster c2) spec.image"]
        );
        assert_eq!(
            names(ig_rule(
                |r| r.labels = [("pool".to_string(), "gpu".to_string())].into()
            ))
            .len(),
            1
        );
        assert_eq!(names(ig_rule(|r| r.cluster = Some("c*".into()))).len(), 2);
        assert!(
            names(ig_rule(|r| {
                r.cluster = Some("c2".into());
                r.roles = vec!["Node".into()];
            }))
            .is_empty()
        );
        assert!(names(ig_rule(|r| r.files = Some("clusters/**".into()))).is_empty());
        // A rule for another family does not apply.
        assert!(names(ig_rule(|r| r.family = Some("other".into()))).is_empty());
    }

    #[test]
    fn yaml_path_and_regex_rules() {
        let values = "# values\nimages:\n  - name: bastion\n    ami: \"ami-1\"\n  - name: nat\n    ami: ami-1 # keep style\n";
        let tf = "variable \"ami\" {\n  default = \"ami-1\"\n}\nlocals { other = \"ami-1\" }\n";
        let files = vec![file("helm/values.yaml", values), file("tf/main.tf", tf)];
        let rules = [
            Rule::YamlPath(YamlPathRule {
                files: "helm/*.yaml".into(),
                path: "images[*].ami".into(),
                ..Default::default()
            }),
            Rule::Regex(RegexRule {
                files: "tf/*.tf".into(),
                pattern: r#"default\s*=\s*"(ami-[0-9a-f]+)""#.into(),
                ..Default::default()
            }),
        ];
        let edits = plan(&files, &rules, &single("ami-2"), "fam", &BTreeMap::new()).unwrap();
        let summary: Vec<(String, usize, String)> = edits
            .iter()
            .map(|e| (e.file.clone(), e.line, e.what.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "helm/values.yaml".to_string(),
                    4,
                    "images[0].ami".to_string()
                ),
                (
                    "helm/values.yaml".to_string(),
                    6,
                    "images[1].ami".to_string()
                ),
                (
                    "tf/main.tf".to_string(),
                    2,
                    format!("match of {:?}", r#"default\s*=\s*"(ami-[0-9a-f]+)""#)
                ),
            ]
        );
        let v: Vec<&Edit> = edits
            .iter()
            .filter(|e| e.file == "helm/values.yaml")
            .collect();
        assert_eq!(
            apply(&files[0], &v).unwrap(),
            values.replace("ami-1", "ami-2")
        );
        let t: Vec<&Edit> = edits.iter().filter(|e| e.file == "tf/main.tf").collect();
        assert_eq!(
            apply(&files[1], &t).unwrap(),
            tf.replacen("ami-1", "ami-2", 1)
        );
    }

    #[test]
    fn broken_yaml_is_an_error_only_where_kops_reads() {
        let template = "kind: ConfigMap\ndata:\n{{- range .Values }}\n  a: b\n{{- end }}\n";
        let files = vec![
            file("tpl.yaml", template),
            file("ig.yaml", &format!("{IG}  image: ami-1\n")),
        ];
        assert_eq!(
            plan(
                &files,
                &[ig_rule(|_| {})],
                &single("ami-2"),
                "f",
                &BTreeMap::new()
            )
            .unwrap()
            .len(),
            1
        );
        let broken_ig = format!("{IG}  image: [ami-1\n");
        let files = vec![file("ig.yaml", &broken_ig)];
        let err = plan(
            &files,
            &[ig_rule(|_| {})],
            &single("ami-2"),
            "f",
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            matches!(err, RolloutError::Yaml { .. }) && err.to_string().starts_with("ig.yaml:"),
            "{err}"
        );
    }
}

/// Per-architecture references over kops specs as `kops get ig -o yaml` writes them.
#[cfg(test)]
mod architecture_tests {
    use super::*;

    const PROD: &str = "clusters/prod.k8s.example.com/instancegroups.yaml";
    const STAGING: &str = "clusters/staging.k8s.example.com/kops.yaml";

    const PROD_CLUSTER: &str = "apiVersion: kops.k8s.io/v1alpha2
kind: Cluster
metadata:
  creationTimestamp: \"2025-06-11T08:12:31Z\"
  name: prod.k8s.example.com
spec:
  api:
    loadBalancer:
      class: Network
      type: Public
  cloudProvider: aws
  configBase: s3://acme-kops-state/prod.k8s.example.com
  kubernetesVersion: 1.31.4
  networkCIDR: 10.20.0.0/16
  networking:
    cilium: {}
  subnets:
  - cidr: 10.20.32.0/19
    name: eu-west-1a
    type: Private
    zone: eu-west-1a
  - cidr: 10.20.64.0/19
    name: eu-west-1b
    type: Private
    zone: eu-west-1b
  - cidr: 10.20.0.0/22
    name: utility-eu-west-1a
    type: Utility
    zone: eu-west-1a
  topology:
    dns:
      type: Public
";

    const PROD_IGS: &str = "apiVersion: kops.k8s.io/v1alpha2
kind: InstanceGroup
metadata:
  creationTimestamp: \"2025-06-11T08:12:32Z\"
  labels:
    kops.k8s.io/cluster: prod.k8s.example.com
  name: control-plane-eu-west-1a
spec:
  image: 099720109477/ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250115
  instanceMetadata:
    httpPutResponseHopLimit: 3
    httpTokens: required
  machineType: m5.large
  maxSize: 1
  minSize: 1
  role: ControlPlane
  subnets:
  - eu-west-1a
---
apiVersion: kops.k8s.io/v1alpha2
kind: InstanceGroup
metadata:
  creationTimestamp: \"2025-06-11T08:12:32Z\"
  labels:
    kops.k8s.io/cluster: prod.k8s.example.com
  name: nodes-amd64
spec:
  image: ami-0123456789abcdef0 # k8s-node 2026.11.18 x86_64
  machineType: c5.2xlarge
  maxSize: 12
  minSize: 3
  nodeLabels:
    kops.k8s.io/instancegroup: nodes-amd64
  role: Node
  subnets:
  - eu-west-1a
  - eu-west-1b
---
apiVersion: kops.k8s.io/v1alpha2
kind: InstanceGroup
metadata:
  creationTimestamp: \"2026-01-20T14:03:09Z\"
  labels:
    kops.k8s.io/cluster: prod.k8s.example.com
  name: nodes-graviton
spec:
  image: \"ami-0fedcba9876543210\"
  machineType: m6g.large
  maxSize: 30
  minSize: 0
  mixedInstancesPolicy:
    instances:
    - m6g.large
    - m7g.large
    onDemandAboveBase: 0
    onDemandBase: 2
    spotAllocationStrategy: price-capacity-optimized
  nodeLabels:
    kops.k8s.io/instancegroup: nodes-graviton
  role: Node
  subnets:
  - eu-west-1a
  - eu-west-1b
  taints:
  - kubernetes.io/arch=arm64:NoSchedule
";

    const STAGING_KOPS: &str = "apiVersion: kops.k8s.io/v1alpha2
kind: Cluster
metadata:
  name: staging.k8s.example.com
spec:
  cloudProvider: aws
  kubernetesVersion: 1.31.4
  subnets:
  - cidr: 172.20.32.0/19
    name: us-east-1a
    type: Public
    zone: us-east-1a
---
apiVersion: kops.k8s.io/v1alpha2
kind: InstanceGroup
metadata:
  labels:
    kops.k8s.io/cluster: staging.k8s.example.com
  name: nodes-us-east-1a
spec:
  image: 'ami-0fedcba9876543210'
  machineType: t4g.xlarge
  maxSize: 4
  minSize: 1
  role: Node
  subnets:
  - us-east-1a
";

    const X86_EU: &str = "ami-0aaaaaaaaaaaaaaa1";
    const X86_US: &str = "ami-0aaaaaaaaaaaaaaa2";
    const ARM_EU: &str = "ami-0bbbbbbbbbbbbbbb1";
    const ARM_US: &str = "ami-0bbbbbbbbbbbbbbb2";

    fn fixture_files() -> Vec<RepoFile> {
        [
            ("clusters/prod.k8s.example.com/cluster.yaml", PROD_CLUSTER),
            (PROD, PROD_IGS),
            (STAGING, STAGING_KOPS),
        ]
        .into_iter()
        .map(|(path, text)| RepoFile {
            path: path.into(),
            text: text.into(),
        })
        .collect()
    }

    fn per_region(eu: &str, us: &str) -> ImageReference {
        ImageReference::PerRegion(
            [
                ("eu-west-1".to_string(), eu.to_string()),
                ("us-east-1".to_string(), us.to_string()),
            ]
            .into(),
        )
    }

    fn per_arch(builds: &[(&str, ImageReference)]) -> ImageReference {
        ImageReference::PerArchitecture(
            builds
                .iter()
                .map(|(arch, r)| (arch.to_string(), r.clone()))
                .collect(),
        )
    }

    fn both() -> ImageReference {
        per_arch(&[
            ("x86_64", per_region(X86_EU, X86_US)),
            ("arm64", per_region(ARM_EU, ARM_US)),
        ])
    }

    fn all_groups() -> Vec<Rule> {
        vec![Rule::InstanceGroup(InstanceGroupRule {
            all: true,
            ..Default::default()
        })]
    }

    fn plan_over(
        files: &[RepoFile],
        reference: &ImageReference,
        overrides: &[(&str, &str)],
    ) -> Result<Vec<Edit>, RolloutError> {
        let overrides = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan(files, &all_groups(), reference, "k8s-node", &overrides)
    }

    /// The new text of `path` with the edits applied.
    fn applied(files: &[RepoFile], edits: &[Edit], path: &str) -> String {
        let file = files.iter().find(|f| f.path == path).unwrap();
        let mine: Vec<&Edit> = edits.iter().filter(|e| e.file == path).collect();
        apply(file, &mine).unwrap()
    }

    /// `files` with `from` replaced by `to` in `path`.
    fn with(path: &str, from: &str, to: &str) -> Vec<RepoFile> {
        let mut files = fixture_files();
        let file = files.iter_mut().find(|f| f.path == path).unwrap();
        assert!(file.text.contains(from), "{from:?}");
        file.text = file.text.replacen(from, to, 1);
        files
    }

    #[test]
    fn each_instance_group_gets_the_build_of_its_architecture_and_region() {
        let files = fixture_files();
        let edits = plan_over(&files, &both(), &[]).unwrap();
        let got: Vec<String> = edits
            .iter()
            .map(|e| {
                format!(
                    "{}:{} {} {} {}",
                    e.file,
                    e.line,
                    e.architecture.as_deref().unwrap_or("-"),
                    e.region.as_deref().unwrap_or("-"),
                    e.new
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                // The control plane on m5, the x86 nodes on c5, the Graviton nodes whose
                // machineType and mixed instances are all arm64; staging on t4g in us-east-1.
                format!("{PROD}:9 x86_64 eu-west-1 {X86_EU}"),
                format!("{PROD}:28 x86_64 eu-west-1 {X86_EU}"),
                format!("{PROD}:47 arm64 eu-west-1 {ARM_EU}"),
                format!("{STAGING}:21 arm64 us-east-1 {ARM_US}"),
            ]
        );
        // Only the image values change; their quoting and comments stay.
        assert_eq!(
            applied(&files, &edits, PROD),
            PROD_IGS
                .replacen(
                    "099720109477/ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250115",
                    X86_EU,
                    1
                )
                .replacen("ami-0123456789abcdef0 # k8s", &format!("{X86_EU} # k8s"), 1)
                .replacen("\"ami-0fedcba9876543210\"", &format!("\"{ARM_EU}\""), 1)
        );
        assert_eq!(
            applied(&files, &edits, STAGING),
            STAGING_KOPS.replacen("'ami-0fedcba9876543210'", &format!("'{ARM_US}'"), 1)
        );
    }

    #[test]
    fn a_single_reference_goes_everywhere_and_a_one_build_map_still_routes() {
        // A single reference (no architecture) goes everywhere, as before, machine types unread.
        let files = with(PROD, "    - m7g.large\n", "    - m5.large\n");
        let edits = plan_over(
            &files,
            &ImageReference::Single("ssm:/webake/k8s-node".into()),
            &[],
        )
        .unwrap();
        assert_eq!(edits.len(), 4);
        assert!(edits.iter().all(|e| e.architecture.is_none()));
        // A one-architecture map still routes by machine type: the arm64 groups have no build.
        let x86_only = per_arch(&[("x86_64", per_region(X86_EU, X86_US))]);
        let err = plan_over(&fixture_files(), &x86_only, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{PROD}:47: InstanceGroup nodes-graviton (cluster prod.k8s.example.com) on \
                 m6g.large, m7g.large needs an arm64 build of the image, which the rollout does \
                 not have (it has x86_64)"
            )
        );
        assert!(matches!(
            err,
            RolloutError::ArchitectureNotPublished { line: 47, .. }
        ));
    }

    #[test]
    fn mixed_architectures_in_one_group_are_refused_at_the_offending_line() {
        let files = with(PROD, "    - m7g.large\n", "    - m5.large\n");
        let err = plan_over(&files, &both(), &[]).unwrap_err();
        assert!(
            matches!(err, RolloutError::MixedArchitectures { line: 54, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{PROD}:54: InstanceGroup nodes-graviton (cluster prod.k8s.example.com) \
                 spec.mixedInstancesPolicy.instances mixes arm64 (m6g.large) and x86_64 \
                 (m5.large); an InstanceGroup gets one image"
            )
        );
        // The machine type against the mixed instances: the first instance that disagrees.
        let files = with(
            PROD,
            "  machineType: m6g.large\n",
            "  machineType: m5.large\n",
        );
        let err = plan_over(&files, &both(), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{PROD}:53: InstanceGroup nodes-graviton (cluster prod.k8s.example.com) \
                 spec.machineType and spec.mixedInstancesPolicy.instances mixes x86_64 \
                 (m5.large) and arm64 (m6g.large, m7g.large); an InstanceGroup gets one image"
            )
        );
        // Not a list of machine types: at the line of mixedInstancesPolicy.
        let files = with(
            PROD,
            "    instances:\n    - m6g.large\n",
            "    instances:\n    - {type: m6g.large}\n",
        );
        let err = plan_over(&files, &both(), &[]).unwrap_err();
        assert!(
            matches!(err, RolloutError::ArchitectureUnknown { line: 51, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_group_without_a_machine_type_is_refused() {
        let files = with(PROD, "  machineType: c5.2xlarge\n", "");
        let err = plan_over(&files, &both(), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{PROD}:28: InstanceGroup nodes-amd64 (cluster prod.k8s.example.com) spec.image: \
                 cannot tell which build of the image it gets: it has no spec.machineType (nor \
                 spec.mixedInstancesPolicy.instances), and the image has builds for arm64, x86_64"
            )
        );
    }

    #[test]
    fn the_config_overrides_the_table_by_family_or_machine_type() {
        // m8gd is not in the table (x86_64) until the cluster repository says otherwise.
        let files = with(STAGING, "t4g.xlarge", "m8gd.xlarge");
        let new_of = |overrides: &[(&str, &str)]| {
            let edits = plan_over(&files, &both(), overrides).unwrap();
            let e = edits.iter().find(|e| e.file == STAGING).unwrap();
            (e.new.clone(), e.architecture.clone().unwrap())
        };
        assert_eq!(new_of(&[]), (X86_US.to_string(), "x86_64".to_string()));
        assert_eq!(
            new_of(&[("m8gd", "arm64")]),
            (ARM_US.to_string(), "arm64".to_string())
        );
        // A full machine type wins over its family.
        assert_eq!(
            new_of(&[("m8gd", "arm64"), ("m8gd.xlarge", "x86_64")]),
            (X86_US.to_string(), "x86_64".to_string())
        );
        // An override can also make a group mixed.
        let err = plan_over(&fixture_files(), &both(), &[("m7g.large", "x86_64")]).unwrap_err();
        assert!(
            matches!(err, RolloutError::MixedArchitectures { line: 54, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn yaml_path_and_regex_rules_name_their_architecture() {
        let values = "karpenter:\n  nodeClass:\n    amiSelectorTerms:\n    - id: ami-0123456789abcdef0 # amd64\n";
        let tf = "bastion_ami = \"ami-0fedcba9876543210\"\n";
        let files = vec![
            RepoFile {
                path: "helm/values.yaml".into(),
                text: values.into(),
            },
            RepoFile {
                path: "terraform/prod.tfvars".into(),
                text: tf.into(),
            },
        ];
        let rules = |yaml_arch: Option<&str>, tf_arch: Option<&str>| {
            vec![
                Rule::YamlPath(YamlPathRule {
                    files: "helm/*.yaml".into(),
                    path: "karpenter.nodeClass.amiSelectorTerms[*].id".into(),
                    region: Some("eu-west-1".into()),
                    architecture: yaml_arch.map(str::to_string),
                    ..Default::default()
                }),
                Rule::Regex(RegexRule {
                    files: "terraform/*.tfvars".into(),
                    pattern: r#"bastion_ami\s*=\s*"(?P<ref>[^"]+)""#.into(),
                    region: Some("us-east-1".into()),
                    architecture: tf_arch.map(str::to_string),
                    ..Default::default()
                }),
            ]
        };
        let none = BTreeMap::new();
        let edits = plan(
            &files,
            &rules(Some("x86_64"), Some("arm64")),
            &both(),
            "f",
            &none,
        )
        .unwrap();
        let got: Vec<(&str, &str, Option<&str>)> = edits
            .iter()
            .map(|e| (e.file.as_str(), e.new.as_str(), e.architecture.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("helm/values.yaml", X86_EU, Some("x86_64")),
                ("terraform/prod.tfvars", ARM_US, Some("arm64")),
            ]
        );
        // Two builds and no `architecture:`: the rule must pick.
        let err = plan(&files, &rules(None, Some("arm64")), &both(), "f", &none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "helm/values.yaml:4: karpenter.nodeClass.amiSelectorTerms[0].id: cannot tell which \
             build of the image it gets: the image has builds for arm64, x86_64; set \
             `architecture:` on the rule to pick one"
        );
        // One build: it is the one, whatever the rule says nothing about.
        let arm_only = per_arch(&[("arm64", per_region(ARM_EU, ARM_US))]);
        let edits = plan(&files, &rules(None, None), &arm_only, "f", &none).unwrap();
        assert!(
            edits
                .iter()
                .all(|e| e.architecture.as_deref() == Some("arm64"))
        );
        // A build the image does not have.
        let err = plan(&files, &rules(None, Some("x86_64")), &arm_only, "f", &none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "terraform/prod.tfvars:1: match of \"bastion_ami\\\\s*=\\\\s*\\\"(?P<ref>[^\\\"]+)\\\"\" \
             (the rule's `architecture:`) needs an x86_64 build of the image, which the rollout \
             does not have (it has arm64)"
        );
    }

    #[test]
    fn one_ami_id_per_build_serves_one_region() {
        let reference = per_arch(&[
            ("x86_64", ImageReference::Single(X86_EU.into())),
            ("arm64", per_region(ARM_EU, ARM_US)),
        ]);
        // The x86 groups are all in eu-west-1: fine, although arm64 spans two regions.
        let edits = plan_over(&fixture_files(), &reference, &[]).unwrap();
        assert_eq!(edits.len(), 4);
        // An x86 group in us-east-1 too: that AMI id cannot serve it.
        let files = with(STAGING, "t4g.xlarge", "m6i.xlarge");
        let err = plan_over(&files, &reference, &[]).unwrap_err();
        assert!(
            matches!(err, RolloutError::AmiInSeveralRegions { ref ami, .. } if ami == X86_EU),
            "{err:?}"
        );
    }
}
