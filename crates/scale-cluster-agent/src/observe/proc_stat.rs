//! The agent's own memory and CPU, from `/proc/self` (Linux).

/// Resource use of this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    /// User + system CPU time since the process started.
    pub cpu_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {0}: {1}")]
    Read(&'static str, std::io::Error),
    #[error("unexpected contents of {0}")]
    Parse(&'static str),
}

/// Reads `/proc/self/stat` (CPU ticks) and `/proc/self/statm` (resident pages).
pub async fn read_self() -> Result<Usage, ProcError> {
    let stat = tokio::fs::read_to_string("/proc/self/stat")
        .await
        .map_err(|e| ProcError::Read("/proc/self/stat", e))?;
    let statm = tokio::fs::read_to_string("/proc/self/statm")
        .await
        .map_err(|e| ProcError::Read("/proc/self/statm", e))?;
    parse(&stat, &statm, ticks_per_second(), page_size())
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

pub(crate) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(4096)
}

fn parse(stat: &str, statm: &str, ticks: u64, page: u64) -> Result<Usage, ProcError> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last ')'. utime and stime are fields 14 and 15, i.e. the 12th and 13th after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(ProcError::Parse("/proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or(ProcError::Parse("/proc/self/stat"))
    };
    let cpu_ticks = tick(11)? + tick(12)?;
    let resident: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or(ProcError::Parse("/proc/self/statm"))?;
    Ok(Usage {
        rss_bytes: resident * page,
        cpu_seconds: cpu_ticks as f64 / ticks as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (a (b) c) S 1 1 1 0 -1 0 0 0 0 0 250 150 0 0 20 0 1 0 0 0 0";
        let usage = parse(stat, "1000 300 20 1 0 50 0", 100, 4096).unwrap();
        assert_eq!(usage.rss_bytes, 300 * 4096);
        assert!((usage.cpu_seconds - 4.0).abs() < 1e-9);
        assert!(parse("garbage", "", 100, 4096).is_err());
    }

    #[tokio::test]
    async fn reads_this_process() {
        let usage = read_self().await.unwrap();
        assert!(usage.rss_bytes > 1 << 20, "{usage:?}");
    }
}
