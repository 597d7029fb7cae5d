//! Interactive debugging: a shell in the step sandbox on a tree of the bake (`webake shell
//! RECIPE --after STEP`, `webake shell IMAGE`, `bake --on-error shell`).
//!
//! The shell runs exactly where a step runs: the same sandbox (namespaces, seccomp, the
//! private /proc/sys, the recipe's network policy), as root of the image, on an overlay whose
//! lower layers are the tree. What it changes goes to an upper directory that is thrown away
//! (or, after a failed step, to that step's upper, which is never committed): the cache and
//! the image never see it. Its terminal is the user's; the filter denies TIOCSTI, so nothing
//! typed into it can reach the host's shell afterwards.

use std::path::{Path, PathBuf};

use webake_sys::sandbox::{Bind, Network, Overlay, SandboxSpec};

use crate::error::{BuildError, Result};
use crate::workspace::mkdir_p;

/// bash if the image has it (without the image's rc files, so the prompt says where you are),
/// else sh.
const SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash --norc --noprofile -i; else exec sh -i; fi";

/// Where and how to open a shell.
pub struct Shell<'a> {
    /// The webake binary (the sandbox helper).
    pub helper_exe: &'a Path,
    /// A private directory of this session: the sandbox's mount points and, without `upper`,
    /// the throwaway upper layer.
    pub scratch: &'a Path,
    /// The tree, top layer first.
    pub lowers: Vec<PathBuf>,
    /// Upper and work directories to continue on (a failed step's); `None`: fresh ones in
    /// `scratch`.
    pub upper: Option<(PathBuf, PathBuf)>,
    pub network: Network,
    pub binds: Vec<Bind>,
    /// What the prompt says (`webake:after 2. hygiene`).
    pub prompt: String,
}

/// Run the shell with the user's terminal; returns its exit code (128+N for a signal).
pub fn open_shell(s: &Shell<'_>) -> Result<i32> {
    let (upper, work) = match &s.upper {
        Some(u) => u.clone(),
        None => (s.scratch.join("shell-upper"), s.scratch.join("shell-work")),
    };
    let sbx = s.scratch.join("shell-sandbox");
    for d in [&upper, &work, &sbx] {
        mkdir_p(d)?;
    }
    let mut spec = SandboxSpec::image(&sbx, vec!["/bin/sh".into(), "-c".into(), SHELL.into()]);
    if let Some(arch) = webake_sys::sandbox::binfmt::tree_arch(&s.lowers) {
        spec.emulate(arch).map_err(|hint| BuildError::MissingTool {
            tool: "qemu-user".into(),
            hint,
        })?;
    }
    spec.overlay = Some(Overlay {
        lowers: s.lowers.clone(),
        upper,
        work,
    });
    spec.binds = s.binds.clone();
    spec.network = s.network.clone();
    spec.env
        .push(("PS1".into(), format!("({}) \\w# ", s.prompt)));
    spec.env.push((
        "TERM".into(),
        std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
    ));
    let cmd = spec
        .command(s.helper_exe)
        .map_err(|e| BuildError::io(&sbx, e))?;
    let status = webake_sys::process::interactive(&cmd)?;
    let _ = webake_sys::fsutil::remove_dir_all_if_exists(&sbx);
    Ok(webake_sys::process::exit_code(&status))
}
