//! Configuration changes (spec §2.4): with `PVIRQ_F_EVENTS` the host adds assigned devices
//! (`num_devices` grows) and changes the VM's quota (`vm_quota`), moving
//! `config_generation` and raising a configuration-change interrupt; without it the
//! configuration never changes while the device is live.

use crate::Error;
use crate::driver::Driver;
use crate::error::ConfigField;
use crate::hal::Hal;
use crate::init::{DeviceConfig, read_config};
use crate::transport::{Transport, status};
use pvirq_proto::feature;

/// Whether `new` is a change spec §2.4 allows from `old`: only `num_devices` (up) and
/// `vm_quota` move, and only with `EVENTS`.
fn allowed_change(old: &DeviceConfig, new: &DeviceConfig, events: bool) -> Result<(), Error> {
    let checks = [
        (events, ConfigField::Generation),
        (new.version == old.version, ConfigField::Version),
        (new.max_batch == old.max_batch, ConfigField::MaxBatch),
        (new.num_devices >= old.num_devices, ConfigField::NumDevices),
        (new.num_vcpus == old.num_vcpus, ConfigField::NumVcpus),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, field)) => Err(Error::ConfigChanged(*field)),
        None => Ok(()),
    }
}

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    /// Re-reads the configuration if its generation moved (after a configuration-change
    /// interrupt; [`Driver::handle_interrupt`] calls it): `Ok(Some(new))` when it moved,
    /// `Ok(None)` when it did not.
    ///
    /// The device setting DEVICE_NEEDS_RESET is [`Error::DeviceNeedsReset`]. A change spec
    /// §2.4 does not allow (any change without `EVENTS`; `version`, `max_batch` or
    /// `num_vcpus` changing, or `num_devices` shrinking) is [`Error::ConfigChanged`] and the
    /// configuration the driver holds stays as it was.
    pub fn refresh_config(&mut self) -> Result<Option<DeviceConfig>, Error> {
        if self.transport.status() & status::DEVICE_NEEDS_RESET != 0 {
            return Err(Error::DeviceNeedsReset);
        }
        if self.transport.config_generation() == self.generation {
            return Ok(None);
        }
        let (config, generation) = read_config(&self.transport);
        allowed_change(&self.config, &config, self.has(feature::EVENTS))?;
        self.config = config;
        self.generation = generation;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_devices_added_and_the_quota_may_change_and_only_with_events() {
        let old = DeviceConfig {
            version: 1,
            max_batch: 64,
            num_devices: 2,
            vm_quota: 32,
            num_vcpus: 4,
        };
        let grown = DeviceConfig {
            num_devices: 3,
            vm_quota: 16,
            ..old
        };
        assert_eq!(allowed_change(&old, &grown, true), Ok(()));
        assert_eq!(
            allowed_change(&old, &grown, false),
            Err(Error::ConfigChanged(ConfigField::Generation))
        );
        let cases = [
            (DeviceConfig { version: 2, ..old }, ConfigField::Version),
            (
                DeviceConfig {
                    max_batch: 8,
                    ..old
                },
                ConfigField::MaxBatch,
            ),
            (
                DeviceConfig {
                    num_devices: 1,
                    ..old
                },
                ConfigField::NumDevices,
            ),
            (
                DeviceConfig {
                    num_vcpus: 8,
                    ..old
                },
                ConfigField::NumVcpus,
            ),
        ];
        for (new, field) in cases {
            assert_eq!(
                allowed_change(&old, &new, true),
                Err(Error::ConfigChanged(field))
            );
        }
    }
}
