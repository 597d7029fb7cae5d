//! The files a recipe names: they must exist, and (unless the recipe allows otherwise) stay in
//! the recipe's directory once symlinks are resolved.

use std::path::{Path, PathBuf};

use crate::RecipePath;
use crate::locate::{Seg, join, key};
use crate::model::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    File,
    Dir,
    Any,
}

/// Every recipe path with its field path and what it must be.
fn paths(r: &Recipe) -> Vec<(Vec<Seg>, &str, Want)> {
    let mut out = Vec::new();
    if let Base::Mmdebstrap(m) = &r.base {
        for (i, k) in m.keyrings.iter().enumerate() {
            out.push((
                vec![
                    key("base"),
                    key("mmdebstrap"),
                    key("keyrings"),
                    Seg::Index(i),
                ],
                k.as_str(),
                Want::File,
            ));
        }
    }
    for (i, p) in r.provisioners.iter().enumerate() {
        let base = vec![key("provisioners"), Seg::Index(i), key(p.kind())];
        for sp in step_paths(p) {
            out.push((sp.field_path(&base), sp.path.as_str(), sp.want));
        }
    }
    out
}

/// A recipe path named by a step.
pub(crate) struct StepPath<'a> {
    /// The step's field, and the index when the field is a list.
    pub field: &'static str,
    pub index: Option<usize>,
    pub path: &'a RecipePath,
    pub want: Want,
}

impl StepPath<'_> {
    /// Where the path is written, below the step's `base` path.
    pub fn field_path(&self, base: &[Seg]) -> Vec<Seg> {
        let mut v = join(base, [key(self.field)]);
        v.extend(self.index.map(Seg::Index));
        v
    }
}

/// Every recipe path a step names, in the order of its fields.
pub(crate) fn step_paths(p: &Provisioner) -> Vec<StepPath<'_>> {
    match p {
        Provisioner::Shell(s) => s
            .script
            .iter()
            .map(|sc| StepPath {
                field: "script",
                index: None,
                path: sc,
                want: Want::File,
            })
            .collect(),
        Provisioner::File(f) => vec![StepPath {
            field: "source",
            index: None,
            path: &f.source,
            want: Want::Any,
        }],
        Provisioner::AnsibleLocal(a) => ansible_paths(
            &a.playbook_file,
            [
                ("playbook_dir", &a.playbook_dir, Want::Dir),
                ("group_vars", &a.group_vars, Want::Dir),
                ("host_vars", &a.host_vars, Want::Dir),
                ("galaxy_file", &a.galaxy_file, Want::File),
            ],
            &a.role_paths,
            &a.collection_paths,
        ),
        Provisioner::Ansible(a) => ansible_paths(
            &a.playbook_file,
            [
                ("group_vars", &a.group_vars, Want::Dir),
                ("host_vars", &a.host_vars, Want::Dir),
            ],
            &a.role_paths,
            &a.collection_paths,
        ),
    }
}

/// The paths of an ansible step (either kind): the playbooks, the optional single paths, then
/// the role and collection directories.
fn ansible_paths<'a, const N: usize>(
    playbook_file: &'a OneOrMany<RecipePath>,
    optional: [(&'static str, &'a Option<RecipePath>, Want); N],
    role_paths: &'a [RecipePath],
    collection_paths: &'a [RecipePath],
) -> Vec<StepPath<'a>> {
    let playbooks = playbooks(playbook_file)
        .into_iter()
        .map(|(index, path)| StepPath {
            field: "playbook_file",
            index,
            path,
            want: Want::File,
        });
    let optional = optional.into_iter().filter_map(|(field, p, want)| {
        Some(StepPath {
            field,
            index: None,
            path: p.as_ref()?,
            want,
        })
    });
    let dirs = [
        ("role_paths", role_paths),
        ("collection_paths", collection_paths),
    ]
    .into_iter()
    .flat_map(|(field, list)| {
        list.iter().enumerate().map(move |(j, path)| StepPath {
            field,
            index: Some(j),
            path,
            want: Want::Dir,
        })
    });
    playbooks.chain(optional).chain(dirs).collect()
}

/// The playbooks of a step, with their index when there are several.
fn playbooks(pb: &OneOrMany<RecipePath>) -> Vec<(Option<usize>, &RecipePath)> {
    match pb {
        OneOrMany::One(p) => vec![(None, p)],
        OneOrMany::Many(v) => v.iter().enumerate().map(|(j, p)| (Some(j), p)).collect(),
    }
}

/// Check every path of `r` against the filesystem, relative to `dir`.
pub(crate) fn check(r: &Recipe, dir: &Path) -> Vec<(Vec<Seg>, String)> {
    let mut out = Vec::new();
    let allow_out = r.allow_paths_outside_recipe_dir;
    let canon_dir = std::fs::canonicalize(dir);
    for (path, p, want) in paths(r) {
        if p.is_empty() || p.contains("{var.") {
            continue;
        }
        let full: PathBuf = dir.join(p);
        let canon = match std::fs::canonicalize(&full) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rel = if Path::new(p).is_absolute() {
                    ""
                } else {
                    " (relative to the recipe's directory)"
                };
                out.push((
                    path,
                    format!(
                        "expected an existing {}, found nothing at {p}{rel}",
                        want.noun()
                    ),
                ));
                continue;
            }
            Err(e) => {
                out.push((path, format!("cannot resolve {p}: {e}")));
                continue;
            }
        };
        if !allow_out {
            match &canon_dir {
                Ok(d) if canon.starts_with(d) => {}
                Ok(_) => {
                    out.push((
                        path,
                        format!(
                            "{p} resolves to {}, outside the recipe's directory (through a symlink); expected a path inside it (or set allow_paths_outside_recipe_dir: true)",
                            canon.display()
                        ),
                    ));
                    continue;
                }
                Err(e) => {
                    out.push((
                        path,
                        format!(
                            "cannot resolve the recipe's directory {}: {e}",
                            dir.display()
                        ),
                    ));
                    continue;
                }
            }
        }
        let is_dir = canon.is_dir();
        match want {
            Want::File if is_dir => {
                out.push((path, format!("expected a file, found the directory {p}")))
            }
            Want::Dir if !is_dir => {
                out.push((path, format!("expected a directory, found the file {p}")))
            }
            _ => {}
        }
    }
    out
}

impl Want {
    fn noun(self) -> &'static str {
        match self {
            Want::File => "file",
            Want::Dir => "directory",
            Want::Any => "file or directory",
        }
    }
}
