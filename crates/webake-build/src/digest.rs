//! Content digests (sha256, hex).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{BuildError, Result};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| BuildError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| BuildError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Digest of a file or a directory tree (names, modes, symlink targets and contents, in a
/// stable order). Used for cache keys and provenance.
pub fn sha256_path(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(path).map_err(|e| BuildError::io(path, e))?;
    if md.is_file() {
        // Content and mode (a copied file keeps its mode).
        let content = sha256_file(path)?;
        return Ok(sha256_hex(
            format!("file\n{:o}\n{content}", md.permissions().mode()).as_bytes(),
        ));
    }
    let mut h = Sha256::new();
    let mut stack = vec![path.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| BuildError::io(&d, e))?;
        for e in rd {
            let e = e.map_err(|e| BuildError::io(&d, e))?;
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
            if md.is_dir() {
                stack.push(p.clone());
            }
            entries.push((p, md));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, md) in entries {
        let rel = p.strip_prefix(path).unwrap_or(&p);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(md.permissions().mode().to_le_bytes());
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
            h.update(b"L");
            h.update(t.as_os_str().as_encoded_bytes());
        } else if md.is_file() {
            h.update(b"F");
            h.update(sha256_file(&p)?.as_bytes());
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_changes_with_content_names_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), "x").unwrap();
        let a = sha256_path(d.path()).unwrap();
        assert_eq!(a, sha256_path(d.path()).unwrap());
        std::fs::write(d.path().join("sub/a"), "y").unwrap();
        let b = sha256_path(d.path()).unwrap();
        assert_ne!(a, b);
        std::fs::set_permissions(
            d.path().join("sub/a"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let c = sha256_path(d.path()).unwrap();
        assert_ne!(b, c);
        std::fs::rename(d.path().join("sub/a"), d.path().join("sub/b")).unwrap();
        assert_ne!(c, sha256_path(d.path()).unwrap());
    }
}
