//! Device initialisation (spec §2.5): the options a driver brings, the configuration it
//! reads, and feature negotiation up to FEATURES_OK.

use crate::Error;
use crate::transport::{Transport, status};
use pvirq_proto::{MAX_BATCH_LIMIT, PROTOCOL_VERSION, feature};

/// What the driver asks of the device at initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Feature bits the driver is willing to accept ([`feature`]). The driver accepts the
    /// intersection with the device's offer and with [`feature::ALL`], minus every bit whose
    /// prerequisite that intersection lacks ([`feature::missing_dependency`]): it never
    /// writes a set the device must refuse. `VERSION_1` is always required.
    ///
    /// The default is [`feature::V1`]: a version-1 driver, which sends and accepts exactly
    /// version 1's bytes whatever the device offers (spec §2.2). Ask for extension bits to
    /// use them ([`crate::Driver::negotiated`] says which were agreed).
    /// `ACCESS_PLATFORM` is accepted only when asked for: the HAL must then hand out
    /// addresses the platform's DMA translation maps (an IOVA behind a vIOMMU, shared
    /// memory in a confidential VM). The driver validates every reply as spec §8 lists
    /// whether or not it was negotiated.
    pub features: u64,
    /// The largest count the driver will put in one request; sizes the per-slot buffers.
    /// The effective limit is the smaller of this and the device's `max_batch`.
    pub max_batch: u16,
    /// Spins a blocking call waits for its completion before [`Error::Timeout`]; `None`
    /// waits for ever (the device must answer eventually, spec §6).
    pub spin_limit: Option<u64>,
    /// Status reads to wait for a device reset to complete.
    pub reset_spins: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            features: feature::V1,
            max_batch: MAX_BATCH_LIMIT,
            spin_limit: None,
            reset_spins: 1 << 20,
        }
    }
}

/// The device configuration (spec §2.4), as read at initialisation and re-read after a
/// configuration change ([`crate::Driver::refresh_config`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceConfig {
    /// Protocol version (always [`PROTOCOL_VERSION`] once the driver is up).
    pub version: u16,
    /// Largest vector count in one request.
    pub max_batch: u16,
    /// Device handles are `0..num_devices`. Grows while the device is live only with
    /// [`feature::EVENTS`].
    pub num_devices: u32,
    /// Vectors the VM may hold at once. Changes while the device is live only with
    /// [`feature::EVENTS`].
    pub vm_quota: u32,
    /// A version-1 target names one of `0..num_vcpus` (with [`feature::APIC_ID`], targets
    /// name x2APIC IDs instead).
    pub num_vcpus: u32,
}

/// Reads the configuration, retrying while the generation changes under the read (virtio
/// 1.x §2.4.1), and returns it with the generation it was read at. Gives up after a few
/// tries and returns the last read: a device that keeps changing its configuration gets
/// whatever it last showed, which the caller validates like any other.
pub(crate) fn read_config<T: Transport>(transport: &T) -> (DeviceConfig, u32) {
    let read = || DeviceConfig {
        version: transport.read_config_u16(0),
        max_batch: transport.read_config_u16(2),
        num_devices: transport.read_config_u32(4),
        vm_quota: transport.read_config_u32(8),
        num_vcpus: transport.read_config_u32(12),
    };
    let mut generation = transport.config_generation();
    let mut config = read();
    for _ in 0..16 {
        let after = transport.config_generation();
        if after == generation {
            break;
        }
        generation = after;
        config = read();
    }
    (config, generation)
}

/// The feature set to accept: what both sides want, without a bit whose prerequisite is
/// missing (spec §2.2 [DEV-23] makes the device refuse such a set; dropping the dependent
/// bit, never adding its prerequisite, keeps the result inside the offer).
pub(crate) fn accepted_features(offered: u64, wanted: u64) -> u64 {
    let mut features = offered & wanted & feature::ALL | feature::VERSION_1;
    while let Some(bit) = feature::missing_dependency(features) {
        features &= !bit;
    }
    features
}

/// Negotiates features and reads the configuration: everything before memory is
/// allocated. Returns the features, the configuration and its generation.
pub(crate) fn negotiate<T: Transport>(
    transport: &mut T,
    options: &Options,
) -> Result<(u64, DeviceConfig, u32), Error> {
    transport.reset(options.reset_spins)?;
    transport.set_status(status::ACKNOWLEDGE);
    transport.set_status(status::ACKNOWLEDGE | status::DRIVER);
    let offered = transport.device_features();
    if offered & feature::VERSION_1 == 0 {
        return Err(Error::NotModern(offered));
    }
    let features = accepted_features(offered, options.features);
    transport.set_driver_features(features);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    transport.set_status(st);
    if transport.status() & status::FEATURES_OK == 0 {
        return Err(Error::FeaturesRejected(features));
    }
    let (config, generation) = read_config(transport);
    if config.version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(config.version));
    }
    if config.max_batch == 0 || config.max_batch > MAX_BATCH_LIMIT {
        return Err(Error::BadConfig {
            max_batch: config.max_batch,
        });
    }
    Ok((features, config, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_features_intersect_and_drop_broken_dependencies() {
        assert_eq!(accepted_features(feature::ALL, feature::V1), feature::V1);
        assert_eq!(accepted_features(feature::ALL, feature::ALL), feature::ALL);
        // The device lacks INFO: every bit that needs it goes, the others stay.
        let offered = feature::ALL & !feature::INFO;
        assert_eq!(
            accepted_features(offered, feature::ALL),
            feature::V1 | feature::APIC_ID | feature::ACCESS_PLATFORM
        );
        // The driver did not ask for IMS: PASID goes with it.
        let wanted = feature::V1 & !feature::IMS;
        assert_eq!(
            accepted_features(feature::ALL, wanted),
            feature::V1 & !feature::IMS & !feature::PASID
        );
        // Reserved and unknown bits are never accepted; VERSION_1 always is.
        assert_eq!(
            accepted_features(u64::MAX, u64::MAX),
            feature::ALL,
            "only bits the protocol defines"
        );
        assert_eq!(accepted_features(feature::VERSION_1, 0), feature::VERSION_1);
        for wanted in [
            0,
            feature::V1,
            feature::ALL,
            feature::EVENTS | feature::PASID,
        ] {
            for offered in [feature::V1, feature::ALL, feature::ALL & !feature::INFO] {
                let got = accepted_features(offered, wanted);
                assert_eq!(feature::missing_dependency(got), None);
                assert_eq!(got & !(offered & wanted) & !feature::VERSION_1, 0);
            }
        }
    }
}
