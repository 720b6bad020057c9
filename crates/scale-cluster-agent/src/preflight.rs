//! Host preflight checks: limits that bite when many clusters run on one machine.
