//! Port blocks: every simulated cluster owns one contiguous block of ports, assigned by the agent
//! (never by kwokctl, whose own picking races under concurrent creates and forgets stopped clusters).

use serde::{Deserialize, Serialize};

/// Number of ports a cluster uses inside its block.
pub const PORTS_PER_BLOCK: u16 = 6;

/// The configured range of port blocks: block `i` starts at `base + i * stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub base: u16,
    pub stride: u16,
    pub blocks: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortRangeError {
    #[error(
        "port stride {0} is too small: each cluster needs {PORTS_PER_BLOCK} consecutive ports"
    )]
    StrideTooSmall(u16),
    #[error("the port range needs at least one block")]
    NoBlocks,
    #[error("port base {0} is below 1024; pick an unprivileged base")]
    BasePrivileged(u16),
    #[error("{blocks} blocks of stride {stride} from port {base} run past port 65535")]
    PastEnd { base: u16, stride: u16, blocks: u16 },
}

impl PortRange {
    /// The seed's layout: 8001, 8011, 8021, ...
    pub const DEFAULT: PortRange = PortRange {
        base: 8001,
        stride: 10,
        blocks: 1000,
    };

    pub fn new(base: u16, stride: u16, blocks: u16) -> Result<Self, PortRangeError> {
        if stride < PORTS_PER_BLOCK {
            return Err(PortRangeError::StrideTooSmall(stride));
        }
        if blocks == 0 {
            return Err(PortRangeError::NoBlocks);
        }
        if base < 1024 {
            return Err(PortRangeError::BasePrivileged(base));
        }
        let last = u32::from(base)
            + (u32::from(blocks) - 1) * u32::from(stride)
            + u32::from(PORTS_PER_BLOCK)
            - 1;
        if last > u32::from(u16::MAX) {
            return Err(PortRangeError::PastEnd {
                base,
                stride,
                blocks,
            });
        }
        Ok(Self {
            base,
            stride,
            blocks,
        })
    }

    /// The ports of block `index`, if it lies inside the range.
    pub fn block(&self, index: u16) -> Option<PortBlock> {
        (index < self.blocks).then(|| PortBlock::starting_at(self.base + index * self.stride))
    }

    /// Lowest and highest port the range can hand out.
    pub fn span(&self) -> (u16, u16) {
        (
            self.base,
            self.base + (self.blocks - 1) * self.stride + (PORTS_PER_BLOCK - 1),
        )
    }
}

/// The ports one cluster's components listen on (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBlock {
    pub kube_apiserver: u16,
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub kube_controller_manager: u16,
    pub kube_scheduler: u16,
    pub kwok_controller: u16,
}

impl PortBlock {
    pub fn starting_at(first: u16) -> Self {
        Self {
            kube_apiserver: first,
            etcd_client: first + 1,
            etcd_peer: first + 2,
            kube_controller_manager: first + 3,
            kube_scheduler: first + 4,
            kwok_controller: first + 5,
        }
    }

    pub fn first(&self) -> u16 {
        self.kube_apiserver
    }

    pub fn all(&self) -> [u16; PORTS_PER_BLOCK as usize] {
        [
            self.kube_apiserver,
            self.etcd_client,
            self.etcd_peer,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kwok_controller,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_seed_layout() {
        let r = PortRange::DEFAULT;
        let b = r.block(1).unwrap();
        assert_eq!(b.kube_apiserver, 8011);
        assert_eq!(b.etcd_client, 8012);
        assert_eq!(b.kwok_controller, 8016);
        assert_eq!(r.block(r.blocks), None);
    }

    #[test]
    fn rejects_bad_ranges() {
        assert_eq!(
            PortRange::new(8001, 5, 10),
            Err(PortRangeError::StrideTooSmall(5))
        );
        assert_eq!(PortRange::new(8001, 10, 0), Err(PortRangeError::NoBlocks));
        assert!(matches!(
            PortRange::new(65000, 10, 100),
            Err(PortRangeError::PastEnd { .. })
        ));
        assert!(PortRange::new(65520, 10, 2).is_ok());
        assert_eq!(PortRange::new(65520, 10, 2).unwrap().span(), (65520, 65535));
    }
}
