//! The devices the CUDA backend's checks run on, and `test_device!`, which writes a check's
//! test once per device.

use std::sync::Arc;

use muddit_engine::cuda::{self, Device};

/// The CPU emulator of the CUDA kernels (feature `emulate`); always there.
#[cfg(feature = "emulate")]
pub fn emulated() -> Option<Arc<Device>> {
    Some(Arc::new(Device::emulated()))
}

/// GPU 0, or `None` (said on stderr) where there is none and none is required: with
/// `MUDDIT_REQUIRE_CUDA=1` a missing GPU is a failure.
pub fn gpu() -> Option<Arc<Device>> {
    match cuda::open(0) {
        Ok(dev) => {
            println!("running on {}", dev.describe());
            Some(dev)
        }
        Err(e) if std::env::var("MUDDIT_REQUIRE_CUDA").as_deref() == Ok("1") => {
            panic!("MUDDIT_REQUIRE_CUDA=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!(
                "no GPU, GPU suite not run (MUDDIT_REQUIRE_CUDA=1 makes this a failure): {e}"
            );
            None
        }
    }
}

/// `test_device!(device; name => check, ...)`: a `#[test] fn name()` per check, running
/// `check(&dev)` on `muddit_tests::device::<device>()` (`emulated` or `gpu`) when that device
/// is there; `test_device!(device; module: name, ...)` runs `muddit_tests::<module>::<name>`.
/// The lists of checks (`cuda_check_tests!`, `cuda_pipeline_check_tests!`) are written once,
/// beside the checks, and expanded per device by each test file.
#[macro_export]
macro_rules! test_device {
    ($device:ident; $module:ident: $($name:ident),* $(,)?) => {
        $crate::test_device!($device; $($name => $crate::$module::$name),*);
    };
    ($device:ident; $($name:ident => $check:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(dev) = $crate::device::$device() {
                    let check: fn(&std::sync::Arc<muddit_engine::cuda::Device>) = $check;
                    check(&dev);
                }
            }
        )*
    };
}
