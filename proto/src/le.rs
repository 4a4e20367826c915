//! Little-endian integers stored as byte arrays.
//!
//! Every multi-byte field on the wire is little-endian. Storing each field as a byte array
//! gives every wire struct an alignment of 1, so a struct can be read in place from a buffer
//! at any address (guest memory, a descriptor) and the `Pod` derive proves there is no padding.

use bytemuck::{Pod, Zeroable};
use core::fmt;

macro_rules! le_int {
    ($name:ident, $int:ty, $bytes:literal) => {
        #[doc = concat!("A little-endian `", stringify!($int), "` with alignment 1.")]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
        #[repr(transparent)]
        pub struct $name([u8; $bytes]);

        impl $name {
            /// Stores `value` in little-endian byte order.
            pub const fn new(value: $int) -> Self {
                Self(value.to_le_bytes())
            }

            /// The value in native byte order.
            pub const fn get(self) -> $int {
                <$int>::from_le_bytes(self.0)
            }
        }

        impl From<$int> for $name {
            fn from(value: $int) -> Self {
                Self::new(value)
            }
        }

        impl From<$name> for $int {
            fn from(value: $name) -> Self {
                value.get()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.get(), f)
            }
        }
    };
}

le_int!(Le16, u16, 2);
le_int!(Le32, u32, 4);
le_int!(Le64, u64, 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_little_endian_whatever_the_host() {
        assert_eq!(
            bytemuck::bytes_of(&Le32::new(0x1234_5678)),
            &[0x78, 0x56, 0x34, 0x12]
        );
        assert_eq!(Le16::new(0xBEEF).get(), 0xBEEF);
        assert_eq!(Le64::new(u64::MAX - 1).get(), u64::MAX - 1);
        assert_eq!(core::mem::align_of::<Le64>(), 1);
    }
}
