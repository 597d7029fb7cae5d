//! Helper programs (gpgv, xz, gzip, dpkg-deb): one runner that feeds stdin from a thread,
//! bounds stdout, captures stderr and names the program in every error.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};

use crate::error::{Error, Result};

/// What a finished command left.
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Run `cmd` with `input` on stdin; stdout beyond `limit` bytes is an error (the child is
/// killed). `context` says what the command was for, for error messages.
pub(crate) fn run(cmd: &mut Command, input: &[u8], limit: u64, context: &str) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(program, context, "running");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (out, err) = std::thread::scope(|s| {
        // A child that exits early closes its stdin: a broken pipe here is not the error
        // to report (its status and stderr are).
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        let err = s.spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf);
            // Drain the rest so the child never blocks on a full stderr pipe.
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            String::from_utf8_lossy(&buf).into_owned()
        });
        let mut buf = Vec::new();
        let read = (&mut stdout).take(limit + 1).read_to_end(&mut buf);
        drop(stdout);
        (read.map(|_| buf), err.join().unwrap_or_default())
    });
    let too_large = matches!(&out, Ok(b) if b.len() as u64 > limit);
    if too_large {
        // Our own child, by its handle.
        let _ = child.kill();
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = out.map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if too_large {
        return Err(Error::Command {
            program,
            context: context.to_owned(),
            status: format!("output larger than {limit} bytes"),
            stderr: err,
        });
    }
    Ok(Output {
        status,
        stdout,
        stderr: err,
    })
}

/// Like [`run`], but a non-zero exit is an error.
pub(crate) fn run_ok(
    cmd: &mut Command,
    input: &[u8],
    limit: u64,
    context: &str,
) -> Result<Vec<u8>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = run(cmd, input, limit, context)?;
    if !out.status.success() {
        return Err(Error::Command {
            program,
            context: context.to_owned(),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// How an index file is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Xz,
    Gzip,
    Plain,
}

impl Codec {
    pub fn of(path: &str) -> Option<Codec> {
        if path.ends_with(".xz") {
            Some(Codec::Xz)
        } else if path.ends_with(".gz") {
            Some(Codec::Gzip)
        } else if path.rsplit('/').next().is_some_and(|n| !n.contains('.')) {
            Some(Codec::Plain)
        } else {
            None
        }
    }

    /// Preference when a Release offers several: smallest download first.
    pub fn rank(self) -> u8 {
        match self {
            Codec::Xz => 0,
            Codec::Gzip => 1,
            Codec::Plain => 2,
        }
    }
}

/// Decompress with the system `xz`/`gzip` (both are on every Debian system: xz-utils is
/// Priority required, gzip Essential). The input's digest has been checked against the signed
/// Release before this runs.
pub(crate) fn decompress(
    codec: Codec,
    data: Vec<u8>,
    limit: u64,
    context: &str,
) -> Result<Vec<u8>> {
    let program = match codec {
        Codec::Plain => return Ok(data),
        Codec::Xz => "xz",
        Codec::Gzip => "gzip",
    };
    run_ok(Command::new(program).arg("-dc"), &data, limit, context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_limits() {
        let text = b"Package: a\nVersion: 1\n".repeat(1000);
        for (codec, prog) in [(Codec::Xz, "xz"), (Codec::Gzip, "gzip")] {
            let packed = run_ok(Command::new(prog).arg("-c"), &text, 1 << 20, "test").unwrap();
            assert!(packed.len() < text.len());
            let back = decompress(codec, packed.clone(), 1 << 20, "test").unwrap();
            assert_eq!(back, text);
            let e = decompress(codec, packed, 100, "test").unwrap_err();
            assert!(e.to_string().contains("larger than 100 bytes"), "{e}");
        }
        let e = decompress(Codec::Xz, b"not xz".to_vec(), 1 << 20, "Packages.xz").unwrap_err();
        assert!(
            e.to_string().starts_with("xz Packages.xz: exit status: 1"),
            "{e}"
        );
        let e = run_ok(&mut Command::new("/nonexistent/tool"), b"", 1, "x").unwrap_err();
        assert!(matches!(e, Error::Spawn { .. }), "{e}");
    }

    #[test]
    fn codec_from_name() {
        assert_eq!(Codec::of("main/binary-amd64/Packages.xz"), Some(Codec::Xz));
        assert_eq!(
            Codec::of("main/binary-amd64/Packages.gz"),
            Some(Codec::Gzip)
        );
        assert_eq!(Codec::of("main/binary-amd64/Packages"), Some(Codec::Plain));
        assert_eq!(Codec::of("main/binary-amd64/Packages.bz2"), None);
    }
}
