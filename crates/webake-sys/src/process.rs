//! The one runner for external commands.
//!
//! Argument lists are built by pure functions elsewhere and handed over as a [`Cmd`]. The runner
//! logs the command, streams stdout+stderr line by line to a sink (secrets redacted), keeps the
//! tail for error messages, puts the child in its own process group, and stops it on
//! cancellation.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cancel::CancelToken;

/// Lines of output kept for error messages.
pub const TAIL_LINES: usize = 40;
/// How long a cancelled command gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A command to run: program, arguments, environment, working directory.
#[derive(Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    secrets: Vec<String>,
    /// Shown instead of the full argument list (e.g. the sandbox's JSON spec).
    display: Option<String>,
    kill_on_parent_death: bool,
    /// A descriptor passed to the child under a fixed number (e.g. the sandbox spec on fd 3).
    pass_fd: Option<(i32, std::sync::Arc<std::os::fd::OwnedFd>)>,
    /// [`interactive`]: the child's process group becomes the terminal's foreground group.
    take_terminal: bool,
    /// Added to webake's nice value for the child (0: the same).
    nice: i32,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            cwd: None,
            secrets: Vec::new(),
            display: None,
            kill_on_parent_death: true,
            pass_fd: None,
            take_terminal: false,
            nice: 0,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    pub fn cwd(mut self, d: impl Into<PathBuf>) -> Self {
        self.cwd = Some(d.into());
        self
    }

    /// Values that must never appear in logs or error messages.
    pub fn secrets(mut self, s: impl IntoIterator<Item = String>) -> Self {
        self.secrets.extend(s.into_iter().filter(|s| !s.is_empty()));
        self
    }

    /// Give the child `fd` as descriptor number `as_fd` (only that one; others stay CLOEXEC).
    pub fn pass_fd(mut self, as_fd: i32, fd: std::sync::Arc<std::os::fd::OwnedFd>) -> Self {
        self.pass_fd = Some((as_fd, fd));
        self
    }

    /// Run the child at a lower priority (`n` added to webake's nice value, at most 19): work
    /// that should only use the CPU time the rest leaves idle.
    pub fn nice(mut self, n: i32) -> Self {
        self.nice = n;
        self
    }

    pub fn display_as(mut self, s: impl Into<String>) -> Self {
        self.display = Some(s.into());
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    pub fn redact(&self, line: &str) -> String {
        redact(line, &self.secrets)
    }

    fn to_command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let pdeath = self.kill_on_parent_death;
        let parent = std::process::id() as i32;
        let take_terminal = self.take_terminal;
        let nice = self.nice;
        let pass = self
            .pass_fd
            .as_ref()
            .map(|(n, fd)| (*n, std::os::fd::AsRawFd::as_raw_fd(fd.as_ref())));
        // SAFETY: only async-signal-safe calls (setpgid, setpriority, prctl, getppid, fcntl,
        // dup2) between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            c.pre_exec(move || {
                // Own process group: a terminal Ctrl-C reaches webake only, which then stops
                // its children in order.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if take_terminal && libc::isatty(0) == 1 {
                    // As a shell does for a job: a background group may not take the terminal
                    // unless SIGTTOU is ignored.
                    let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                    libc::tcsetpgrp(0, libc::getpid());
                    libc::signal(libc::SIGTTOU, old);
                }
                if nice != 0 {
                    let now = libc::getpriority(libc::PRIO_PROCESS, 0);
                    if libc::setpriority(libc::PRIO_PROCESS, 0, (now + nice).min(19)) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if pdeath && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // webake died between the fork and the prctl: no signal will come.
                if pdeath && libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if let Some((n, fd)) = pass {
                    // dup2 clears CLOEXEC on the new number; the same number needs it cleared.
                    if fd == n {
                        let fl = libc::fcntl(fd, libc::F_GETFD);
                        libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                    } else if libc::dup2(fd, n) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        c
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            return f.write_str(&redact(d, &self.secrets));
        }
        let mut s = shell_quote(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(&a.to_string_lossy()));
        }
        f.write_str(&redact(&s, &self.secrets))
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({self})")
    }
}

/// `s` as one word for `sh` (quoted only when it needs to be).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn redact(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[REDACTED]");
        }
    }
    out
}

/// How a finished command ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub tail: Vec<String>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` {status}{}", render_tail(.tail))]
    Failed {
        command: String,
        status: String,
        code: Option<i32>,
        tail: Vec<String>,
    },
    #[error("`{command}` was cancelled")]
    Cancelled { command: String },
    #[error("reading output of `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
}

fn render_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut s = String::from("; last output:");
    for l in tail {
        s.push_str("\n    | ");
        s.push_str(l);
    }
    s
}

impl ProcessError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled { .. })
    }
    pub fn tail(&self) -> &[String] {
        match self {
            Self::Failed { tail, .. } => tail,
            _ => &[],
        }
    }
}

/// Describe an exit status: `exited with status 2` or `was killed by signal SIGKILL`.
pub fn describe_status(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| sig.to_string());
        format!("was killed by signal {name}")
    } else {
        "ended abnormally".to_string()
    }
}

/// Run to completion, streaming every output line (stdout and stderr merged) to `sink`.
pub fn run(
    cmd: &Cmd,
    cancel: &CancelToken,
    sink: &mut dyn FnMut(&str),
) -> Result<Output, ProcessError> {
    run_with_heartbeat(cmd, cancel, sink, Duration::MAX, &mut |_| {})
}

/// [`run`], and `beat(elapsed)` whenever the command has been silent for `every` (a long step
/// shows that it is alive and for how long).
pub fn run_with_heartbeat(
    cmd: &Cmd,
    cancel: &CancelToken,
    sink: &mut dyn FnMut(&str),
    every: Duration,
    beat: &mut dyn FnMut(Duration),
) -> Result<Output, ProcessError> {
    let mut running = spawn(cmd)?;
    running.pump(cancel, sink, every, beat, &mut |_| false);
    running.wait(cancel)
}

/// A started command whose output is read on demand ([`spawn`]): the caller can go on when a
/// line says so and leave the rest of the output and the exit to another thread. Dropped
/// unfinished, the command's process group is killed and reaped.
pub struct Running {
    cmd: Cmd,
    shown: String,
    child: Option<std::process::Child>,
    pid: i32,
    rx: mpsc::Receiver<std::io::Result<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    tail: VecDeque<String>,
    start: Instant,
    cancelled_at: Option<Instant>,
    io_error: Option<std::io::Error>,
    ended: bool,
}

/// Start `cmd` (stdout and stderr merged into one stream of lines; see [`Running`]).
pub fn spawn(cmd: &Cmd) -> Result<Running, ProcessError> {
    let shown = cmd.to_string();
    tracing::debug!(command = %shown, "running");
    let (reader, writer) = std::io::pipe().map_err(|source| ProcessError::Spawn {
        command: shown.clone(),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| ProcessError::Spawn {
        command: shown.clone(),
        source,
    })?;
    let mut command = cmd.to_command();
    command.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let start = Instant::now();
    let child = command.spawn().map_err(|source| ProcessError::Spawn {
        command: shown.clone(),
        source,
    })?;
    // Drop our copies of the write end (held by `command`) so EOF arrives when the child exits.
    drop(command);
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<std::io::Result<String>>();
    let reader_thread = std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    Ok(Running {
        cmd: cmd.clone(),
        shown,
        child: Some(child),
        pid,
        rx,
        reader: Some(reader_thread),
        tail: VecDeque::with_capacity(TAIL_LINES),
        start,
        cancelled_at: None,
        io_error: None,
        ended: false,
    })
}

impl Running {
    /// Stream output lines (redacted) to `sink` until the output ends (returns true), or until
    /// `stop_after(line)` is true for a line just passed to the sink (returns false). Stops
    /// the command on cancellation (SIGTERM, then SIGKILL after a grace period) and calls
    /// `beat(elapsed)` when it has been silent for `every`.
    pub fn pump(
        &mut self,
        cancel: &CancelToken,
        sink: &mut dyn FnMut(&str),
        every: Duration,
        beat: &mut dyn FnMut(Duration),
        stop_after: &mut dyn FnMut(&str) -> bool,
    ) -> bool {
        let mut heard = Instant::now();
        while !self.ended {
            if heard.elapsed() >= every {
                beat(self.start.elapsed());
                heard = Instant::now();
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(line)) => {
                    heard = Instant::now();
                    let line = self.cmd.redact(&line);
                    sink(&line);
                    if self.tail.len() == TAIL_LINES {
                        self.tail.pop_front();
                    }
                    let stop = stop_after(&line);
                    self.tail.push_back(line);
                    if stop {
                        return false;
                    }
                }
                Ok(Err(e)) => self.io_error = Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.ended = true,
            }
            if cancel.is_cancelled() {
                match self.cancelled_at {
                    None => {
                        tracing::info!(command = %self.shown, "cancelling");
                        kill_group(self.pid, libc::SIGTERM);
                        self.cancelled_at = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() > TERM_GRACE => kill_group(self.pid, libc::SIGKILL),
                    Some(_) => {}
                }
            }
        }
        true
    }

    /// Read the rest of the output (dropped), wait for the command and say how it ended.
    pub fn wait(mut self, cancel: &CancelToken) -> Result<Output, ProcessError> {
        self.pump(cancel, &mut |_| {}, Duration::MAX, &mut |_| {}, &mut |_| {
            false
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let shown = std::mem::take(&mut self.shown);
        let status = self
            .child
            .take()
            .expect("waited once")
            .wait()
            .map_err(|source| ProcessError::Io {
                command: shown.clone(),
                source,
            })?;
        if let Some(source) = self.io_error.take() {
            return Err(ProcessError::Io {
                command: shown,
                source,
            });
        }
        let tail: Vec<String> = std::mem::take(&mut self.tail).into_iter().collect();
        if self.cancelled_at.is_some() || (cancel.is_cancelled() && !status.success()) {
            return Err(ProcessError::Cancelled { command: shown });
        }
        if !status.success() {
            return Err(ProcessError::Failed {
                command: shown,
                status: describe_status(&status),
                code: status.code(),
                tail,
            });
        }
        Ok(Output {
            status,
            tail,
            duration: self.start.elapsed(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Run with the terminal: stdin, stdout and stderr inherited, nothing logged or redacted (an
/// interactive debug shell). When stdin is a terminal, the child's process group is its
/// foreground group while it runs (Ctrl-C and reads reach the child, not webake), and webake
/// takes it back afterwards. Returns the exit status, whatever it is.
pub fn interactive(cmd: &Cmd) -> Result<ExitStatus, ProcessError> {
    let shown = cmd.to_string();
    let mut cmd = cmd.clone();
    cmd.take_terminal = true;
    let mut command = cmd.to_command();
    let status = command.status().map_err(|source| ProcessError::Spawn {
        command: shown,
        source,
    });
    // SAFETY: plain syscalls on our own stdin and signal disposition.
    #[allow(unsafe_code)]
    unsafe {
        if libc::isatty(0) == 1 {
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(0, libc::getpgrp());
            libc::signal(libc::SIGTTOU, old);
        }
    }
    status
}

/// A process's exit code as a shell reports it: its code, or 128 + the signal that ended it.
pub fn exit_code(status: &ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Run and capture stdout (stderr goes to the tail for errors). For short query commands.
pub fn capture(cmd: &Cmd) -> Result<String, ProcessError> {
    let shown = cmd.to_string();
    tracing::debug!(command = %shown, "capturing");
    let mut command = cmd.to_command();
    command.stdin(Stdio::null());
    let out = command.output().map_err(|source| ProcessError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut tail: Vec<String> = stderr.lines().map(|l| cmd.redact(l)).collect();
        if tail.len() > TAIL_LINES {
            tail.drain(..tail.len() - TAIL_LINES);
        }
        return Err(ProcessError::Failed {
            command: shown,
            status: describe_status(&out.status),
            code: out.status.code(),
            tail,
        });
    }
    Ok(cmd.redact(&String::from_utf8_lossy(&out.stdout)))
}

fn kill_group(pid: i32, sig: i32) {
    // SAFETY: plain syscall; pid is our child's process group (it called setpgid(0, 0)).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// Is `program` on PATH (or an existing path)?
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return p.exists().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_lines_and_reports_status_with_tail() {
        let mut lines = Vec::new();
        let cmd = Cmd::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]);
        let err = run(&cmd, &CancelToken::new(), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap_err();
        assert_eq!(lines, vec!["one", "two"]);
        let msg = err.to_string();
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.contains("| two"), "{msg}");
    }

    #[test]
    fn a_niced_child_runs_at_that_priority_and_others_do_not() {
        let base = capture(&Cmd::new("nice")).unwrap();
        let base: i32 = base.trim().parse().unwrap();
        let niced = capture(&Cmd::new("nice").nice(7)).unwrap();
        assert_eq!(niced.trim().parse::<i32>().unwrap(), (base + 7).min(19));
    }

    #[test]
    fn signal_is_named() {
        let cmd = Cmd::new("sh").args(["-c", "kill -9 $$"]);
        let err = run(&cmd, &CancelToken::new(), &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("killed by signal SIGKILL"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let cmd = Cmd::new("sh")
            .args(["-c", "echo token=hunter22; exit 1"])
            .secrets(["hunter22".to_string()]);
        let mut lines = Vec::new();
        let err = run(&cmd, &CancelToken::new(), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap_err();
        assert_eq!(lines, vec!["token=[REDACTED]"]);
        assert!(!err.to_string().contains("hunter22"), "{err}");
        assert!(!cmd.to_string().contains("hunter22"));
    }

    #[test]
    fn cancellation_stops_the_process_group() {
        let cancel = CancelToken::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c2.cancel();
        });
        let start = Instant::now();
        // The grandchild `sleep` is in the same process group and must die too.
        let err = run(
            &Cmd::new("sh").args(["-c", "sleep 30 & sleep 30; wait"]),
            &cancel,
            &mut |_| {},
        )
        .unwrap_err();
        t.join().unwrap();
        assert!(err.is_cancelled(), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn quoting_for_display() {
        let c = Cmd::new("echo").args(["a b", "it's", "plain"]);
        assert_eq!(c.to_string(), "echo 'a b' 'it'\\''s' plain");
    }
}
