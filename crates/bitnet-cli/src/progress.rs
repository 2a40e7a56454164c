//! Progress bars on stderr for long work (hidden when stderr is not a terminal).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `total` units, labelled `what`.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A spinner that appears only if the work takes longer than `delay` (a quick load shows
/// nothing).
pub fn spinner(what: &str, delay: Duration) -> DelayedSpinner {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    let done = Arc::new(Mutex::new(false));
    let (b, d) = (bar.clone(), Arc::clone(&done));
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        // Under the lock, so the spinner cannot start after `finish_and_clear`.
        let done = d.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            b.set_draw_target(ProgressDrawTarget::stderr());
            b.enable_steady_tick(Duration::from_millis(100));
        }
    });
    DelayedSpinner { bar, done }
}

pub struct DelayedSpinner {
    bar: ProgressBar,
    done: Arc<Mutex<bool>>,
}

impl DelayedSpinner {
    pub fn finish_and_clear(self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.bar.finish_and_clear();
    }
}
