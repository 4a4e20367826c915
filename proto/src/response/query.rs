//! QUERY's reply body (spec §4.4): version 1's 24 bytes and, with
//! [`crate::feature::INFO`], the 40 that follow (identity, message format, share, free runs).

use crate::error::Error;
use crate::le::{Le16, Le32};
use crate::request::{MAX_MSI_VECTORS, MAX_PASID};
use crate::types::{Field, KindSet, MessageFormat};
use crate::wire::{IDENTITY_FLAG_CAN_POST, IDENTITY_FLAG_PASID_VALID, QueryBody, QueryBodyExt};
use core::fmt;

/// Which PCI function an assigned device is, as the guest enumerates it (spec §4.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PciIdentity {
    /// PCI segment.
    pub segment: u16,
    /// PCI bus.
    pub bus: u8,
    /// `device << 3 | function`.
    pub devfn: u8,
    /// The requester ID the guest's view of the device uses (normally `bus << 8 | devfn`).
    pub requester_id: u16,
    /// For an assignable interface of a scalable device: the PASID (< 2^20) that tells it
    /// apart from its siblings, which share the function's requester ID.
    pub pasid: Option<u32>,
}

impl PciIdentity {
    /// The PCI device number (devfn bits 7:3).
    pub const fn device(&self) -> u8 {
        self.devfn >> 3
    }

    /// The PCI function number (devfn bits 2:0).
    pub const fn function(&self) -> u8 {
        self.devfn & 0x7
    }
}

/// What QUERY adds with [`crate::feature::INFO`] (spec §4.4, offsets 24–63).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceInfoExt {
    /// Which PCI function (and, for a scalable device's interface, which PASID) it is.
    pub identity: PciIdentity,
    /// The message format of its grants (spec §3.2).
    pub format: MessageFormat,
    /// Whether the host can post its grants (spec §3.4).
    pub can_post: bool,
    /// The most vectors it may hold at once (spec §3.7).
    pub share: u32,
    /// Longest run of consecutive free MSI-X indices (0 without MSI-X).
    pub msix_free_run: u16,
    /// Longest run of consecutive free IMS slots (0 without IMS).
    pub ims_free_run: u32,
    /// Interrupts dropped for its parked grants, saturating (advisory, spec §3.5).
    pub parked_drops: u32,
}

impl DeviceInfoExt {
    pub(crate) fn to_wire(self) -> QueryBodyExt {
        let mut identity_flags = 0;
        if self.identity.pasid.is_some() {
            identity_flags |= IDENTITY_FLAG_PASID_VALID;
        }
        if self.can_post {
            identity_flags |= IDENTITY_FLAG_CAN_POST;
        }
        QueryBodyExt {
            segment: Le16::new(self.identity.segment),
            bus: self.identity.bus,
            devfn: self.identity.devfn,
            requester_id: Le16::new(self.identity.requester_id),
            format: self.format.to_wire(),
            identity_flags,
            pasid: Le32::new(self.identity.pasid.unwrap_or(0)),
            share: Le32::new(self.share),
            msix_free_run: Le16::new(self.msix_free_run),
            reserved0: Le16::new(0),
            ims_free_run: Le32::new(self.ims_free_run),
            parked_drops: Le32::new(self.parked_drops),
            reserved1: [0; 12],
        }
    }

    /// Checks the extension in body order: format, identity flags, PASID, reserved bytes.
    pub(crate) fn from_wire(body: &QueryBodyExt) -> Result<Self, Error> {
        let format = MessageFormat::from_wire(body.format)
            .ok_or(Error::UnknownMessageFormat(body.format))?;
        let flags = body.identity_flags;
        if flags & !(IDENTITY_FLAG_PASID_VALID | IDENTITY_FLAG_CAN_POST) != 0 {
            return Err(Error::ReservedNotZero(Field::BodyReserved));
        }
        let pasid = body.pasid.get();
        let pasid = if flags & IDENTITY_FLAG_PASID_VALID != 0 {
            if pasid > MAX_PASID {
                return Err(Error::InvalidPasid(pasid));
            }
            Some(pasid)
        } else {
            if pasid != 0 {
                return Err(Error::ReservedNotZero(Field::Pasid));
            }
            None
        };
        if body.reserved0.get() != 0 || body.reserved1 != [0; 12] {
            return Err(Error::ReservedNotZero(Field::BodyReserved));
        }
        Ok(DeviceInfoExt {
            identity: PciIdentity {
                segment: body.segment.get(),
                bus: body.bus,
                devfn: body.devfn,
                requester_id: body.requester_id.get(),
                pasid,
            },
            format,
            can_post: flags & IDENTITY_FLAG_CAN_POST != 0,
            share: body.share.get(),
            msix_free_run: body.msix_free_run.get(),
            ims_free_run: body.ims_free_run.get(),
            parked_drops: body.parked_drops.get(),
        })
    }
}

impl fmt::Display for DeviceInfoExt {
    /// Canonical text (spec §7): the extended fields in body order, identifiers and the
    /// PASID in hexadecimal, counts in decimal, e.g. `segment=0x0 bus=0x0 devfn=0x18
    /// requester_id=0x18 format=vtd-remappable identity_flags=can-post pasid=0x0 share=32
    /// msix_free_run=60 ims_free_run=0 parked_drops=0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.identity;
        write!(
            f,
            "segment={:#x} bus={:#x} devfn={:#x} requester_id={:#x} format={} identity_flags=",
            id.segment, id.bus, id.devfn, id.requester_id, self.format
        )?;
        match (id.pasid.is_some(), self.can_post) {
            (false, false) => f.write_str("none")?,
            (true, false) => f.write_str("pasid-valid")?,
            (false, true) => f.write_str("can-post")?,
            (true, true) => f.write_str("pasid-valid|can-post")?,
        }
        write!(
            f,
            " pasid={:#x} share={} msix_free_run={} ims_free_run={} parked_drops={}",
            id.pasid.unwrap_or(0),
            self.share,
            self.msix_free_run,
            self.ims_free_run,
            self.parked_drops
        )
    }
}

/// A device's limits and state, as QUERY reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    /// Kinds the device supports and the driver negotiated.
    pub kinds: KindSet,
    /// Largest MSI block, 0 without MSI.
    pub msi_max: u16,
    /// MSI-X table size, 0 without MSI-X.
    pub msix_table_size: u16,
    /// IMS slots, 0 without IMS.
    pub ims_slots: u32,
    /// Vectors currently granted to the device.
    pub granted: u32,
    /// The VM's total quota.
    pub vm_quota: u32,
    /// Largest count an ALLOC for this device could be granted now (advisory: another
    /// VM may take host resources before the driver asks).
    pub available: u32,
    /// The extended body *(extension, bit 6)*; `None` for version 1's 24-byte body.
    pub ext: Option<DeviceInfoExt>,
}

impl DeviceInfo {
    pub(crate) fn to_wire(self) -> QueryBody {
        QueryBody {
            kinds: Le32::new(self.kinds.bits()),
            msi_max: Le16::new(self.msi_max),
            msix_table_size: Le16::new(self.msix_table_size),
            ims_slots: Le32::new(self.ims_slots),
            granted: Le32::new(self.granted),
            vm_quota: Le32::new(self.vm_quota),
            available: Le32::new(self.available),
        }
    }

    /// Version 1's fields from `body`, then the extension from `ext`, if any.
    pub(crate) fn from_wire(body: &QueryBody, ext: Option<&QueryBodyExt>) -> Result<Self, Error> {
        let kinds =
            KindSet::from_bits(body.kinds.get()).ok_or(Error::UndefinedKinds(body.kinds.get()))?;
        let msi_max = body.msi_max.get();
        if msi_max != 0 && (!msi_max.is_power_of_two() || msi_max > MAX_MSI_VECTORS) {
            return Err(Error::InvalidMsiMax(msi_max));
        }
        let ext = match ext {
            Some(ext) => Some(DeviceInfoExt::from_wire(ext)?),
            None => None,
        };
        Ok(DeviceInfo {
            kinds,
            msi_max,
            msix_table_size: body.msix_table_size.get(),
            ims_slots: body.ims_slots.get(),
            granted: body.granted.get(),
            vm_quota: body.vm_quota.get(),
            available: body.available.get(),
            ext,
        })
    }
}

impl fmt::Display for DeviceInfo {
    /// Canonical text: version 1's fields in body order, then the extended ones, if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kinds={} msi_max={} msix_table_size={} ims_slots={} granted={} vm_quota={} \
             available={}",
            self.kinds,
            self.msi_max,
            self.msix_table_size,
            self.ims_slots,
            self.granted,
            self.vm_quota,
            self.available
        )?;
        match &self.ext {
            Some(ext) => write!(f, " {ext}"),
            None => Ok(()),
        }
    }
}
