//! Whether the machine can take more: CPU pressure (Linux PSI, `/proc/pressure/cpu`) and
//! available memory (`/proc/meminfo`), read every [`SAMPLE_EVERY`] by one task, and the two
//! decisions the reconcile loop takes from them.
//!
//! - **The heal's grace.** An apiserver whose process lives but fails `/readyz` is restarted after
//!   [`UNREADY_GRACE`]. While the CPU is saturated it is slow, not hung, and a restart costs more
//!   CPU (a fresh apiserver fills its caches) and slows every other cluster further: at N = 150 on
//!   2 cores that turned into a restart storm in which nothing stayed active. So under saturation
//!   the grace is [`SATURATED_UNREADY_GRACE`]; a process that is gone is restarted at once as
//!   always.
//! - **Holding new bring-ups.** A new cluster is not started while the machine is full: its memory
//!   under [`MEMORY_RESERVE`], or its CPU saturated while running apiservers already fail
//!   `/readyz` (saturation alone is normal during a bring-up burst; unready clusters show it
//!   hurts). The held cluster stays `pending` with the reason shown; deletes are never held,
//!   since they relieve the machine.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the machine is read: PSI's shortest average is over 10 s.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// CPU pressure (share of the last 10 s in which some runnable task waited for a CPU) from which
/// the machine counts as saturated: runnable work waited nearly all the time.
pub(super) const CPU_SATURATED: f64 = 90.0;
/// Memory kept free for what already runs: a new cluster is held below it.
pub(super) const MEMORY_RESERVE: u64 = 1 << 30;
/// How long a live apiserver may fail `/readyz` before it is restarted: long enough for a
/// restarted etcd to come back under it.
pub(super) const UNREADY_GRACE: Duration = Duration::from_secs(20);
/// The same while the CPU is saturated. Still finite: an apiserver hung for another reason is
/// restarted in the end.
pub(super) const SATURATED_UNREADY_GRACE: Duration = Duration::from_secs(300);
/// How long a running apiserver must have failed `/readyz` to count as hurt by the load (one
/// failed check is not a trend).
pub(super) const HURT_AFTER: Duration = Duration::from_secs(10);

/// The machine as last read; a field is `None` where the kernel does not offer it (no PSI before
/// Linux 4.20 or with `psi=0`), and a missing reading never holds anything.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineReading {
    /// `some avg10` of `/proc/pressure/cpu`, in percent.
    pub cpu_pressure: Option<f64>,
    /// `MemAvailable` of `/proc/meminfo`, in bytes.
    pub memory_available: Option<u64>,
}

impl MachineReading {
    pub fn cpu_saturated(&self) -> bool {
        self.cpu_pressure.is_some_and(|p| p >= CPU_SATURATED)
    }

    /// How long a live apiserver may fail `/readyz` before the heal restarts it now.
    pub fn unready_grace(&self) -> Duration {
        if self.cpu_saturated() {
            SATURATED_UNREADY_GRACE
        } else {
            UNREADY_GRACE
        }
    }

    /// Why a new cluster must wait now, if it must; `hurt` counts running apiservers failing
    /// `/readyz` for [`HURT_AFTER`] or longer.
    pub fn bring_up_hold(&self, hurt: usize) -> Option<String> {
        if let Some(available) = self.memory_available.filter(|a| *a < MEMORY_RESERVE) {
            return Some(format!(
                "memory: {} MiB available, under the {} MiB kept free for running clusters",
                available >> 20,
                MEMORY_RESERVE >> 20
            ));
        }
        match self.cpu_pressure {
            Some(pressure) if self.cpu_saturated() && hurt > 0 => Some(format!(
                "CPU saturated (pressure {pressure:.0}% over 10 s) and {hurt} running \
                 apiserver{} not ready",
                if hurt == 1 { "" } else { "s" }
            )),
            _ => None,
        }
    }

    /// Reads the machine now.
    pub async fn read() -> MachineReading {
        let cpu = tokio::fs::read_to_string("/proc/pressure/cpu").await.ok();
        let memory = tokio::fs::read_to_string("/proc/meminfo").await.ok();
        MachineReading {
            cpu_pressure: cpu.as_deref().and_then(psi_some_avg10),
            memory_available: memory
                .as_deref()
                .and_then(|m| meminfo_bytes(m, "MemAvailable")),
        }
    }
}

/// Keeps the last reading current until `shutdown`; the receiver always has a value.
pub(super) async fn watch_machine(
    shutdown: CancellationToken,
) -> (
    watch::Receiver<MachineReading>,
    impl std::future::Future<Output = ()>,
) {
    let (tx, rx) = watch::channel(MachineReading::read().await);
    let task = async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            let reading = MachineReading::read().await;
            let was_saturated = tx.borrow().cpu_saturated();
            if reading.cpu_saturated() != was_saturated {
                tracing::warn!(
                    pressure = reading.cpu_pressure,
                    "CPU {}: unready apiservers get {:?} before a restart",
                    if was_saturated {
                        "no longer saturated"
                    } else {
                        "saturated"
                    },
                    reading.unready_grace()
                );
            }
            tx.send_replace(reading);
        }
    };
    (rx, task)
}

/// `some avg10` from the text of `/proc/pressure/cpu`
/// (`some avg10=2.77 avg60=1.63 avg300=14.71 total=19366619621`).
fn psi_some_avg10(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("some "))?
        .split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// One row of `/proc/meminfo` in bytes: `meminfo_bytes(text, "MemAvailable")` of
/// `MemAvailable:   23741216 kB`.
pub fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_formats() {
        let psi = "some avg10=92.50 avg60=1.63 avg300=14.71 total=19366619621\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(psi_some_avg10(psi), Some(92.5));
        assert_eq!(psi_some_avg10("garbage"), None);
        let meminfo = "MemTotal:       24568056 kB\nMemFree:  1 kB\nMemAvailable:   23741216 kB\n";
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(23_741_216 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(24_568_056 * 1024));
        assert_eq!(meminfo_bytes("MemTotal: 5 kB\n", "MemAvailable"), None);
    }

    #[test]
    fn saturation_lengthens_the_grace_and_holds_only_when_clusters_hurt() {
        let calm = MachineReading {
            cpu_pressure: Some(40.0),
            memory_available: Some(8 << 30),
        };
        assert_eq!(calm.unready_grace(), UNREADY_GRACE);
        assert_eq!(calm.bring_up_hold(3), None);

        let saturated = MachineReading {
            cpu_pressure: Some(97.0),
            ..calm
        };
        assert_eq!(saturated.unready_grace(), SATURATED_UNREADY_GRACE);
        assert_eq!(saturated.bring_up_hold(0), None, "busy but nobody hurt");
        assert_eq!(
            saturated.bring_up_hold(2).as_deref(),
            Some("CPU saturated (pressure 97% over 10 s) and 2 running apiservers not ready")
        );

        let short_of_memory = MachineReading {
            memory_available: Some(512 << 20),
            ..calm
        };
        assert!(short_of_memory
            .bring_up_hold(0)
            .is_some_and(|r| r.starts_with("memory: 512 MiB available")));

        let unknown = MachineReading::default();
        assert_eq!(unknown.unready_grace(), UNREADY_GRACE);
        assert_eq!(unknown.bring_up_hold(10), None);
    }
}
