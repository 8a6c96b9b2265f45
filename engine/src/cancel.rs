//! Stopping a run from outside, for a server whose client left. The caller runs the work under
//! [`when`] with a flag it may raise from another thread; the pipelines look at the flag between
//! steps, transformer blocks and decoder blocks ([`check`]) and give up with
//! [`Error::Cancelled`]. A run started outside [`when`] is never stopped.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static STOP: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `work` on this thread; while it runs, [`check`] fails once `stop` is raised.
pub fn when<R>(stop: Arc<AtomicBool>, work: impl FnOnce() -> R) -> R {
    /// Puts the outer flag back, also when `work` unwinds.
    struct Restore(Option<Arc<AtomicBool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STOP.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(STOP.with(|s| s.borrow_mut().replace(stop)));
    work()
}

/// `Err(Error::Cancelled)` once the flag of the enclosing [`when`] is raised.
pub(crate) fn check() -> Result<()> {
    let raised = STOP.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    });
    match raised {
        true => Err(Error::Cancelled),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_raised_flag_of_the_enclosing_scope_stops() {
        assert!(check().is_ok(), "outside any scope");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = when(stop.clone(), || {
            let before = check().is_ok();
            stop.store(true, Ordering::Relaxed);
            let inner = when(Arc::new(AtomicBool::new(false)), check).is_ok();
            (before, inner, check())
        });
        assert!(seen.0 && seen.1, "not raised, or another scope's flag");
        assert!(matches!(seen.2, Err(Error::Cancelled)));
        assert!(check().is_ok(), "the scope is over");
        let unwound = std::panic::catch_unwind(|| when(stop.clone(), || panic!("in the run")));
        assert!(unwound.is_err());
        assert!(check().is_ok(), "restored after a panic");
    }
}
