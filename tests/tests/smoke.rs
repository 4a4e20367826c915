//! The smallest whole path: guest driver → ring in guest memory → host device → reply →
//! guest; then the granted message fired by the device reaches the requested vCPU.

use pvirq_guest::Options;
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{DeviceSpec, VmConfig};
use pvirq_proto::{Grant, Kind, MsiMessage, Target};
use pvirq_sim::Channel;

#[test]
fn a_granted_msix_vector_delivers_where_the_guest_asked() {
    let host = ModelHost::new(&ModelConfig::default()).expect("default host");
    let config = VmConfig {
        quota: 8,
        num_vcpus: 2,
        max_batch: 64,
        devices: vec![DeviceSpec {
            requester_id: 0x0100,
            msi_max: 0,
            msix_table_size: 4,
            ims_slots: 0,
            ..DeviceSpec::default()
        }],
        ..VmConfig::default()
    };
    let routes = Box::new(MemoryRoutes::kvm_like());
    let mut channel = Channel::new(&host, config, routes, Options::default()).expect("channel");
    let targets = [Target::new(1, 0x41), Target::new(0, 0x42)];
    let mut grants = [Grant::new(0, MsiMessage::default()); 2];
    let allocation = channel
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 1, &targets, &mut grants)
        .expect("granted");
    assert_eq!(allocation.grants.len(), 2);
    assert_eq!(allocation.quota_remaining, 6);
    for (grant, target) in allocation.grants.iter().zip(&targets) {
        let delivery = host.fire(0x0100, grant.message()).expect("delivered");
        assert_eq!(delivery.to(), Some((target.vcpu(), target.vector())));
    }
    assert_eq!(channel.vm().occupancy().held, 2);
}
