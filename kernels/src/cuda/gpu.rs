//! A GPU through cudarc: opening it (after checking that the driver library loads), its one
//! stream, each module and function loaded once, planned launches, CUDA-event kernel timings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute_enum};
use cudarc::driver::PushKernelArg;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig,
};

use super::launch::Launch;
use super::nvrtc::{self, Module};
use super::{CudaError, Result};

/// The driver library checked before cudarc touches it (cudarc panics if it cannot load it).
#[cfg(not(windows))]
pub const DRIVER_LIB: &str = "libcuda.so.1";
#[cfg(windows)]
pub const DRIVER_LIB: &str = "nvcuda.dll";

/// Static shared memory a block gets without opting in.
const DEFAULT_SMEM: u32 = 48 << 10;

/// Fails with [`CudaError::NoDriver`] unless the CUDA driver library can be loaded.
pub fn check_driver() -> Result<()> {
    // SAFETY: loading the driver library runs its initialisers, which have no preconditions on
    // our side; the handle is dropped at once (cudarc loads its own).
    match unsafe { libloading::Library::new(DRIVER_LIB) } {
        Ok(_) => Ok(()),
        Err(e) => Err(CudaError::NoDriver {
            lib: DRIVER_LIB,
            reason: match std::error::Error::source(&e) {
                Some(detail) => format!("{e}: {detail}"),
                None => e.to_string(),
            },
        }),
    }
}

/// One GPU: its context, one stream, and the modules and functions loaded so far.
pub(crate) struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Compute capability as `10 * major + minor`, e.g. 90.
    sm: u32,
    /// Streaming multiprocessors.
    sm_count: u32,
    modules: Mutex<HashMap<Module, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// While kernel timing is on: each launch's kernel and its start and end events.
    timings: Mutex<Option<Vec<(&'static str, CudaEvent, CudaEvent)>>>,
}

/// The GPU time of one kernel over the launches since timing began.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub launches: usize,
    pub total_ms: f64,
}

impl Gpu {
    /// Opens device `ordinal`; errors (never panics) without a driver or a device.
    pub fn open(ordinal: usize) -> Result<Self> {
        check_driver()?;
        let ctx =
            CudaContext::new(ordinal).map_err(|source| CudaError::Open { ordinal, source })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|source| CudaError::Open { ordinal, source })?;
        if major < 8 {
            return Err(CudaError::InvalidLaunch {
                op: "open",
                reason: format!("compute capability {major}.{minor}: the kernels need sm_80 or newer (bf16 mma.sync, cp.async)"),
            });
        }
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|source| CudaError::Open { ordinal, source })?;
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            sm: (major * 10 + minor) as u32,
            sm_count: sm_count.max(1) as u32,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            timings: Mutex::new(None),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Compute capability as `10 * major + minor`.
    pub fn sm(&self) -> u32 {
        self.sm
    }

    /// Streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The module compiled for this device (NVRTC or the PTX cache), loaded once.
    pub fn module(&self, module: Module) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&module) {
            return Ok(m.clone());
        }
        let ptx = nvrtc::ptx(module, self.sm)?;
        let loaded = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|source| CudaError::Driver {
                what: "load module",
                source,
            })?;
        modules.insert(module, loaded.clone());
        Ok(loaded)
    }

    /// Kernel `name` of `module`, loaded once.
    pub fn function(&self, module: Module, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(f.clone());
        }
        let f = self
            .module(module)?
            .load_function(name)
            .map_err(|source| CudaError::Driver {
                what: "load function",
                source,
            })?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, f.clone());
        Ok(f)
    }

    /// Enqueues `launch` on the device's stream.
    ///
    /// # Safety
    /// Every address in `launch.params` must point into a live device allocation of this
    /// context holding at least the elements the parameters' shapes and strides reach, of the
    /// dtype the kernel documents, and no other work may write the output ranges meanwhile.
    pub unsafe fn launch<P: DeviceRepr>(&self, launch: &Launch<P>) -> Result<()> {
        let f = self.function(launch.module, launch.kernel)?;
        if launch.smem > DEFAULT_SMEM {
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                launch.smem as i32,
            )
            .map_err(|source| CudaError::Driver {
                what: "set dynamic shared memory",
                source,
            })?;
        }
        let cfg = LaunchConfig {
            grid_dim: (launch.grid[0], launch.grid[1], launch.grid[2]),
            block_dim: (launch.block[0], launch.block[1], launch.block[2]),
            shared_mem_bytes: launch.smem,
        };
        let mut timings = self.timings.lock().unwrap_or_else(|e| e.into_inner());
        let start = match timings.as_ref() {
            Some(_) => Some(self.event()?),
            None => None,
        };
        let mut args = self.stream.launch_builder(&f);
        args.arg(&launch.params);
        // SAFETY: the caller guarantees the addresses in the parameter struct (see above); the
        // struct itself is a `#[repr(C)]` mirror of the kernel's by-value parameter, and the
        // grid and shared memory come from `ops`, which checked them against the shapes.
        unsafe { args.launch(cfg) }.map_err(|source| CudaError::Driver {
            what: launch.kernel,
            source,
        })?;
        if let (Some(list), Some(start)) = (timings.as_mut(), start) {
            list.push((launch.kernel, start, self.event()?));
        }
        Ok(())
    }

    /// A timing event recorded on the stream now (`None` flags would disable timing).
    fn event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|source| CudaError::Driver {
                what: "record a timing event",
                source,
            })
    }

    /// Starts timing every launch with a pair of CUDA events (until [`Self::kernel_times`]).
    pub fn start_kernel_timing(&self) {
        *self.timings.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Waits for the stream, stops timing and returns the GPU time per kernel since
    /// [`Self::start_kernel_timing`], longest total first (empty if timing was off).
    pub fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        let Some(list) = self
            .timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(Vec::new());
        };
        self.stream
            .synchronize()
            .map_err(|source| CudaError::Driver {
                what: "synchronize",
                source,
            })?;
        let mut by_kernel: Vec<KernelTime> = Vec::new();
        for (kernel, start, end) in &list {
            let ms = f64::from(start.elapsed_ms(end).map_err(|source| CudaError::Driver {
                what: "read a timing event",
                source,
            })?);
            match by_kernel.iter_mut().find(|t| t.kernel == *kernel) {
                Some(t) => {
                    t.launches += 1;
                    t.total_ms += ms;
                }
                None => by_kernel.push(KernelTime {
                    kernel,
                    launches: 1,
                    total_ms: ms,
                }),
            }
        }
        by_kernel.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        Ok(by_kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Here (no GPU, no driver) opening a device is an error with a clear message, not a panic.
    #[test]
    fn no_driver_is_a_clear_error() {
        // SAFETY: as in check_driver.
        let driver_present = unsafe { libloading::Library::new(DRIVER_LIB) }.is_ok();
        match Gpu::open(0) {
            Err(e @ CudaError::NoDriver { .. }) => {
                assert!(!driver_present);
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("no CUDA driver found ({DRIVER_LIB}): ")),
                    "{msg}"
                );
                println!("{msg}");
            }
            Err(e) => assert!(driver_present, "unexpected error without a driver: {e}"),
            Ok(dev) => assert!(driver_present && dev.sm() >= 80),
        }
    }
}
