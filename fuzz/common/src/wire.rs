//! The byte format of every fuzz input, read through `arbitrary`'s [`Unstructured`] and
//! written back by [`Wire::write`], so that tests can turn representative inputs into seed
//! files that decode to exactly those inputs.
//!
//! Integers are little-endian, zero-filled when the data runs out (as `arbitrary` reads
//! them); a list is a sequence of `1, item` and ends at a byte whose low bit is 0 (or at
//! the end of the data). `#[derive(Arbitrary)]` would not let us write seeds: its format is
//! not meant to be inverted.

use arbitrary::{Result, Unstructured};

/// A value with a readable and writable byte form.
pub trait Wire: Sized {
    /// Reads one value (never fails on short data: missing bytes read as 0).
    fn read(u: &mut Unstructured<'_>) -> Result<Self>;
    /// Appends the bytes [`Wire::read`] turns back into `self`.
    fn write(&self, out: &mut Vec<u8>);

    /// Decodes a whole fuzz input.
    fn from_bytes(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        // Reads of integers and lists cannot fail; an error would mean a bug here.
        Self::read(&mut u).unwrap_or_else(|e| panic!("wire format: {e}"))
    }

    /// Encodes a whole fuzz input.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn read(u: &mut Unstructured<'_>) -> Result<Self> {
                u.arbitrary()
            }
            fn write(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

wire_int!(u8, u16, u32, u64);

impl<T: Wire> Wire for Vec<T> {
    fn read(u: &mut Unstructured<'_>) -> Result<Self> {
        let mut items = Vec::new();
        while !u.is_empty() && u8::read(u)? & 1 == 1 {
            items.push(T::read(u)?);
        }
        Ok(items)
    }

    fn write(&self, out: &mut Vec<u8>) {
        for item in self {
            out.push(1);
            item.write(out);
        }
        out.push(0);
    }
}

/// A byte string: a 16-bit length, then the bytes (as many as are left, if fewer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Wire for Blob {
    fn read(u: &mut Unstructured<'_>) -> Result<Self> {
        let len = usize::from(u16::read(u)?);
        let n = len.min(u.len());
        Ok(Blob(u.bytes(n)?.to_vec()))
    }

    fn write(&self, out: &mut Vec<u8>) {
        let n = self.0.len().min(usize::from(u16::MAX));
        (n as u16).write(out);
        out.extend_from_slice(&self.0[..n]);
    }
}

impl Wire for (u8, u8) {
    fn read(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok((u8::read(u)?, u8::read(u)?))
    }

    fn write(&self, out: &mut Vec<u8>) {
        self.0.write(out);
        self.1.write(out);
    }
}

/// Declares a plain struct of [`Wire`] fields, read and written in field order, with an
/// [`arbitrary::Arbitrary`] implementation over the same format.
#[macro_export]
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $crate::wire::Wire for $name {
            fn read(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
                Ok($name { $($field: <$ty as $crate::wire::Wire>::read(u)?,)* })
            }
            fn write(&self, out: &mut Vec<u8>) {
                $($crate::wire::Wire::write(&self.$field, out);)*
            }
        }

        impl<'a> arbitrary::Arbitrary<'a> for $name {
            fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
                <Self as $crate::wire::Wire>::read(u)
            }
        }
    };
}
