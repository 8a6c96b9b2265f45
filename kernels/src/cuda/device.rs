//! Where the kernels run: a GPU (`gpu.rs`), or (feature `emulate`) the CPU emulator of the same
//! CUDA sources. Buffers, uploads, downloads, copies and
//! launches look the same on both; an address handed to a kernel is a device pointer on a GPU
//! and a host pointer under the emulator.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::sync::Mutex;

use super::gpu::{Gpu, KernelTime};
use super::launch::Launch;
use super::{CudaError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};

/// Element types of device buffers: bf16 bits (`u16`), `f32`, `i32`, `u32`, `f64` (workspaces).
pub trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + 'static {}
impl Elem for u16 {}
impl Elem for f32 {}
impl Elem for i32 {}
impl Elem for u32 {}
impl Elem for f64 {}

enum Kind {
    Gpu(Gpu),
    #[cfg(feature = "emulate")]
    Emulated,
}

/// One device: a GPU, or the emulator.
pub struct Device {
    kind: Kind,
    /// Split-K partial sums (`Device::gemm`), grown to the largest GEMM that needed them.
    split_scratch: Mutex<Option<Buffer<f32>>>,
}

/// Resident blocks per SM of the GEMM kernels (60 KiB shared, 256 threads at 128 registers).
const GEMM_BLOCKS_PER_SM: usize = 2;
/// The SMs the emulator stands for: an H100 SXM's, so that tests take its split-K decisions.
#[cfg(feature = "emulate")]
const EMULATED_SMS: usize = 132;

#[cfg_attr(not(feature = "emulate"), allow(dead_code))]
enum Mem<T> {
    Gpu(CudaSlice<T>),
    /// Host memory the emulated kernels write through raw addresses, hence the cells.
    Host {
        _cells: Vec<UnsafeCell<T>>,
    },
}

/// `len` elements of `T` on a device, zeroed at allocation.
pub struct Buffer<T: Elem> {
    mem: Mem<T>,
    addr: u64,
    len: usize,
}

/// A range of a buffer as a kernel sees it: an address and the elements from there to the end
/// of the buffer (what every launch wrapper checks its shapes against).
#[derive(Debug)]
pub struct Ptr<T> {
    pub addr: u64,
    pub len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Ptr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<T> {}

impl<T: Elem> Buffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer.
    pub fn ptr(&self) -> Ptr<T> {
        Ptr {
            addr: self.addr,
            len: self.len,
            _t: PhantomData,
        }
    }

    /// From element `offset` on.
    pub fn at(&self, offset: usize) -> Result<Ptr<T>> {
        self.ptr().at(offset)
    }
}

impl<T> Ptr<T> {
    /// From element `offset` on.
    pub fn at(self, offset: usize) -> Result<Ptr<T>> {
        if offset > self.len {
            return Err(CudaError::InvalidLaunch {
                op: "buffer",
                reason: format!("offset {offset} past the end ({} elements)", self.len),
            }
            .into());
        }
        Ok(Ptr {
            addr: self.addr + (offset * std::mem::size_of::<T>()) as u64,
            len: self.len - offset,
            _t: PhantomData,
        })
    }

    /// Fails unless `n` elements from here lie inside the buffer.
    pub fn need(self, n: usize, op: &'static str, what: &str) -> Result<u64> {
        if n > self.len {
            return Err(CudaError::InvalidLaunch {
                op,
                reason: format!("{what}: {n} elements needed, {} in the buffer", self.len),
            }
            .into());
        }
        Ok(self.addr)
    }
}

fn driver(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |source| CudaError::Driver { what, source }
}

impl Device {
    /// GPU `ordinal`: the kernels' error (never a panic) without a driver or a device.
    pub fn gpu(ordinal: usize) -> Result<Self> {
        Ok(Device {
            kind: Kind::Gpu(Gpu::open(ordinal)?),
            split_scratch: Mutex::new(None),
        })
    }

    /// The CPU emulator of the CUDA sources (slow: for tests).
    #[cfg(feature = "emulate")]
    pub fn emulated() -> Self {
        Device {
            kind: Kind::Emulated,
            split_scratch: Mutex::new(None),
        }
    }

    /// The GPU that owns a GPU buffer (buffers never move between devices).
    fn gpu_of_buffer(&self) -> &Gpu {
        match &self.kind {
            Kind::Gpu(d) => d,
            #[cfg(feature = "emulate")]
            Kind::Emulated => unreachable!("a GPU buffer handed to the emulator"),
        }
    }

    /// "emulated" or "CUDA sm_XX".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Gpu(d) => format!("CUDA sm_{}", d.sm()),
            #[cfg(feature = "emulate")]
            Kind::Emulated => "CUDA emulator (CPU)".into(),
        }
    }

    /// Resident GEMM blocks: 2 per SM (the emulator: an H100's 132 SMs).
    pub fn gemm_slots(&self) -> usize {
        let sms = match &self.kind {
            Kind::Gpu(d) => d.sm_count() as usize,
            #[cfg(feature = "emulate")]
            Kind::Emulated => EMULATED_SMS,
        };
        sms * GEMM_BLOCKS_PER_SM
    }

    /// At least `n` f32 elements of split-K scratch, valid until the next call (one GEMM's
    /// launches, ordered on the stream, use it at a time). Grows on first need, then stays.
    pub(crate) fn split_scratch(&self, n: usize) -> Result<Ptr<f32>> {
        let mut slot = self.split_scratch.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|b| b.len() < n) {
            *slot = Some(self.zeros(n)?);
        }
        match slot.as_ref() {
            Some(b) => Ok(b.ptr()),
            None => unreachable!("the scratch was just allocated"),
        }
    }

    /// Starts timing every kernel launch with CUDA events (no-op under the emulator).
    pub fn start_kernel_timing(&self) {
        match &self.kind {
            Kind::Gpu(d) => d.start_kernel_timing(),
            #[cfg(feature = "emulate")]
            Kind::Emulated => {}
        }
    }

    /// The GPU time per kernel since [`Self::start_kernel_timing`], longest total first; empty
    /// under the emulator or when timing was off.
    pub fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        match &self.kind {
            Kind::Gpu(d) => Ok(d.kernel_times()?),
            #[cfg(feature = "emulate")]
            Kind::Emulated => Ok(Vec::new()),
        }
    }

    /// A zeroed buffer of `len` elements.
    pub fn zeros<T: Elem>(&self, len: usize) -> Result<Buffer<T>> {
        match &self.kind {
            Kind::Gpu(d) => {
                let slice = d
                    .stream()
                    .alloc_zeros::<T>(len.max(1))
                    .map_err(driver("alloc"))?;
                let addr = slice.device_ptr(d.stream()).0;
                Ok(Buffer {
                    mem: Mem::Gpu(slice),
                    addr,
                    len,
                })
            }
            #[cfg(feature = "emulate")]
            Kind::Emulated => {
                // One spare element keeps the address valid (and 16-byte aligned) for len 0.
                let cells: Vec<UnsafeCell<T>> = (0..len.max(1) + 16 / std::mem::size_of::<T>())
                    .map(|_| UnsafeCell::new(T::default()))
                    .collect();
                let base = cells.as_ptr() as u64;
                // Kernels use 16-byte loads: align the start.
                let addr = base.next_multiple_of(16);
                Ok(Buffer {
                    mem: Mem::Host { _cells: cells },
                    addr,
                    len,
                })
            }
        }
    }

    /// A buffer holding `data`.
    pub fn upload<T: Elem>(&self, data: &[T]) -> Result<Buffer<T>> {
        let mut b = self.zeros(data.len())?;
        self.write(&mut b, 0, data)?;
        Ok(b)
    }

    /// Copies `data` to elements `offset..` of `buf`.
    pub fn write<T: Elem>(&self, buf: &mut Buffer<T>, offset: usize, data: &[T]) -> Result<()> {
        buf.at(offset)?.need(data.len(), "write", "host data")?;
        match &mut buf.mem {
            Mem::Gpu(slice) => {
                let d = self.gpu_of_buffer();
                let mut view = slice.slice_mut(offset..offset + data.len());
                d.stream()
                    .memcpy_htod(data, &mut view)
                    .map_err(driver("copy to device"))
            }
            Mem::Host { .. } => {
                let dst = (buf.addr as *mut T).wrapping_add(offset);
                // SAFETY: `need` checked that `offset + data.len()` elements lie inside the
                // buffer's cells (whose start `addr` is); no kernel runs meanwhile (the emulator
                // is synchronous) and `&mut buf` excludes other host access.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
                Ok(())
            }
        }
    }

    /// The buffer's elements `offset..offset + n` (waits for the device).
    pub fn read<T: Elem>(&self, buf: &Buffer<T>, offset: usize, n: usize) -> Result<Vec<T>> {
        buf.at(offset)?.need(n, "read", "host copy")?;
        match &buf.mem {
            Mem::Gpu(slice) => {
                let d = self.gpu_of_buffer();
                d.stream()
                    .clone_dtoh(&slice.slice(offset..offset + n))
                    .map_err(driver("copy to host"))
            }
            Mem::Host { .. } => {
                let src = (buf.addr as *const T).wrapping_add(offset);
                let mut out = vec![T::default(); n];
                // SAFETY: `need` checked the range; the emulated kernels have finished (they run
                // synchronously), so nothing writes the cells during the copy.
                unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), n) };
                Ok(out)
            }
        }
    }

    /// Copies `n` elements between two ranges of device buffers (which must not overlap).
    pub fn copy<T: Elem>(&self, src: Ptr<T>, dst: Ptr<T>, n: usize) -> Result<()> {
        let (s, t) = (
            src.need(n, "copy", "source")?,
            dst.need(n, "copy", "destination")?,
        );
        let bytes = n * std::mem::size_of::<T>();
        if s.max(t) < s.min(t) + bytes as u64 {
            return Err(CudaError::InvalidLaunch {
                op: "copy",
                reason: "overlapping ranges".into(),
            }
            .into());
        }
        match &self.kind {
            Kind::Gpu(d) => {
                // SAFETY: both ranges lie inside live allocations of this context (checked by
                // `need`), do not overlap, and the copy is ordered on the device's one stream.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(t, s, bytes, d.stream().cu_stream())
                }
                .map_err(driver("copy on device"))
            }
            #[cfg(feature = "emulate")]
            Kind::Emulated => {
                // SAFETY: as above, in host memory; nothing else runs meanwhile.
                unsafe { std::ptr::copy_nonoverlapping(s as *const u8, t as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// Runs (GPU: enqueues) a planned kernel.
    ///
    /// # Safety
    /// Every address in `launch.params` must come from a live [`Buffer`] of this device and
    /// the elements the parameters' shapes and strides reach must lie inside it.
    pub unsafe fn launch<P: DeviceRepr>(&self, launch: &Launch<P>) -> Result<()> {
        match &self.kind {
            // SAFETY: the caller's guarantee is `Gpu::launch`'s.
            Kind::Gpu(d) => Ok(unsafe { d.launch(launch) }?),
            #[cfg(feature = "emulate")]
            Kind::Emulated => {
                // SAFETY: as above, host addresses; the emulator runs synchronously.
                unsafe { crate::emu::run(launch) };
                Ok(())
            }
        }
    }

    /// Waits for the queued work (a no-op under the emulator).
    pub fn sync(&self) -> Result<()> {
        match &self.kind {
            Kind::Gpu(d) => d.stream().synchronize().map_err(driver("synchronize")),
            #[cfg(feature = "emulate")]
            Kind::Emulated => Ok(()),
        }
    }
}

/// f32 -> bf16 bits, round to nearest even (as the device's `cvt.rn.bf16.f32`).
pub fn to_bf16(xs: &[f32]) -> Vec<u16> {
    xs.iter().map(|&x| crate::cpu::bf16::bits(x)).collect()
}
