//! pvirq's routes in cloud-hypervisor's routing table. `KVM_SET_GSI_ROUTING` replaces the
//! VM's whole table, so cloud-hypervisor keeps every device's MSI routes in one shared map
//! (`gsi_msi_routes`, `vmm/src/interrupt.rs`) and sends all of it on each change. pvirq's
//! `KvmRoutes` sits on a `RouteOwner`; this is that owner over the shared map: the VMM's
//! other routes (a VFIO device's MSI-X vectors, virtio-pci's) go along with pvirq's in the
//! same ioctl, and neither side overwrites the other.

use crate::cloud_hypervisor_vmm::{GsiAllocator, GsiMsiRoutes, HypervisorVm, RoutingEntry};
use kvm_bindings::{KVM_IRQ_ROUTING_MSI, kvm_irq_routing_entry, kvm_irq_routing_msi};
use pvirq_host::MsiMessage;
use pvirq_host::kvm::{Gsi, KvmRouteError, RouteOwner};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The MSI routing entry that makes `gsi` deliver `message`.
pub fn msi_entry(gsi: u32, message: MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi = kvm_irq_routing_msi {
        address_lo: message.address as u32,
        address_hi: (message.address >> 32) as u32,
        data: message.data,
        ..Default::default()
    };
    entry
}

/// pvirq's `RouteOwner` over cloud-hypervisor's shared routes.
pub struct SharedRoutes {
    routes: GsiMsiRoutes,
    allocator: Arc<Mutex<dyn GsiAllocator>>,
    vm: Arc<dyn HypervisorVm>,
}

impl SharedRoutes {
    /// An owner over the VMM's map, allocator and VM (what `MsiInterruptManager` holds).
    pub fn new(
        routes: GsiMsiRoutes,
        allocator: Arc<Mutex<dyn GsiAllocator>>,
        vm: Arc<dyn HypervisorVm>,
    ) -> Self {
        SharedRoutes {
            routes,
            allocator,
            vm,
        }
    }
}

impl RouteOwner for SharedRoutes {
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError> {
        lock(&*self.allocator)
            .allocate_gsi()
            .map(Gsi::new)
            .ok_or(KvmRouteError::Exhausted {
                requested: 1,
                available: 0,
            })
    }

    /// cloud-hypervisor's allocator never takes a GSI back; pvirq gives its GSIs back only
    /// when its VM goes away.
    fn release_gsi(&mut self, _gsi: Gsi) {}

    /// All or nothing: the map changes only if KVM took the new table.
    fn commit(&mut self, changes: &[(Gsi, Option<MsiMessage>)]) -> Result<(), KvmRouteError> {
        let mut routes = lock(&self.routes);
        let mut next = routes.clone();
        for (gsi, message) in changes {
            match message {
                Some(m) => {
                    let route = msi_entry(gsi.raw(), *m);
                    next.insert(
                        gsi.raw(),
                        RoutingEntry {
                            route,
                            masked: false,
                        },
                    );
                }
                None => {
                    next.remove(&gsi.raw());
                }
            }
        }
        let entries: Vec<kvm_irq_routing_entry> = next
            .values()
            .filter(|e| !e.masked)
            .map(|e| e.route)
            .collect();
        self.vm
            .set_gsi_routing(&entries)
            .map_err(|e| KvmRouteError::SetGsiRouting {
                entries: entries.len(),
                source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        *routes = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_host::kvm::{KVM_DEVICE, KvmRoutes, REQUIRE_KVM_ENV};
    use pvirq_proto::CompatMsi;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// GSIs from 24 up, as cloud-hypervisor's allocator hands them out.
    struct Gsis(u32);

    impl GsiAllocator for Gsis {
        fn allocate_gsi(&mut self) -> Option<u32> {
            self.0 += 1;
            Some(self.0 - 1)
        }
    }

    /// Records each table sent (and forwards it to KVM when there is a VM).
    #[derive(Default)]
    struct Recorder {
        tables: Mutex<Vec<BTreeSet<u32>>>,
        refuse: AtomicBool,
        kvm: Option<Arc<kvm_ioctls::VmFd>>,
    }

    impl HypervisorVm for Recorder {
        fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> std::io::Result<()> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
            }
            if let Some(vm) = &self.kvm {
                let table = kvm_bindings::KvmIrqRouting::from_entries(entries)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
                vm.set_gsi_routing(&table)
                    .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
            }
            lock(&self.tables).push(entries.iter().map(|e| e.gsi).collect());
            Ok(())
        }
    }

    fn last(recorder: &Recorder) -> BTreeSet<u32> {
        lock(&recorder.tables).last().cloned().unwrap_or_default()
    }

    /// The VMM's map with a VFIO device's vector at GSI 24 already in it.
    fn vmm_routes() -> GsiMsiRoutes {
        let vfio = RoutingEntry {
            route: msi_entry(24, CompatMsi::fixed(0, 0x30).message()),
            masked: false,
        };
        Arc::new(Mutex::new([(24, vfio)].into_iter().collect()))
    }

    #[test]
    fn pvirq_routes_go_to_kvm_with_the_vmms_other_routes_all_or_nothing() {
        let routes = vmm_routes();
        let recorder = Arc::new(Recorder::default());
        let mut owner = SharedRoutes::new(
            routes.clone(),
            Arc::new(Mutex::new(Gsis(25))),
            recorder.clone(),
        );
        let (a, b) = (owner.reserve_gsi().unwrap(), owner.reserve_gsi().unwrap());
        assert_eq!((a.raw(), b.raw()), (25, 26));
        let m = CompatMsi::fixed(1, 0x41).message();
        owner.commit(&[(a, Some(m)), (b, Some(m))]).unwrap();
        assert_eq!(last(&recorder), BTreeSet::from([24, 25, 26]));
        // KVM refuses: the map is as it was, and so is KVM's table.
        recorder.refuse.store(true, Ordering::SeqCst);
        assert!(matches!(
            owner.commit(&[(a, None)]),
            Err(KvmRouteError::SetGsiRouting { entries: 2, .. })
        ));
        assert_eq!(lock(&routes).len(), 3);
        recorder.refuse.store(false, Ordering::SeqCst);
        owner.commit(&[(a, None), (b, None)]).unwrap();
        assert_eq!(
            last(&recorder),
            BTreeSet::from([24]),
            "the VFIO route stays"
        );
    }

    #[test]
    fn kvm_routes_over_the_shared_map_on_a_real_vm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            assert!(
                std::env::var(REQUIRE_KVM_ENV).as_deref() != Ok("1"),
                "{REQUIRE_KVM_ENV}=1 but {KVM_DEVICE} is not available"
            );
            println!("SKIPPED: {KVM_DEVICE} not available");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let routes = vmm_routes();
        let recorder = Arc::new(Recorder {
            kvm: Some(vm.clone()),
            ..Recorder::default()
        });
        let owner = SharedRoutes::new(
            routes.clone(),
            Arc::new(Mutex::new(Gsis(25))),
            recorder.clone(),
        );
        // One irqfd per GSI the quota can use, registered once now.
        let kvm_routes = KvmRoutes::new(owner, vm, 4).unwrap();
        let host = crate::host().unwrap();
        let config = (*crate::vm(&host).unwrap().config()).clone();
        let pvirq_vm = host.create_vm(config, Box::new(kvm_routes)).unwrap();
        let targets = [
            pvirq_proto::Target::new(1, 0x41),
            pvirq_proto::Target::new(0, 0x42),
        ];
        let request = pvirq_proto::Request {
            device: 0,
            tag: 1,
            op: pvirq_proto::Operation::Alloc(pvirq_proto::Alloc::any(
                pvirq_proto::Kind::MsiX,
                2,
                &targets,
            )),
        };
        let mut bytes = vec![0u8; request.encoded_len()];
        request.encode(&mut bytes).unwrap();
        let mut sink = pvirq_host::BufferSink::new(256);
        pvirq_vm.handle(&bytes, &mut sink);
        assert_eq!(pvirq_vm.occupancy().held, 2);
        // KVM took one table with the VFIO route and both of pvirq's.
        assert_eq!(last(&recorder), BTreeSet::from([24, 25, 26]));
        let entry = lock(&routes)[&25].route;
        // SAFETY: the entry was built as an MSI entry.
        let msi = unsafe { entry.u.msi };
        let want = CompatMsi::fixed(1, 0x41).message();
        assert_eq!((msi.address_lo, msi.data), (want.address as u32, want.data));
        assert_eq!(pvirq_vm.reset_all(), 2);
        assert_eq!(last(&recorder), BTreeSet::from([24]));
    }
}
