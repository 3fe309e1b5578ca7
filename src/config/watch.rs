//! Noticing that the config file may have changed: a watch on its directory
//! (not its inode, which editors and Kubernetes replace), debounced, plus a
//! slow poll as a safety net. It only says "look again"; the reload compares
//! content, so a spurious wake-up costs one read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last file event before the file is read: editors
/// write in several steps, and a file is read only once they stop.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches one config file.
pub struct FileWatch {
    // Kept alive: dropping it ends the watch.
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    poll: tokio::time::Interval,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("watching", &self._watcher.is_some())
            .finish_non_exhaustive()
    }
}

impl FileWatch {
    /// Watches the directory of `path`, polling every `poll` as well. If the
    /// directory cannot be watched, polling alone still works (and a warning
    /// says so).
    pub fn new(path: &Path, poll: Duration) -> FileWatch {
        let (tx, events) = mpsc::unbounded_channel();
        let dir = parent_dir(path);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Any event in the directory may concern the file: a rename over
            // it, a `..data` symlink swap, a delete and re-create.
            if event.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot watch the config directory ({e}); polling every {poll:?}");
                None
            }
        };
        let mut poll = tokio::time::interval(poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.reset();
        FileWatch {
            _watcher: watcher,
            events,
            poll,
        }
    }

    /// Resolves when the file should be read again: a file event followed by
    /// [`DEBOUNCE`] of quiet, or a poll tick.
    pub async fn changed(&mut self) {
        tokio::select! {
            Some(()) = self.events.recv() => {}
            _ = self.poll.tick() => return,
        }
        loop {
            match tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
