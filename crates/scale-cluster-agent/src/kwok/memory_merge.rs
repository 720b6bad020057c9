//! Kernel same-page merging (KSM) for the clusters' processes.
//!
//! Every cluster runs the same kube-apiserver binary with the same API groups, and part of what
//! each one builds at start-up is byte for byte the same in all of them (large pointer-free
//! buffers such as the serialized OpenAPI specs, in page-aligned spans of their own). KSM lets the
//! kernel keep one copy of such pages. A process takes part only when it asks to:
//! `prctl(PR_SET_MEMORY_MERGE)` (Linux ≥ 6.4) marks all its memory mergeable, and the mark is
//! inherited by its children and kept across `execve` (on 6.18 here; a test below checks it). The
//! agent sets it in kwokctl before exec, so every component kwokctl starts takes part; the agent
//! itself does not.
//!
//! Nothing is merged unless the host runs KSM (`/sys/kernel/mm/ksm/run` = 1, which `preflight
//! --fix` sets): the mark costs nothing otherwise. Measured at N = 50 with rancher-sim
//! (docs/benchmarks.md): 10 MiB per apiserver shared, its PSS 101.3 → 92.0 MiB, for `ksmd`'s
//! scanning, ~60 mCPU at the kernel's default rate whatever the number of clusters.

/// Marks the calling process's memory, and that of every process it starts from now on, as
/// mergeable. Best effort: on a kernel without per-process KSM the call fails and nothing changes,
/// which `preflight` reports. Async-signal-safe (a single syscall), so it may run in `pre_exec`.
pub fn mark_mergeable() {
    // SAFETY: prctl with integer arguments reads and writes no memory of the caller.
    unsafe {
        libc::prctl(libc::PR_SET_MEMORY_MERGE, 1, 0, 0, 0);
    }
}

/// Whether this kernel supports per-process merging (`PR_GET_MEMORY_MERGE` answers).
pub fn supported() -> bool {
    // SAFETY: as above; the query changes nothing.
    unsafe { libc::prctl(libc::PR_GET_MEMORY_MERGE, 0, 0, 0, 0) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark reaches a child's child through fork and exec, as it must reach the components
    /// kwokctl starts.
    #[test]
    fn the_mark_survives_fork_and_exec() {
        use std::os::unix::process::CommandExt;
        assert!(
            supported(),
            "this kernel has no per-process KSM (PR_GET_MEMORY_MERGE, Linux >= 6.4)"
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "cat /proc/self/ksm_stat"]);
        // SAFETY: mark_mergeable is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                mark_mergeable();
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ksm_merge_any: yes"), "{text}");
    }
}
