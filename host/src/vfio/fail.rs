//! [`FailNth`]: an [`IrqHost`] that refuses chosen calls, to walk every failure point of
//! the VFIO path against the real kernel and check that nothing stays enabled.

use super::irq_set::IrqSet;
use super::kernel::{IrqHost, IrqInfo};

/// Passes calls to `inner`, except that call number `fail_at` (counted from 1 since the
/// last [`FailNth::arm`]) is refused with `errno` without reaching the kernel, exactly as
/// a kernel batch that rolled itself back.
#[derive(Debug)]
pub struct FailNth<H> {
    inner: H,
    calls: u64,
    fail_at: Option<u64>,
    errno: i32,
    refused: u64,
}

impl<H: IrqHost> FailNth<H> {
    /// A wrapper that refuses nothing until armed.
    pub fn new(inner: H) -> Self {
        FailNth {
            inner,
            calls: 0,
            fail_at: None,
            errno: 0,
            refused: 0,
        }
    }

    /// Refuses call number `nth` (from 1) from now on with `errno`; resets the count.
    pub fn arm(&mut self, nth: u64, errno: i32) {
        self.calls = 0;
        self.fail_at = Some(nth);
        self.errno = errno;
    }

    /// Refuses nothing from now on; resets the count.
    pub fn disarm(&mut self) {
        self.calls = 0;
        self.fail_at = None;
    }

    /// Calls seen since the last arm or disarm.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// How many calls it refused in all.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The wrapped host.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: IrqHost> IrqHost for FailNth<H> {
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.inner.irq_info(index)
    }

    fn set_irqs(&mut self, set: &IrqSet<'_>) -> Result<u32, i32> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            self.refused += 1;
            return Err(self.errno);
        }
        self.inner.set_irqs(set)
    }
}
