//! `Slot`: one interrupt slot of a device, MSI-X entry or IMS slot.

/// One interrupt slot of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// MSI-X table entry `n`.
    MsiX(u32),
    /// IMS slot `n`.
    Ims(u32),
}

impl Slot {
    /// The slot a grant of `kind` at `index` is programmed into (none for multi-MSI, which
    /// lives in config space, not in a table).
    pub fn for_grant(kind: pvirq_proto::Kind, index: u32) -> Option<Slot> {
        match kind {
            pvirq_proto::Kind::MsiX => Some(Slot::MsiX(index)),
            pvirq_proto::Kind::Ims => Some(Slot::Ims(index)),
            pvirq_proto::Kind::Msi => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::MsiX(n) => write!(f, "MSI-X entry {n}"),
            Slot::Ims(n) => write!(f, "IMS slot {n}"),
        }
    }
}
