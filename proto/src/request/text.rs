//! Canonical text of requests (spec §7), as the test vectors print them.

use crate::request::target::TargetList;
use crate::request::{IndexSpec, Indices, Operation, Request, RetargetTo, Targeting};
use core::fmt;

/// ` kind=<kind> index=<first> count=<n>` for a run, ` kind=<kind> index=[<n>,...]` for a
/// list (spec §7: the list stands in place of `index= count=`).
struct IndicesText<'a, 'b>(&'a Indices<'b>);

impl fmt::Display for IndicesText<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Indices::Run(r) => write!(f, " kind={} index={} count={}", r.kind, r.first, r.count),
            Indices::List { kind, indices } => write!(f, " kind={kind} index={indices}"),
        }
    }
}

impl fmt::Display for Request<'_> {
    /// Canonical text (spec §7), e.g.
    /// `alloc device=7 tag=0x2a kind=msix index=any count=1..2 pasid=none targets=[0:0x30,1:0x31]`.
    ///
    /// Extensions: ALLOC `index=any-contiguous`, `targets=spread[<cpu>:<vector>,...]` and
    /// `targets=parked`; FREE and RETARGET `index=[<n>,...]` in place of `index= count=`;
    /// RETARGET `targets=park`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device={} tag={:#x}",
            self.op.opcode(),
            self.device,
            self.tag
        )?;
        match &self.op {
            Operation::Query | Operation::Reset => Ok(()),
            Operation::Alloc(a) => {
                write!(f, " kind={} index=", a.kind)?;
                match a.index {
                    IndexSpec::Any => f.write_str("any")?,
                    IndexSpec::AnyContiguous => f.write_str("any-contiguous")?,
                    IndexSpec::At(first) => write!(f, "{first}")?,
                }
                write!(f, " count={}..{} pasid=", a.min, a.max)?;
                match a.pasid {
                    Some(p) => write!(f, "{p:#x}")?,
                    None => f.write_str("none")?,
                }
                match a.targeting {
                    Targeting::PerVector => write!(f, " targets={}", TargetList(a.targets)),
                    Targeting::Spread => write!(f, " targets=spread{}", TargetList(a.targets)),
                    Targeting::Parked => f.write_str(" targets=parked"),
                }
            }
            Operation::Free(indices) => write!(f, "{}", IndicesText(indices)),
            Operation::Retarget(r) => {
                write!(f, "{}", IndicesText(&r.indices))?;
                match r.to {
                    RetargetTo::Targets(targets) => write!(f, " targets={}", TargetList(targets)),
                    RetargetTo::Park => f.write_str(" targets=park"),
                }
            }
        }
    }
}
