//! Content digests (sha256, hex).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{BuildError, Result};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file's content. Holes (a disk image is mostly holes) are hashed as the zeros
/// they read as, without reading them: reading the holes of a just-written file is slow on
/// ext4 (several seconds for a 2 GiB disk), and hashing from a zero buffer is not.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| BuildError::io(path, e))?;
    let len = f.metadata().map_err(|e| BuildError::io(path, e))?.len();
    let segments = webake_sys::fsutil::data_segments(&f, len).unwrap_or_else(|_| vec![(0, len)]);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let feed_zeros = |h: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(zeros.len() as u64) as usize;
            h.update(&zeros[..k]);
            n -= k as u64;
        }
    };
    for (start, seg_len) in segments {
        feed_zeros(&mut h, start - pos);
        let end = start + seg_len;
        let mut off = start;
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = f
                .read_at(&mut buf[..want], off)
                .map_err(|e| BuildError::io(path, e))?;
            if n == 0 {
                // The file shrank while being hashed.
                return Err(BuildError::Invalid(format!(
                    "{} changed while it was being hashed",
                    path.display()
                )));
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        pos = end;
    }
    feed_zeros(&mut h, len - pos);
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

    /// Sparse files (holes at the start, between and after data, and none at all) hash to
    /// what `sha256sum` reads from them.
    #[test]
    fn sparse_file_digest_matches_sha256sum() {
        use std::io::{Seek, SeekFrom, Write};
        let d = tempfile::tempdir().unwrap();
        // (name, writes as (offset, length), file length)
        type Case<'a> = (&'a str, &'a [(u64, usize)], u64);
        let cases: &[Case] = &[
            ("holes", &[(3 << 20, 5000), (9 << 20, 70_000)], 16 << 20),
            ("data-at-end", &[(0, 1), ((8 << 20) - 10, 10)], 8 << 20),
            ("all-hole", &[], 5 << 20),
            ("dense", &[(0, 3 << 20)], 3 << 20),
        ];
        for (name, writes, len) in cases {
            let p = d.path().join(name);
            let mut f = std::fs::File::create(&p).unwrap();
            f.set_len(*len).unwrap();
            for (i, (off, n)) in writes.iter().enumerate() {
                f.seek(SeekFrom::Start(*off)).unwrap();
                f.write_all(&vec![(i as u8) * 37 + 1; *n]).unwrap();
            }
            drop(f);
            let out = std::process::Command::new("sha256sum")
                .arg(&p)
                .output()
                .unwrap();
            let want = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                sha256_file(&p).unwrap(),
                want.split_whitespace().next().unwrap(),
                "{name}"
            );
        }
    }
}
