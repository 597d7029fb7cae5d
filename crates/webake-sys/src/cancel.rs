//! Cancellation: the first SIGINT/SIGTERM asks every running step to stop and unwind through
//! the normal cleanup path; a second one forces the process out at once (children die with it:
//! every child is started with a parent-death signal).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) || SIGNALS.load(Ordering::SeqCst) > 0
    }
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_sig: libc::c_int) {
    let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= 2 {
        const MSG: &[u8] = b"\nwebake: second signal, forcing exit\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(130);
        }
    }
}

/// Install SIGINT/SIGTERM/SIGHUP handlers that cancel every [`CancelToken`].
pub fn install_signal_handlers() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches an atomic and async-signal-safe calls.
        #[allow(unsafe_code)]
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
}

/// Has a termination signal arrived?
pub fn signalled() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}
