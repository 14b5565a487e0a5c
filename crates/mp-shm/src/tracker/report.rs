//! The tracker's warnings: a small tracing subscriber that writes warnings and errors to
//! the tracker's stderr (its creator's). A helper process runs none of the program's code,
//! so no subscriber of the program's can hear it; this one is installed only there.
use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// Installs the subscriber in this (tracker) process; does nothing if one is set.
pub(super) fn install() {
    let _ = tracing::subscriber::set_global_default(Stderr);
}

struct Stderr;

/// Writes an event's fields as `message key=value ...`.
struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = if field.name() == "message" {
            write!(self.0, "{value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
}

impl Subscriber for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::WARN
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut line = format!("{} multiproc shared-memory tracker: ", e.metadata().level());
        e.record(&mut Line(&mut line));
        line.push('\n');
        write_bounded(line.as_bytes());
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// How long a warning may wait for room in stderr.
const WRITE: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes `line` to stderr once there is room, waiting at most [`WRITE`]: stderr may be a
/// full pipe nobody reads, and a warning is not worth a tracker that never ends. Whatever
/// does not fit then is dropped.
fn write_bounded(line: &[u8]) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    let fd = stderr.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    let bound = Timespec::try_from(WRITE).ok();
    if matches!(poll(&mut fds, bound.as_ref()), Ok(n) if n > 0) {
        // A write of at most PIPE_BUF bytes to a pipe with room does not block; a warning
        // line is far shorter.
        let _ = rustix::io::write(fd, &line[..line.len().min(4096)]);
    }
}
