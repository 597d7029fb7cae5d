//! The files a recipe names: they must exist, and (unless the recipe allows otherwise) stay in
//! the recipe's directory once symlinks are resolved.

use std::path::{Path, PathBuf};

use crate::locate::{Seg, join, key};
use crate::model::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    File,
    Dir,
    Any,
}

/// Every recipe path with its field path and what it must be.
fn paths<'a>(r: &'a Recipe) -> Vec<(Vec<Seg>, &'a str, Want)> {
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
        let at = |k: &str, idx: Option<usize>| {
            let mut v = join(&base, [key(k)]);
            v.extend(idx.map(Seg::Index));
            v
        };
        let mut add = |k: &str, idx: Option<usize>, rp: &'a str, w: Want| {
            out.push((at(k, idx), rp, w));
        };
        match p {
            Provisioner::Shell(s) => {
                if let Some(sc) = &s.script {
                    add("script", None, sc.as_str(), Want::File);
                }
            }
            Provisioner::File(f) => add("source", None, f.source.as_str(), Want::Any),
            Provisioner::AnsibleLocal(a) => {
                for (j, p) in playbooks(&a.playbook_file) {
                    add("playbook_file", j, p.as_str(), Want::File);
                }
                for (k, v, w) in [
                    ("playbook_dir", &a.playbook_dir, Want::Dir),
                    ("group_vars", &a.group_vars, Want::Dir),
                    ("host_vars", &a.host_vars, Want::Dir),
                    ("galaxy_file", &a.galaxy_file, Want::File),
                ] {
                    if let Some(v) = v {
                        add(k, None, v.as_str(), w);
                    }
                }
                for (j, p) in a.role_paths.iter().enumerate() {
                    add("role_paths", Some(j), p.as_str(), Want::Dir);
                }
                for (j, p) in a.collection_paths.iter().enumerate() {
                    add("collection_paths", Some(j), p.as_str(), Want::Dir);
                }
            }
            Provisioner::Ansible(a) => {
                for (j, p) in playbooks(&a.playbook_file) {
                    add("playbook_file", j, p.as_str(), Want::File);
                }
                for (k, v) in [("group_vars", &a.group_vars), ("host_vars", &a.host_vars)] {
                    if let Some(v) = v {
                        add(k, None, v.as_str(), Want::Dir);
                    }
                }
                for (j, p) in a.role_paths.iter().enumerate() {
                    add("role_paths", Some(j), p.as_str(), Want::Dir);
                }
                for (j, p) in a.collection_paths.iter().enumerate() {
                    add("collection_paths", Some(j), p.as_str(), Want::Dir);
                }
            }
        }
    }
    out
}

/// The playbooks of a step, with their index when there are several.
pub(crate) fn playbooks(
    pb: &OneOrMany<crate::RecipePath>,
) -> Vec<(Option<usize>, &crate::RecipePath)> {
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
