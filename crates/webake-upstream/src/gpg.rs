//! Verify a clearsigned InRelease with `gpgv`, the way apt does: keyrings given explicitly,
//! a private empty home, the signed text taken from gpgv's output (never from the file), and
//! the verdict read from `--status-fd` lines rather than the exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use crate::error::{Error, Result};
use crate::sources::SourceId;
use crate::tool;

/// InRelease files are a few hundred KiB; refuse absurd ones.
pub(crate) const MAX_INRELEASE: u64 = 32 * 1024 * 1024;

const BEGIN_SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
const END_SIGNATURE: &str = "-----END PGP SIGNATURE-----";
const ARMORED_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/// Verify `inrelease` with the keys of `keyrings` and return the signed text.
pub(crate) fn verify_inrelease(
    id: &SourceId,
    inrelease: &[u8],
    keyrings: &[PathBuf],
) -> Result<String> {
    let bad = |detail: String| Error::BadSignature {
        source_id: id.clone(),
        keyrings: keyrings.to_vec(),
        detail,
    };
    check_clearsigned_shape(inrelease).map_err(bad)?;

    let home = tempfile::Builder::new()
        .prefix("webake-gpgv.")
        .tempdir()
        .map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let mut cmd = Command::new("gpgv");
    cmd.arg("--homedir").arg(home.path());
    for (i, keyring) in keyrings.iter().enumerate() {
        let path = binary_keyring(id, keyring, home.path(), i)?;
        cmd.arg("--keyring").arg(path);
    }
    let plain = home.path().join("signed-text");
    cmd.arg("--status-fd")
        .arg("1")
        .arg("--output")
        .arg(&plain)
        .arg("-");
    let out = tool::run(&mut cmd, inrelease, 1024 * 1024, "InRelease")?;
    let status_lines = String::from_utf8_lossy(&out.stdout);
    judge(&status_lines).map_err(|why| {
        let stderr = out.stderr.trim();
        bad(if stderr.is_empty() {
            why
        } else {
            format!("{why}; gpgv: {}", stderr.replace('\n', "; "))
        })
    })?;
    let text = std::fs::read(&plain).map_err(|source| Error::Io {
        path: plain.clone(),
        source,
    })?;
    String::from_utf8(text).map_err(|_| Error::Malformed {
        source_id: id.clone(),
        what: "InRelease".into(),
        message: "signed text is not UTF-8".into(),
    })
}

/// Like apt: only whitespace around a single clearsigned message, so no unsigned text can sit
/// next to the signed part.
fn check_clearsigned_shape(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|_| "InRelease is not UTF-8 text".to_owned())?;
    let trimmed = text.trim();
    if !trimmed.starts_with(BEGIN_SIGNED) {
        return Err("not a clearsigned message (no BEGIN PGP SIGNED MESSAGE)".into());
    }
    if !trimmed.ends_with(END_SIGNATURE) {
        return Err("data after the signature".into());
    }
    if trimmed.matches(BEGIN_SIGNED).count() != 1 || trimmed.matches(END_SIGNATURE).count() != 1 {
        return Err("more than one signed message".into());
    }
    Ok(())
}

/// The gpgv verdict from its status lines: at least one good, valid signature made with a
/// strong digest, and no bad one. Signatures by keys not in the keyrings are ignored when
/// another one is good (Debian signs with several keys).
fn judge(status: &str) -> Result<(), String> {
    let mut good = 0;
    let mut problems = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let keyword = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        match keyword {
            "VALIDSIG" => {
                // VALIDSIG fpr date ts expire version reserved pubkey-algo hash-algo class ...
                let hash_algo = args.get(7).copied().unwrap_or_default();
                if matches!(hash_algo, "1" | "2" | "3") {
                    problems.push(format!(
                        "signature with a weak digest (algorithm {hash_algo})"
                    ));
                } else {
                    good += 1;
                }
            }
            "BADSIG" => problems.push(format!("BAD signature from key {}", arg(&args, 0))),
            "EXPKEYSIG" => problems.push(format!("signature by expired key {}", arg(&args, 0))),
            "REVKEYSIG" => problems.push(format!("signature by revoked key {}", arg(&args, 0))),
            "EXPSIG" => problems.push(format!("expired signature by key {}", arg(&args, 0))),
            _ => {}
        }
    }
    let fatal = problems
        .iter()
        .any(|p| !p.starts_with("signature with a weak"));
    if fatal || good == 0 {
        if problems.is_empty() {
            let unknown: Vec<&str> = status
                .lines()
                .filter_map(|l| l.strip_prefix("[GNUPG:] NO_PUBKEY "))
                .collect();
            if unknown.is_empty() {
                return Err("no valid signature".into());
            }
            return Err(format!(
                "no valid signature; signed by key(s) not in the keyring(s): {}",
                unknown.join(", ")
            ));
        }
        return Err(problems.join("; "));
    }
    Ok(())
}

fn arg<'a>(args: &[&'a str], i: usize) -> &'a str {
    args.get(i).copied().unwrap_or("?")
}

/// gpgv reads binary keyrings only; an ASCII-armored one (`.asc`, as apt also accepts) is
/// de-armored into `dir` first.
fn binary_keyring(id: &SourceId, path: &Path, dir: &Path, n: usize) -> Result<PathBuf> {
    let keyring_err = |source| Error::Keyring {
        source_id: id.clone(),
        path: path.to_owned(),
        source,
    };
    let data = std::fs::read(path).map_err(keyring_err)?;
    if !data.trim_ascii_start().starts_with(ARMORED_KEY.as_bytes()) {
        return Ok(path.to_owned());
    }
    let text = String::from_utf8_lossy(&data);
    let binary = dearmor(&text).map_err(|m| keyring_err(std::io::Error::other(m)))?;
    let out = dir.join(format!("keyring-{n}.gpg"));
    std::fs::write(&out, binary).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// Decode every `PUBLIC KEY BLOCK` of an armored file (headers and CRC line skipped).
fn dearmor(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != ARMORED_KEY {
            continue;
        }
        // Armor headers end with a blank line.
        for l in lines.by_ref() {
            if l.is_empty() {
                break;
            }
        }
        let mut b64 = String::new();
        for l in lines.by_ref() {
            if l.starts_with("-----END") || l.starts_with('=') {
                break;
            }
            b64.push_str(l);
        }
        let block = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("armored key block: {e}"))?;
        out.extend(block);
    }
    if out.is_empty() {
        return Err("no PUBLIC KEY BLOCK in the armored keyring".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_status_lines() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 6ED0E7B82643E131 Debian\n\
            [GNUPG:] VALIDSIG 4CB50190207B4758A3F73A796ED0E7B82643E131 2026-07-11 1783765031 0 4 0 1 8 01 B8B8\n";
        judge(good).unwrap();
        let partly_unknown = format!(
            "{good}[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 78DBA3BC47EF2265 1 8 01 1783765032 9 -\n\
             [GNUPG:] NO_PUBKEY 78DBA3BC47EF2265\n"
        );
        judge(&partly_unknown).unwrap();
        let unknown = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 78DBA3BC47EF2265 1 8 01 1783765032 9 -\n\
             [GNUPG:] NO_PUBKEY 78DBA3BC47EF2265\n";
        assert!(judge(unknown).unwrap_err().contains("78DBA3BC47EF2265"));
        let bad = format!("{good}[GNUPG:] BADSIG 1111 Mallory\n");
        assert!(
            judge(&bad)
                .unwrap_err()
                .contains("BAD signature from key 1111")
        );
        let sha1 = good.replace(" 1 8 01 ", " 1 2 01 ");
        assert!(judge(&sha1).unwrap_err().contains("weak digest"));
        assert!(judge("").unwrap_err().contains("no valid signature"));
    }

    #[test]
    fn clearsigned_shape() {
        let msg = format!(
            "{BEGIN_SIGNED}\nHash: SHA512\n\nSuite: x\n-----BEGIN PGP SIGNATURE-----\n\nAAAA\n{END_SIGNATURE}\n"
        );
        check_clearsigned_shape(msg.as_bytes()).unwrap();
        assert!(check_clearsigned_shape(format!("Suite: evil\n{msg}").as_bytes()).is_err());
        assert!(check_clearsigned_shape(format!("{msg}Suite: evil\n").as_bytes()).is_err());
        assert!(check_clearsigned_shape(format!("{msg}{msg}").as_bytes()).is_err());
        assert!(check_clearsigned_shape(b"Suite: plain\n").is_err());
    }

    #[test]
    fn dearmors_key_blocks() {
        let armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\naGVsbG8g\nd29ybGQ=\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n";
        assert_eq!(dearmor(armored).unwrap(), b"hello world");
        assert!(dearmor("nothing").is_err());
    }
}
