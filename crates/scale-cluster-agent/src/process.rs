//! Process identity and liveness, the one place that decides whether a process is alive.
//!
//! A pid alone does not name a process: pids are recycled, and in a container a restarted agent is
//! pid 1 again. [`ProcessId`] pairs the pid with the process's start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks since boot), which no other process started since boot shares.
//! A zombie (exited, not yet reaped) or a dead (`X`) process counts as gone everywhere: it still
//! answers `kill(pid, 0)` but does nothing any more.
//!
//! Every check reads one small `/proc/<pid>/stat` file (no scan of `/proc`), so it is cheap but it
//! is still file I/O: async callers run it in `spawn_blocking`.

use serde::{Deserialize, Serialize};

/// A process: its pid plus its start time, which tells it apart from a later process that got the
/// same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks since boot at which the process started (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a process that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// The state letter (`R`, `S`, `D`, `Z`, ...).
    state: char,
    start_time: u64,
}

impl Stat {
    /// The single zombie rule: an exited process that was not reaped yet (`Z`), or one being torn
    /// down (`X`), is not alive.
    fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

impl ProcessId {
    /// The process with this pid right now, if it exists and is not a zombie.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = read_stat(pid)?;
        stat.is_running().then_some(ProcessId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// This process. `None` only if `/proc` is not mounted.
    pub fn current() -> Option<ProcessId> {
        // Our own identity never changes: read it once.
        static CURRENT: std::sync::OnceLock<Option<ProcessId>> = std::sync::OnceLock::new();
        *CURRENT.get_or_init(|| ProcessId::of(std::process::id()))
    }
}

/// True if the process `id` names still runs: the pid exists, is not a zombie, and started at the
/// same time (so it is not a later process that reused the pid).
pub fn is_alive(id: &ProcessId) -> bool {
    read_stat(id.pid).is_some_and(|s| s.is_running() && s.start_time == id.start_time)
}

/// True if some live (non-zombie) process has this pid. Only for records that carry no start time
/// (pid files, older rows): it cannot tell a recycled pid from the original process.
pub fn pid_alive(pid: u32) -> bool {
    read_stat(pid).is_some_and(|s| s.is_running())
}

/// Reads and parses `/proc/<pid>/stat`; `None` if the process does not exist (or the pid cannot be
/// one: 0, or past `i32::MAX`, would name process groups in signal calls).
fn read_stat(pid: u32) -> Option<Stat> {
    if pid == 0 || i32::try_from(pid).is_err() {
        return None;
    }
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fields are counted from after the *last* `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // Field 3 is the state; starttime is field 22, i.e. 19 fields after the state.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 \
                    1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        let zombie = line.replace(") S ", ") Z ");
        assert!(!parse_stat(&zombie).unwrap().is_running());
        assert_eq!(parse_stat("12 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_different_start_time_is_not() {
        let me = ProcessId::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(is_alive(&me));
        assert!(pid_alive(me.pid));
        let earlier_run = ProcessId {
            start_time: me.start_time.wrapping_sub(1),
            ..me
        };
        assert!(!is_alive(&earlier_run), "same pid, other start time");
    }

    #[test]
    fn invalid_and_exited_pids_are_dead() {
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Until we reap it, the exited child stays a zombie, which must count as dead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read_stat(pid).is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::yield_now();
        }
        assert!(read_stat(pid).is_some(), "a zombie still has a /proc entry");
        assert!(!pid_alive(pid));
        assert_eq!(ProcessId::of(pid), None);
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }
}
