//! Progress bars: the one way every long command shows how far it is (calibration, sensitivity,
//! the HTML report's sensitivity study, bench's timed runs).
//!
//! A bar is an [indicatif] bar on stderr, drawn only when stderr is a terminal: piped or
//! redirected output (scripts, CI, the tests) gets nothing, so stderr stays the one-line error
//! channel. It is driven through a `progress(done, total)` callback, the signature the calibration
//! and sensitivity machinery of `qforge-passes` reports through.

use std::borrow::Cow;
use std::io::IsTerminal;

/// A progress callback `(done, total)` drawing `what [=====>   ] done/total unit (eta)` on
/// stderr when stderr is a terminal, and doing nothing otherwise. The bar appears on the first
/// call and is cleared when `done` reaches `total`.
pub fn bar(what: impl Into<Cow<'static, str>>, unit: &'static str) -> Box<dyn FnMut(usize, usize)> {
    let mut b = bar_with_status(what, unit);
    Box::new(move |done, total| b(done, total, ""))
}

/// A progress callback with a status: `(done, total, status)`.
pub type StatusBar = Box<dyn FnMut(usize, usize, &str)>;

/// [`bar`] with a status after the count, replaced at each call (`finetune`'s loss, loss scale
/// and skipped steps).
pub fn bar_with_status(what: impl Into<Cow<'static, str>>, unit: &'static str) -> StatusBar {
    if !std::io::stderr().is_terminal() {
        return Box::new(|_, _, _| {});
    }
    let what = what.into();
    let mut bar: Option<indicatif::ProgressBar> = None;
    Box::new(move |done, total, status: &str| {
        let b = bar.get_or_insert_with(|| {
            let b =
                indicatif::ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::stderr());
            let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{eta}}) {{msg}}");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(what.clone());
            b
        });
        b.set_message(status.to_string());
        b.set_position(done as u64);
        if done >= total {
            b.finish_and_clear();
        }
    })
}
