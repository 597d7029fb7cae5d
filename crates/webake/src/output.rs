//! What the CLI prints. stdout: the command's result (text, or one JSON document with
//! `--json`). stderr: progress and diagnostics, as text lines or, with `--log-format json`, one
//! JSON object per line (errors included). The engine reports events; this renders them.

use std::io::Write as _;
use std::process::ExitCode;

use serde::Serialize;
use webake_engine::{Error, ErrorKind, Event, Reporter, StageStatus};

use crate::cli::{GlobalArgs, LogFormat};

/// The renderer of one command's output.
pub struct Output {
    pub format: LogFormat,
    pub json: bool,
    pub quiet: bool,
    /// `webake COMMAND`, the `source` of JSON lines.
    pub source: String,
    /// The recipe a line is about, when one command bakes several at once: `[NAME] ` before
    /// every text line, `"recipe": NAME` in every JSON line.
    pub scope: Option<String>,
}

impl Output {
    pub fn new(global: &GlobalArgs, command: &str) -> Self {
        Self {
            format: global.log_format,
            json: global.json,
            quiet: global.quiet,
            source: format!("webake {command}"),
            scope: None,
        }
    }

    /// The same output, every progress line marked with `label`.
    pub fn scoped(&self, label: &str) -> Output {
        Output {
            format: self.format,
            json: self.json,
            quiet: self.quiet,
            source: self.source.clone(),
            scope: Some(label.to_string()),
        }
    }

    /// Print the result: `value` as JSON with `--json`, else the text `text` renders.
    pub fn result<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> Result<(), Error> {
        let out = if self.json {
            let mut s = serde_json::to_string_pretty(value)
                .map_err(|e| Error::Failed(format!("serializing the result: {e}")))?;
            s.push('\n');
            s
        } else {
            text(value)
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("stdout", e))
    }

    fn line(&self, event: &str, fields: serde_json::Value, text: impl FnOnce() -> String) {
        match (self.format, &self.scope) {
            (LogFormat::Text, None) => eprintln!("{}", text()),
            (LogFormat::Text, Some(label)) => {
                // One write per event: the lines of concurrent bakes do not interleave.
                let s: String = text().lines().map(|l| format!("[{label}] {l}\n")).collect();
                eprint!("{s}");
            }
            (LogFormat::Json, scope) => {
                let mut obj = serde_json::json!({
                    "time": jiff::Timestamp::now().to_string(),
                    "source": self.source,
                    "event": event,
                });
                if let (Some(o), Some(label)) = (obj.as_object_mut(), scope) {
                    o.insert("recipe".into(), label.clone().into());
                }
                if let (Some(o), serde_json::Value::Object(f)) = (obj.as_object_mut(), fields) {
                    o.extend(f);
                }
                eprintln!("{obj}");
            }
        }
    }

    /// Print the error (each cause once) and return its documented exit code.
    pub fn error(&self, e: &Error) -> ExitCode {
        let code = e.kind().exit_code();
        let causes = webake_engine::error::causes(e);
        self.line(
            "error",
            serde_json::json!({
                "level": "error",
                "kind": e.kind(),
                "exit_code": code,
                "message": causes.first().cloned().unwrap_or_default(),
                "causes": causes.get(1..).unwrap_or_default(),
            }),
            || {
                let mut it = causes.iter();
                let mut s = format!(
                    "error: {}",
                    it.next().map(String::as_str).unwrap_or_default()
                );
                for c in it {
                    s.push_str(&format!("\n  caused by: {c}"));
                }
                s
            },
        );
        ExitCode::from(code)
    }
}

impl Reporter for Output {
    fn event(&self, event: &Event<'_>) {
        if self.quiet && !matches!(event, Event::Warning(_)) {
            return;
        }
        match *event {
            Event::StageStarted { stage } => self.line(
                "started",
                serde_json::json!({"stage": stage}),
                || format!("==> run: {stage}"),
            ),
            Event::StageFinished {
                stage,
                status,
                seconds,
                detail,
            } => self.line(
                "finished",
                serde_json::json!({"stage": stage, "status": status, "seconds": seconds, "detail": detail}),
                || {
                    let secs = seconds.map(|s| format!(" in {s:.1}s")).unwrap_or_default();
                    let status = match status {
                        StageStatus::NotRun => "not run",
                        s => s.as_str(),
                    };
                    format!("<== run: {stage} {status}{secs}: {detail}")
                },
            ),
            Event::StepStarted { step, detail } => self.line(
                "step_started",
                serde_json::json!({"step": step, "detail": detail}),
                || format!("==> {step}: {detail}"),
            ),
            Event::StepFinished {
                step,
                elapsed,
                cache,
            } => self.line(
                "step_finished",
                serde_json::json!({"step": step, "seconds": elapsed.as_secs_f64(), "cache": cache}),
                || {
                    let c = match cache {
                        webake_engine::events::CacheStatus::Hit => " (cached)",
                        _ => "",
                    };
                    format!("<== {step}: done in {:.1}s{c}", elapsed.as_secs_f64())
                },
            ),
            Event::Progress { step, elapsed } => self.line(
                "progress",
                serde_json::json!({"step": step, "seconds": elapsed.as_secs_f64()}),
                || {
                    let s = elapsed.as_secs();
                    format!("... {step}: still running ({}m{:02}s)", s / 60, s % 60)
                },
            ),
            Event::Output { step, line } => self.line(
                "output",
                serde_json::json!({"step": step, "line": line}),
                || format!("    | {line}"),
            ),
            Event::Note(m) => self.line("note", serde_json::json!({"message": m}), || {
                format!("--- {m}")
            }),
            Event::Warning(m) => self.line(
                "warning",
                serde_json::json!({"level": "warning", "message": m}),
                || format!("warning: {m}"),
            ),
        }
    }
}

/// Exit code of a failure kind (for results that carry one, e.g. `validate`).
pub fn exit(kind: ErrorKind) -> ExitCode {
    ExitCode::from(kind.exit_code())
}
