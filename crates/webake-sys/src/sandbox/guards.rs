//! Files put into the image tree while a command runs and restored afterwards exactly as they
//! were (content and mode, a symlink, or absence). They are installed and restored by the
//! sandbox's PID 1 after `pivot_root`, so a symlink the command plants can only ever point
//! inside the sandbox.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// The dpkg configuration drop-in present while a step runs.
pub const DPKG_UNSAFE_IO: &str = "/etc/dpkg/dpkg.cfg.d/webake-unsafe-io";
pub const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
pub const POLICY_RC_D_BODY: &[u8] =
    b"#!/bin/sh\n# installed by webake during the bake: no services start\nexit 101\n";
pub const DPKG_UNSAFE_IO_BODY: &[u8] = b"# installed by webake during the bake\nforce-unsafe-io\n";
/// The apt configuration drop-in present while a step runs: `apt-get update` fetches no
/// `Translation-*` lists (the long descriptions; 6 MB for bookworm) for lists that finalize
/// removes from the image anyway. A step's own setting, in a later file, wins.
pub const APT_NO_TRANSLATIONS: &str = "/etc/apt/apt.conf.d/00webake-no-translations";
pub const APT_NO_TRANSLATIONS_BODY: &[u8] =
    b"// installed by webake during the bake\nAcquire::Languages \"none\";\n";

pub struct ReplacedFile {
    path: PathBuf,
    before: Before,
}

enum Before {
    Absent,
    Symlink(PathBuf),
    File(Vec<u8>, u32),
}

impl ReplacedFile {
    pub fn install(path: &Path, content: &[u8], mode: u32) -> Result<Self, String> {
        let before = match std::fs::symlink_metadata(path) {
            Err(_) => Before::Absent,
            Ok(md) if md.file_type().is_symlink() => Before::Symlink(
                std::fs::read_link(path)
                    .map_err(|e| format!("readlink {}: {e}", path.display()))?,
            ),
            Ok(md) if md.is_dir() => {
                return Err(format!("{} is a directory in the image", path.display()));
            }
            Ok(md) => Before::File(
                std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?,
                md.permissions().mode(),
            ),
        };
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            return Err(format!("{} does not exist in the image", parent.display()));
        }
        let _ = std::fs::remove_file(path);
        std::fs::write(path, content).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            before,
        })
    }

    pub fn restore(self) -> Result<(), String> {
        let _ = std::fs::remove_file(&self.path);
        match self.before {
            Before::Absent => Ok(()),
            Before::Symlink(t) => symlink(&t, &self.path)
                .map_err(|e| format!("restore symlink {}: {e}", self.path.display())),
            Before::File(bytes, mode) => {
                std::fs::write(&self.path, bytes)
                    .map_err(|e| format!("restore {}: {e}", self.path.display()))?;
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", self.path.display()))
            }
        }
    }
}
