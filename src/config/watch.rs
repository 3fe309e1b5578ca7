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

/// Longest wait for quiet after the first event.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Watches one config file.
pub struct FileWatch {
    // Kept alive: dropping it ends the watch.
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    poll: tokio::time::Interval,
    /// After an event: when quiet ends the wait, and the latest it may end.
    settling: Option<(tokio::time::Instant, tokio::time::Instant)>,
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
        let name = path.file_name().map(std::ffi::OsStr::to_os_string);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| concerns(&e, name.as_deref())) {
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
            settling: None,
        }
    }

    /// Resolves when the file should be read again: a file event followed by
    /// [`DEBOUNCE`] of quiet (at most [`MAX_SETTLE`] after the first), or a
    /// poll tick. Cancellation-safe: a wait interrupted by another branch of a
    /// `select!` resumes where it was, so no event is lost.
    pub async fn changed(&mut self) {
        loop {
            match self.settling {
                None => {
                    tokio::select! {
                        Some(()) = self.events.recv() => {
                            let now = tokio::time::Instant::now();
                            self.settling = Some((now + DEBOUNCE, now + MAX_SETTLE));
                        }
                        _ = self.poll.tick() => return,
                    }
                }
                Some((quiet, give_up)) => {
                    tokio::select! {
                        Some(()) = self.events.recv() => {
                            let next = (tokio::time::Instant::now() + DEBOUNCE).min(give_up);
                            self.settling = Some((next, give_up));
                        }
                        () = tokio::time::sleep_until(quiet) => {
                            self.settling = None;
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Whether a directory event may have changed the file: a write to it, a
/// rename over it, its deletion and re-creation, or a Kubernetes `..data`
/// symlink swap. Reads are not changes (and the reload's own read of the
/// file must not wake the watch again).
fn concerns(event: &notify::Event, name: Option<&std::ffi::OsStr>) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|f| Some(f) == name || f.to_string_lossy().starts_with(".."))
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind};
    use notify::{Event, EventKind};

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_the_file_or_a_configmap_link_count() {
        let name = Some(std::ffi::OsStr::new("dbsplice.toml"));
        let table = [
            (
                event(
                    EventKind::Modify(ModifyKind::Any),
                    "/etc/dbsplice/dbsplice.toml",
                ),
                true,
            ),
            (
                event(
                    EventKind::Create(CreateKind::File),
                    "/etc/dbsplice/dbsplice.toml",
                ),
                true,
            ),
            (
                event(EventKind::Create(CreateKind::Any), "/etc/dbsplice/..data"),
                true,
            ),
            (
                event(
                    EventKind::Access(AccessKind::Any),
                    "/etc/dbsplice/dbsplice.toml",
                ),
                false,
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Any),
                    "/etc/dbsplice/admin.token.swp",
                ),
                false,
            ),
            (
                event(
                    EventKind::Modify(ModifyKind::Any),
                    "/etc/dbsplice/other.log",
                ),
                false,
            ),
        ];
        for (e, want) in table {
            assert_eq!(concerns(&e, name), want, "{e:?}");
        }
    }
}
