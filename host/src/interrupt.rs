//! Clean interruption by signal: SIGTERM, SIGINT and SIGUSR1 (what a cluster scheduler sends
//! before it kills or requeues a job) ask a run to stop after its current step, write a
//! checkpoint, flush its files and exit with [`EXIT_INTERRUPTED`]. A second SIGINT (Ctrl-C
//! twice) exits at once with 130, as an uncaught SIGINT would.
//!
//! The handler only stores the signal's number in an atomic (and calls `_exit` for the second
//! SIGINT), both async-signal-safe; the training loop reads the number between steps.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The exit status of a run interrupted by a signal after writing its checkpoint
/// (`EX_TEMPFAIL` of sysexits.h: try again, i.e. resume).
pub const EXIT_INTERRUPTED: u8 = 75;

/// The exit status of a second SIGINT: 128 + SIGINT.
pub const EXIT_SECOND_SIGINT: i32 = 130;

/// The first signal received, 0 before any.
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    let first = SIGNAL.compare_exchange(0, signal as usize, Ordering::SeqCst, Ordering::SeqCst);
    if first.is_err() && signal == libc::SIGINT {
        // SAFETY: `_exit` is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(EXIT_SECOND_SIGINT) };
    }
}

/// Install the handlers; returns the flag the trainer watches (see
/// [`crate::train::Trainer::interrupt_on`]).
pub fn install() -> std::io::Result<&'static AtomicUsize> {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C" fn(c_int)` that
        // only touches an atomic and `_exit`; `sa_mask` is initialised by `sigemptyset`.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(&SIGNAL)
}
