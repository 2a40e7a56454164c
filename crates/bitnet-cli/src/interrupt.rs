//! Ctrl-C: while a reply is being generated it interrupts that reply (the command goes on, as
//! `chat` does); otherwise, or pressed twice within a second, it exits (status 130), removing
//! any output file not yet complete ([`crate::files::remove_unfinished`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);
static LAST_PRESS_MS: AtomicU64 = AtomicU64::new(0);
static INSTALLED: OnceLock<()> = OnceLock::new();

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Installs the handler (once). If it cannot be installed Ctrl-C keeps its default meaning.
pub fn install() {
    INSTALLED.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            let now = now_ms();
            let recent = now.saturating_sub(LAST_PRESS_MS.swap(now, Ordering::AcqRel)) < 1000;
            if !GENERATING.load(Ordering::Acquire) || recent {
                crate::files::remove_unfinished();
                std::process::exit(130);
            }
            INTERRUPTED.store(true, Ordering::Release);
        });
    });
}

/// Marks a generation as running (Ctrl-C interrupts it) or not (Ctrl-C exits); clears any
/// earlier interrupt.
pub fn set_generating(on: bool) {
    install();
    INTERRUPTED.store(false, Ordering::Release);
    GENERATING.store(on, Ordering::Release);
}

/// Whether Ctrl-C was pressed since the generation began.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// Exits with status 130 (a shell's code for SIGINT) when the command was `interrupted`,
/// after it has shown what it did; otherwise returns `Ok`.
pub fn exit_if(interrupted: bool) -> anyhow::Result<()> {
    if interrupted {
        eprintln!("[interrupted]");
        crate::files::remove_unfinished();
        std::process::exit(130);
    }
    Ok(())
}
