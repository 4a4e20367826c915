//! Canonical text of responses (spec §7), as the test vectors print them.

use crate::response::{Outcome, Response};
use crate::types::Opcode;
use core::fmt;

impl fmt::Display for Response<'_> {
    /// Canonical text (spec §7), e.g.
    /// `alloc device=7 tag=0x2a ok quota_remaining=30 grants=[0:0xfee0001c:0x0]` or
    /// `alloc device=7 tag=0x2a no-space resource=irte available=0`.
    ///
    /// With [`crate::feature::INFO`] a grant reads `index:address:data:mode[:parked]
    /// [:pasid=<hex>]`, and QUERY appends the extended fields in body order
    /// ([`crate::DeviceInfoExt`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Opcode::from_wire(self.opcode) {
            Some(op) => write!(f, "{op}")?,
            None => write!(f, "op({:#x})", self.opcode)?,
        }
        write!(f, " device={} tag={:#x} ", self.device, self.tag)?;
        match &self.outcome {
            Outcome::Refused(r) => write!(f, "{r}"),
            Outcome::Queried {
                info,
                quota_remaining,
            } => write!(f, "ok quota_remaining={quota_remaining} {info}"),
            Outcome::Allocated {
                grants,
                quota_remaining,
            } => write!(f, "ok quota_remaining={quota_remaining} grants={grants}"),
            Outcome::Freed {
                count,
                quota_remaining,
            }
            | Outcome::Retargeted {
                count,
                quota_remaining,
            }
            | Outcome::Reset {
                count,
                quota_remaining,
            } => {
                write!(f, "ok count={count} quota_remaining={quota_remaining}")
            }
        }
    }
}
