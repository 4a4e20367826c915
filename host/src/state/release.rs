//! Giving grants back: the routes first (one commit), then the host side, then the
//! records. FREE and RESET use [`release`] after their own commit; a virtio reset and the
//! VM's end use [`release_all`].

use super::{DeviceState, VmState};
use crate::grants::GrantRecord;
use crate::routes::RouteBatch;
use pvirq_proto::Kind;

/// After the routes of `grants` are gone: the backend stops backing their vectors, and
/// their records go. The caller lowers the VM's held count.
pub(crate) fn release(dev: &mut DeviceState, grants: &[(Kind, u32, GrantRecord)]) {
    for kind in Kind::ALL.iter().copied() {
        let indices: Vec<u32> = grants
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, i, _)| *i)
            .collect();
        if indices.is_empty() {
            continue;
        }
        dev.backend.disable(kind, &indices);
        let table = dev.grants.table_mut(kind);
        for index in indices {
            table.remove(index);
        }
    }
}

/// Frees every grant of the VM and returns how many there were. It cannot fail: the
/// route removals go in one commit, and if the route layer refuses it the routes are
/// cleared instead ([`crate::routes::GuestRoutes::clear`]); the backends stop backing
/// the vectors either way.
pub(crate) fn release_all(st: &mut VmState) -> u32 {
    let per_device: Vec<_> = st.devices.iter().map(|d| d.grants.all()).collect();
    let committed = {
        let mut batch = RouteBatch::new(st.routes.as_mut());
        per_device
            .iter()
            .flatten()
            .try_for_each(|(_, _, record)| batch.remove(record.route))
            .and_then(|()| batch.commit())
            .is_ok()
    };
    if !committed {
        st.routes.clear();
    }
    let mut count = 0;
    for (dev, grants) in st.devices.iter_mut().zip(&per_device) {
        release(dev, grants);
        count += grants.len() as u32;
    }
    st.held = st.held.saturating_sub(count);
    count
}
