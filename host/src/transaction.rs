//! Request handling: each request is a transaction over the VM's devices and the host's
//! layers.
//!
//! Order for every operation: check everything that can be checked without reserving
//! (device, kind, features, targets, indices, counts); reserve layer by layer, each
//! reservation held by a value that releases it on drop (host IRTEs and vectors in a
//! `HostReservation`, guest routes in a staged `RouteBatch`); write the reply into the
//! guest's buffer; only then commit the routes (one commit per request) and turn the
//! reservations into grants. If the write fails, dropping the reservations rolls
//! everything back and the chain is returned with used length 0. If the commit fails
//! after the write, everything is rolled back and the reply is overwritten with the
//! refusal: the guest sees the reply only when the chain is returned, so it never sees an
//! acknowledgement for something that does not exist.
//!
//! FREE, RESET and RETARGET stage their route changes the same way and release host
//! resources only after the commit, so they are all-or-nothing too.

use crate::error::{LayerError, ReplyError};
use crate::grants::{DeviceGrants, GrantRecord};
use crate::layers::{GuestDest, RouteId, RouteLayer};
use crate::pool::{PoolFree, SizedError, lock};
use crate::vm::{Vm, VmShared, VmState};
use pvirq_proto::{
    Alloc, DeviceInfo, Field, Grant, IndexRange, IndexSpec, Kind, KindSet, Operation, Outcome,
    RESPONSE_HEADER_LEN, Refusal, RemappableMsi, Request, Resource, Response, Retarget, Status,
    feature,
};

/// Where a reply goes: the writable part of a descriptor chain, or a test buffer.
pub trait ReplySink {
    /// Writable bytes.
    fn capacity(&self) -> usize;
    /// Writes `reply` at the start of the writable space (a later call overwrites).
    fn write(&mut self, reply: &[u8]) -> Result<(), ReplyError>;
}

/// A reply buffer in host memory, for calling a [`Vm`] directly (tests, simulator).
#[derive(Clone, Debug, Default)]
pub struct BufferSink {
    capacity: usize,
    bytes: Vec<u8>,
    fail_writes: u32,
}

impl BufferSink {
    /// A buffer of `capacity` writable bytes.
    pub fn new(capacity: usize) -> Self {
        BufferSink {
            capacity,
            ..Self::default()
        }
    }

    /// A buffer whose next `writes` writes fail, as guest memory that vanished would.
    pub fn failing(capacity: usize, writes: u32) -> Self {
        BufferSink {
            capacity,
            bytes: Vec::new(),
            fail_writes: writes,
        }
    }

    /// The last reply written.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl ReplySink for BufferSink {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn write(&mut self, reply: &[u8]) -> Result<(), ReplyError> {
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Err(ReplyError::Injected);
        }
        if reply.len() > self.capacity {
            return Err(ReplyError::TooLong {
                needed: reply.len(),
                capacity: self.capacity,
            });
        }
        self.bytes = reply.to_vec();
        Ok(())
    }
}

/// What handling one request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handled {
    /// Bytes written: the used length to return the chain with (0: nothing said).
    pub used_len: u32,
    /// The request's opcode byte as received (0 if the request was shorter than a header).
    pub opcode: u8,
    /// The status written, if a reply was written.
    pub status: Option<Status>,
}

/// The header fields a reply echoes.
#[derive(Clone, Copy, Debug, Default)]
struct Echo {
    opcode: u8,
    device: u32,
    tag: u64,
}

/// Replies up to this long are encoded in a stack buffer (a header and 16 grants).
const STACK_REPLY: usize = 320;

struct Ctx<'a> {
    echo: Echo,
    sink: &'a mut dyn ReplySink,
}

impl Ctx<'_> {
    fn send(&mut self, outcome: Outcome<'_>) -> Result<u32, ()> {
        let response = Response {
            opcode: self.echo.opcode,
            device: self.echo.device,
            tag: self.echo.tag,
            outcome,
        };
        // Most replies (every refusal, FREE, QUERY, small ALLOCs) fit on the stack.
        let mut stack = [0u8; STACK_REPLY];
        let mut heap = Vec::new();
        let buf = match stack.get_mut(..response.encoded_len()) {
            Some(buf) => buf,
            None => {
                heap.resize(response.encoded_len(), 0);
                heap.as_mut_slice()
            }
        };
        let len = response.encode(buf).map_err(|_| ())?;
        let bytes = buf.get(..len).ok_or(())?;
        self.sink.write(bytes).map_err(|_| ())?;
        u32::try_from(len).map_err(|_| ())
    }

    fn refuse(&mut self, refusal: Refusal) -> Handled {
        match self.send(Outcome::Refused(refusal)) {
            Ok(len) => self.handled(len, refusal.status()),
            Err(()) => self.dropped(),
        }
    }

    fn handled(&self, used_len: u32, status: Status) -> Handled {
        Handled {
            used_len,
            opcode: self.echo.opcode,
            status: Some(status),
        }
    }

    fn dropped(&self) -> Handled {
        Handled {
            used_len: 0,
            opcode: self.echo.opcode,
            status: None,
        }
    }
}

/// The guest-visible refusal for a layer error: `NO_SPACE` with the count the layer had
/// supplied for this request before it refused, or `DEVICE_ERROR`.
fn layer_refusal(e: &LayerError, supplied: u32) -> Refusal {
    match e {
        LayerError::Exhausted(resource) => Refusal::NoSpace {
            resource: *resource,
            available: supplied,
        },
        LayerError::Failed { resource, .. } | LayerError::NoEntry(resource) => {
            Refusal::DeviceError {
                resource: *resource,
            }
        }
    }
}

/// The guest-visible refusal for a layer that failed to carry out an operation on what it
/// already holds (moving or removing a route, committing a batch): always `DEVICE_ERROR`.
/// A shortage reported there is no shortage of anything the guest asked for, so
/// `NO_SPACE` (whose `info` promises a grantable count, spec §5.1) would mislead it.
fn failure_refusal(e: &LayerError) -> Refusal {
    Refusal::DeviceError {
        resource: e.resource(),
    }
}

/// Route changes staged for one request: aborted on drop unless committed.
pub(crate) struct RouteBatch<'a> {
    routes: &'a mut dyn RouteLayer,
    staged: bool,
    open: bool,
}

impl<'a> RouteBatch<'a> {
    pub(crate) fn new(routes: &'a mut dyn RouteLayer) -> Self {
        RouteBatch {
            routes,
            staged: false,
            open: true,
        }
    }

    fn add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError> {
        self.staged = true;
        self.routes.stage_add(dest)
    }

    fn update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError> {
        self.staged = true;
        self.routes.stage_update(id, dest)
    }

    fn remove(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.staged = true;
        self.routes.stage_remove(id)
    }

    /// One commit for the whole batch (none if nothing was staged).
    fn commit(mut self) -> Result<(), LayerError> {
        self.open = false;
        if !self.staged {
            return Ok(());
        }
        let result = self.routes.commit();
        if result.is_err() {
            self.routes.abort();
        }
        result
    }
}

impl Drop for RouteBatch<'_> {
    fn drop(&mut self) {
        if self.open && self.staged {
            self.routes.abort();
        }
    }
}

fn kind_feature(kind: Kind) -> u64 {
    match kind {
        Kind::Msi => feature::MSI,
        Kind::MsiX => feature::MSIX,
        Kind::Ims => feature::IMS,
    }
}

/// Whether the device has `kind` and the driver negotiated it.
fn usable(dev: &DeviceGrants, features: u64, kind: Kind) -> bool {
    dev.spec.supports(kind) && features & kind_feature(kind) != 0
}

fn floor_pow2(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

/// What the host layers can supply for one device now.
struct Supply {
    quota: u32,
    irte: u32,
    irte_block: u32,
    vectors: u32,
    routes: u32,
}

fn supply(vm: &VmShared, st: &VmState, unit: u16) -> Supply {
    let (irte, irte_block, vectors) = {
        let host = lock(&vm.host.state);
        (
            host.remap.free_entries(unit),
            host.remap.largest_block(unit, 32),
            host.vectors.available(),
        )
    };
    Supply {
        quota: vm.config.quota.saturating_sub(st.held),
        irte,
        irte_block,
        vectors,
        routes: st.routes.available(),
    }
}

impl Supply {
    /// Per resource, in the order NO_SPACE names them, how many vectors of `kind` it can
    /// supply given `slots` free device slots.
    fn per_resource(&self, kind: Kind, slots: u32) -> [(Resource, u32); 5] {
        let irte = if kind == Kind::Msi {
            self.irte_block
        } else {
            self.irte
        };
        [
            (Resource::VmQuota, self.quota),
            (Resource::DeviceSlots, slots),
            (Resource::Irte, irte),
            (Resource::HostVector, self.vectors),
            (Resource::GuestRoute, self.routes),
        ]
    }

    /// The largest grant ≤ `max` every resource supplies (a power of two for MSI).
    fn grantable(&self, kind: Kind, slots: u32, max: u32) -> u32 {
        let n = self
            .per_resource(kind, slots)
            .iter()
            .map(|(_, s)| *s)
            .fold(max, u32::min);
        if kind == Kind::Msi { floor_pow2(n) } else { n }
    }
}

impl Vm {
    /// Handles one request (`request` = the readable bytes) and writes the reply to `sink`.
    pub fn handle(&self, request: &[u8], sink: &mut dyn ReplySink) -> Handled {
        let echo = Request::peek_header(request)
            .map(|h| Echo {
                opcode: h.opcode,
                device: h.device.get(),
                tag: h.tag.get(),
            })
            .unwrap_or_default();
        let mut ctx = Ctx { echo, sink };
        if ctx.sink.capacity() < RESPONSE_HEADER_LEN {
            // Not even a refusal fits: say nothing, change nothing.
            return ctx.dropped();
        }
        let vm = &*self.shared;
        let request = match Request::decode(request, vm.config.max_batch) {
            Ok(r) => r,
            Err(e) => return ctx.refuse(e.refusal()),
        };
        let needed = request.max_response_len();
        if ctx.sink.capacity() < needed {
            return ctx.refuse(Refusal::ResponseTooSmall {
                needed: needed as u32,
            });
        }
        let mut st = lock(&vm.state);
        match &request.op {
            Operation::Query => query(&mut ctx, vm, &st, request.device),
            Operation::Alloc(a) => alloc(&mut ctx, vm, &mut st, request.device, a),
            Operation::Free(r) => free(&mut ctx, vm, &mut st, request.device, Some(r)),
            Operation::Reset => free(&mut ctx, vm, &mut st, request.device, None),
            Operation::Retarget(r) => retarget(&mut ctx, vm, &mut st, request.device, r),
        }
    }

    /// Encodes `request`, handles it with a buffer as large as its largest reply, and
    /// returns the reply bytes (empty if nothing was written).
    pub fn call(&self, request: &Request<'_>) -> Vec<u8> {
        let mut bytes = vec![0u8; request.encoded_len()];
        let Ok(len) = request.encode(&mut bytes) else {
            return Vec::new();
        };
        let mut sink = BufferSink::new(request.max_response_len());
        let handled = self.handle(bytes.get(..len).unwrap_or_default(), &mut sink);
        if handled.used_len == 0 {
            Vec::new()
        } else {
            sink.bytes().to_vec()
        }
    }
}

fn query(ctx: &mut Ctx<'_>, vm: &VmShared, st: &VmState, handle: u32) -> Handled {
    let Some(dev) = st.devices.get(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    let supply = supply(vm, st, dev.spec.unit);
    let mut kinds = KindSet::EMPTY;
    let mut available = 0;
    for kind in Kind::ALL.iter().copied() {
        if usable(dev, st.features, kind) {
            kinds = kinds.with(kind);
            let table = dev.table(kind);
            let slots = match kind {
                Kind::Msi if table.granted() > 0 => 0,
                Kind::Msi => table.size(),
                _ => table.free.free_count(),
            };
            let n = supply.grantable(kind, slots, u32::from(vm.config.max_batch));
            available = available.max(n);
        }
    }
    let info = DeviceInfo {
        kinds,
        msi_max: if kinds.contains(Kind::Msi) {
            dev.spec.msi_max
        } else {
            0
        },
        msix_table_size: if kinds.contains(Kind::MsiX) {
            dev.spec.msix_table_size
        } else {
            0
        },
        ims_slots: if kinds.contains(Kind::Ims) {
            dev.spec.ims_slots
        } else {
            0
        },
        granted: dev.granted(),
        vm_quota: vm.config.quota,
        available,
    };
    match ctx.send(Outcome::Queried {
        info,
        quota_remaining: supply.quota,
    }) {
        Ok(len) => ctx.handled(len, Status::Ok),
        Err(()) => ctx.dropped(),
    }
}

fn alloc(
    ctx: &mut Ctx<'_>,
    vm: &VmShared,
    st: &mut VmState,
    handle: u32,
    a: &Alloc<'_>,
) -> Handled {
    let Some(dev) = st.devices.get(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    if !usable(dev, st.features, a.kind) {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    if a.pasid.is_some() && st.features & feature::PASID == 0 {
        return ctx.refuse(Refusal::Unsupported {
            field: Field::Pasid,
        });
    }
    if let Some(entry) = a
        .targets
        .iter()
        .position(|t| t.vcpu() >= vm.config.num_vcpus)
    {
        return ctx.refuse(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: entry as u32,
        });
    }
    let (min, max) = (u32::from(a.min), u32::from(a.max));
    let table = dev.table(a.kind);
    let msi = a.kind == Kind::Msi;
    let slots = match (msi, a.index) {
        (true, _) => {
            // One block per device: a second ALLOC while one is held is refused.
            if table.granted() > 0 {
                return ctx.refuse(Refusal::IndexInUse { index: 0 });
            }
            table.size()
        }
        (false, IndexSpec::At(first)) => {
            let size = table.size();
            if u64::from(first) + u64::from(max) > u64::from(size) {
                return ctx.refuse(Refusal::IndexOutOfRange {
                    index: first.max(size),
                });
            }
            if let Some(index) = (first..first + max).find(|i| !table.free.is_free(*i)) {
                return ctx.refuse(Refusal::IndexInUse { index });
            }
            max
        }
        (false, IndexSpec::Any) => table.free.free_count(),
    };
    let spec = dev.spec;

    // Count and reserve IRTEs and host vectors in one host-lock section, so that another
    // VM cannot take what was counted: NO_SPACE then always means fewer than `min` could
    // be granted, with `available` that count ([DEV-7]).
    let (quota, routes_free) = (
        vm.config.quota.saturating_sub(st.held),
        st.routes.available(),
    );
    let size = |free: PoolFree| {
        let supply = Supply {
            quota,
            irte: free.irte,
            irte_block: free.irte_block,
            vectors: free.vectors,
            routes: routes_free,
        };
        let n = supply.grantable(a.kind, slots, max);
        if n >= min {
            return Ok(n);
        }
        let resource = supply
            .per_resource(a.kind, slots)
            .iter()
            .find(|(_, s)| *s < min)
            .map_or(Resource::None, |(r, _)| *r);
        Err(Refusal::NoSpace {
            resource,
            available: n,
        })
    };
    let reservation = match vm
        .host
        .reserve_sized(spec.unit, spec.requester_id, msi, size)
    {
        Ok(r) => r,
        Err(SizedError::Refused(refusal)) => return ctx.refuse(refusal),
        Err(SizedError::Layer((e, supplied))) => {
            return ctx.refuse(layer_refusal(&e, supplied));
        }
    };
    let n = reservation.items.len() as u32;

    // Table indices: MSI vectors are 0..n of the block; MSI-X/IMS as asked.
    let indices: Vec<u32> = match (msi, a.index) {
        (true, _) => (0..n).collect(),
        (false, IndexSpec::At(first)) => (first..first + n).collect(),
        (false, IndexSpec::Any) => dev.table(a.kind).lowest_free(n),
    };
    if indices.len() != n as usize {
        return ctx.refuse(Refusal::DeviceError {
            resource: Resource::DeviceSlots,
        });
    }

    // Then the guest routes.
    let mut batch = RouteBatch::new(st.routes.as_mut());
    let mut routes = Vec::with_capacity(n as usize);
    for (i, t) in a.targets.iter().take(n as usize).enumerate() {
        match batch.add(GuestDest {
            vcpu: t.vcpu(),
            vector: t.vector(),
        }) {
            Ok(id) => routes.push(id),
            Err(e) => return ctx.refuse(layer_refusal(&e, i as u32)),
        }
    }
    let base = reservation.items.first().map_or(0, |(irte, _)| *irte);
    let grants: Vec<Grant> = indices
        .iter()
        .zip(&reservation.items)
        .enumerate()
        .map(|(i, (index, (irte, _)))| {
            let msg = if msi {
                RemappableMsi {
                    handle: base,
                    subhandle: Some(i as u16),
                }
            } else {
                RemappableMsi {
                    handle: *irte,
                    subhandle: Some(0),
                }
            };
            Grant::new(*index, msg.message())
        })
        .collect();
    let held = st.held + n;
    let Ok(used) = ctx.send(Outcome::Allocated {
        grants: &grants,
        quota_remaining: vm.config.quota.saturating_sub(held),
    }) else {
        return ctx.dropped(); // batch and reservation roll back as they drop
    };
    if let Err(e) = batch.commit() {
        drop(reservation);
        return ctx.refuse(failure_refusal(&e));
    }

    // Acknowledged and live: the reservations become grants.
    if let Some(dev) = st.devices.get_mut(handle as usize) {
        let table = dev.table_mut(a.kind);
        for ((index, (irte, hv)), route) in indices.iter().zip(&reservation.items).zip(&routes) {
            let record = GrantRecord {
                cpu: hv.cpu,
                route: *route,
                irte: *irte,
                vector: hv.vector,
            };
            table.insert(*index, record);
        }
    }
    reservation.commit(vm.id, &routes);
    st.held = held;
    ctx.handled(used, Status::Ok)
}

/// The grants a FREE names (all of them, or the refusal), or all grants of the device for
/// RESET (`range` = `None`).
fn select(
    dev: &DeviceGrants,
    range: Option<&IndexRange>,
) -> Result<Vec<(Kind, u32, GrantRecord)>, Refusal> {
    let Some(range) = range else {
        return Ok(dev.all());
    };
    let table = dev.table(range.kind);
    if range.kind == Kind::Msi {
        // The block is freed whole or not at all.
        let size = table.granted();
        let count = u32::from(range.count);
        if size == 0 || range.first != 0 || count < size {
            return Err(Refusal::NotGranted { index: range.first });
        }
        if count > size {
            return Err(Refusal::NotGranted { index: size });
        }
    }
    range
        .indices()
        .map(|i| {
            table
                .records
                .get(&i)
                .map(|r| (range.kind, i, *r))
                .ok_or(Refusal::NotGranted { index: i })
        })
        .collect()
}

fn free(
    ctx: &mut Ctx<'_>,
    vm: &VmShared,
    st: &mut VmState,
    handle: u32,
    range: Option<&IndexRange>,
) -> Handled {
    let Some(dev) = st.devices.get(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    if let Some(range) = range
        && !usable(dev, st.features, range.kind)
    {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    let grants = match select(dev, range) {
        Ok(g) => g,
        Err(r) => return ctx.refuse(r),
    };
    let unit = dev.spec.unit;
    let count = grants.len() as u32;
    let mut batch = RouteBatch::new(st.routes.as_mut());
    for (_, _, record) in &grants {
        if let Err(e) = batch.remove(record.route) {
            return ctx.refuse(failure_refusal(&e));
        }
    }
    let held = st.held.saturating_sub(count);
    let quota_remaining = vm.config.quota.saturating_sub(held);
    let outcome = if range.is_some() {
        Outcome::Freed {
            count,
            quota_remaining,
        }
    } else {
        Outcome::Reset {
            count,
            quota_remaining,
        }
    };
    let Ok(used) = ctx.send(outcome) else {
        return ctx.dropped();
    };
    if let Err(e) = batch.commit() {
        return ctx.refuse(failure_refusal(&e));
    }
    forget(vm, st, handle, unit, &grants);
    st.held = held;
    ctx.handled(used, Status::Ok)
}

/// After the routes are gone: releases the host side and drops the records.
fn forget(
    vm: &VmShared,
    st: &mut VmState,
    handle: u32,
    unit: u16,
    grants: &[(Kind, u32, GrantRecord)],
) {
    let items = grants.iter().map(|(_, _, r)| (r.irte, r.host_vector()));
    vm.host.release(unit, items);
    if let Some(dev) = st.devices.get_mut(handle as usize) {
        for (kind, index, _) in grants {
            dev.table_mut(*kind).remove(*index);
        }
    }
}

fn retarget(
    ctx: &mut Ctx<'_>,
    vm: &VmShared,
    st: &mut VmState,
    handle: u32,
    r: &Retarget<'_>,
) -> Handled {
    // Spec §5.3: the handle (6), negotiation in its listed order, kind then the RETARGET
    // feature (7), every target's vCPU (8), then the indices (9).
    let Some(dev) = st.devices.get(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    if !usable(dev, st.features, r.range.kind) {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    if st.features & feature::RETARGET == 0 {
        return ctx.refuse(Refusal::Unsupported {
            field: Field::Opcode,
        });
    }
    if let Some(entry) = r
        .targets
        .iter()
        .position(|t| t.vcpu() >= vm.config.num_vcpus)
    {
        return ctx.refuse(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: entry as u32,
        });
    }
    let table = dev.table(r.range.kind);
    let mut routes = Vec::with_capacity(usize::from(r.range.count));
    for index in r.range.indices() {
        match table.records.get(&index) {
            Some(record) => routes.push(record.route),
            None => return ctx.refuse(Refusal::NotGranted { index }),
        }
    }
    let mut batch = RouteBatch::new(st.routes.as_mut());
    for (route, t) in routes.iter().zip(r.targets) {
        let dest = GuestDest {
            vcpu: t.vcpu(),
            vector: t.vector(),
        };
        if let Err(e) = batch.update(*route, dest) {
            return ctx.refuse(failure_refusal(&e));
        }
    }
    let Ok(used) = ctx.send(Outcome::Retargeted {
        count: routes.len() as u32,
        quota_remaining: vm.config.quota.saturating_sub(st.held),
    }) else {
        return ctx.dropped();
    };
    if let Err(e) = batch.commit() {
        return ctx.refuse(failure_refusal(&e));
    }
    ctx.handled(used, Status::Ok)
}

/// Frees every grant of the VM (virtio device reset): one route commit, then the host
/// side. All or nothing.
pub(crate) fn release_all(vm: &VmShared, st: &mut VmState) -> Result<u32, LayerError> {
    let per_device: Vec<_> = st.devices.iter().map(|d| (d.spec.unit, d.all())).collect();
    let mut batch = RouteBatch::new(st.routes.as_mut());
    for (_, grants) in &per_device {
        for (_, _, record) in grants {
            batch.remove(record.route)?;
        }
    }
    batch.commit()?;
    let mut count = 0;
    for (handle, (unit, grants)) in per_device.iter().enumerate() {
        forget(vm, st, handle as u32, *unit, grants);
        count += grants.len() as u32;
    }
    st.held = st.held.saturating_sub(count);
    Ok(count)
}

#[cfg(test)]
pub(crate) mod tests;
