//! Device initialisation (spec §2.5): the options a driver brings, the configuration it
//! reads, and feature negotiation up to FEATURES_OK.

use crate::Error;
use crate::transport::{Transport, status};
use pvirq_proto::{MAX_BATCH_LIMIT, PROTOCOL_VERSION, feature};

/// What the driver asks of the device at initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Feature bits the driver is willing to accept (intersected with the device's offer
    /// and with [`feature::V1`]). `VERSION_1` is always required.
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

/// The device configuration (spec §2.4), as read at initialisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceConfig {
    /// Protocol version (always [`PROTOCOL_VERSION`] once the driver is up).
    pub version: u16,
    /// Largest vector count in one request.
    pub max_batch: u16,
    /// Device handles are `0..num_devices`.
    pub num_devices: u32,
    /// Vectors the VM may hold at once.
    pub vm_quota: u32,
    /// Valid target vCPUs are `0..num_vcpus`.
    pub num_vcpus: u32,
}

/// Reads the configuration, retrying while the generation changes under the read (at
/// most a few times: pvirq's configuration never changes, spec §2.4).
fn read_config<T: Transport>(transport: &T) -> DeviceConfig {
    let read = || DeviceConfig {
        version: transport.read_config_u16(0),
        max_batch: transport.read_config_u16(2),
        num_devices: transport.read_config_u32(4),
        vm_quota: transport.read_config_u32(8),
        num_vcpus: transport.read_config_u32(12),
    };
    let mut config = read();
    for _ in 0..16 {
        let generation = transport.config_generation();
        config = read();
        if transport.config_generation() == generation {
            break;
        }
    }
    config
}

/// Negotiates features and reads the configuration: everything before memory is
/// allocated. Returns the features and configuration.
pub(crate) fn negotiate<T: Transport>(
    transport: &mut T,
    options: &Options,
) -> Result<(u64, DeviceConfig), Error> {
    transport.reset(options.reset_spins)?;
    transport.set_status(status::ACKNOWLEDGE);
    transport.set_status(status::ACKNOWLEDGE | status::DRIVER);
    let offered = transport.device_features();
    if offered & feature::VERSION_1 == 0 {
        return Err(Error::NotModern(offered));
    }
    let mut features = offered & options.features & feature::V1 | feature::VERSION_1;
    if features & feature::IMS == 0 {
        features &= !feature::PASID;
    }
    transport.set_driver_features(features);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    transport.set_status(st);
    if transport.status() & status::FEATURES_OK == 0 {
        return Err(Error::FeaturesRejected(features));
    }
    let config = read_config(transport);
    if config.version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(config.version));
    }
    if config.max_batch == 0 || config.max_batch > MAX_BATCH_LIMIT {
        return Err(Error::BadConfig {
            max_batch: config.max_batch,
        });
    }
    Ok((features, config))
}
