//! A small thread pool for the forward pass: persistent workers that spin briefly between
//! jobs (a decode step runs hundreds of parallel sections of tens of microseconds each, too
//! short to wake sleeping threads every time) and sleep when idle.
//!
//! Work is split by index ranges (output rows): which thread computes a row never changes the
//! row's result, so outputs do not depend on the thread count.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers wait for it to change.
    generation: AtomicUsize,
    /// The current job. Written by `run` before bumping `generation`, read by workers after
    /// seeing the bump, and not touched again until every worker has finished with it.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written while no worker reads it (see the protocol above); the job
// itself is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A pool of `n_threads - 1` workers; the calling thread is thread 0 of every job.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// `run` is not reentrant: one job at a time.
    busy: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

impl ThreadPool {
    /// A pool running jobs on `n_threads` threads (at least 1).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("bitnet-worker-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("cannot spawn a worker thread")
            })
            .collect();
        ThreadPool {
            n_threads,
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Physical cores as far as the standard library can tell (logical CPUs available to this
    /// process).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(thread_index)` on every thread of the pool and returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: no worker reads `job` now (all finished the previous job); the pointer's
        // lifetime is erased, but this function does not return before every worker is done
        // with it.
        unsafe {
            let f: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *s.job.get() = Some(f);
        }
        s.pending.store(self.n_threads - 1, Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every worker is done with the job.
        unsafe {
            *s.job.get() = None;
        }
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a bitnet worker thread panicked");
        }
    }

    /// Thread `thread`'s share of `0..n`: one contiguous range per thread, in multiples of
    /// `granule` except the last (possibly empty).
    pub fn share(&self, n: usize, granule: usize, thread: usize) -> Range<usize> {
        let granule = granule.max(1);
        let units = n.div_ceil(granule);
        let start = (units * thread / self.n_threads * granule).min(n);
        let end = (units * (thread + 1) / self.n_threads * granule).min(n);
        start..end
    }

    /// Splits `0..n` as [`ThreadPool::share`] does and runs `f(range)` for each non-empty one.
    pub fn for_ranges(&self, n: usize, granule: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        self.run(&|i| {
            let range = self.share(n, granule, i);
            if !range.is_empty() {
                f(range);
            }
        });
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        // Wait for a new generation: spin first, then sleep.
        let spin_until = Instant::now() + SPIN;
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            // Reading the clock is not free: look at it every 256 spins only.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || Instant::now() < spin_until {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            if s.generation.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
                let _ = s
                    .wake
                    .wait_timeout(guard, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: set before the generation bump we observed, cleared only after `pending`
        // reaches zero, which needs this worker's decrement below.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            // SAFETY: the job outlives this call (see `run`).
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice that the threads of one job fill at disjoint indices.
pub struct SharedOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through the unsafe methods whose contract forbids overlapping use.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> SharedOut<'a, T> {
        SharedOut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// The elements in `range`.
    ///
    /// # Safety
    /// No other thread may access any element of `range` while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_once() {
        for threads in 1..5 {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 5, 64, 1000, 1003] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..3 {
                    pool.for_ranges(n, 4, &|r| {
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 3));
            }
        }
    }

    #[test]
    fn every_thread_runs_and_panics_propagate() {
        let pool = ThreadPool::new(3);
        let seen = AtomicUsize::new(0);
        pool.run(&|i| {
            seen.fetch_or(1 << i, Ordering::Relaxed);
        });
        assert_eq!(seen.load(Ordering::Relaxed), 0b111);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 2 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // Still usable afterwards.
        pool.run(&|_| {});
    }
}

thread_local! {
    static SCRATCH_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_I32: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable f32 buffer of `len` elements (contents unspecified:
/// `f` must write before it reads). Hot loops use it instead of allocating, which for large
/// buffers would map and fault in fresh pages on every call.
pub fn with_scratch_f32<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH_F32.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Already in use further up this thread's stack: fall back to a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// The i32 twin of [`with_scratch_f32`].
pub fn with_scratch_i32<R>(len: usize, f: impl FnOnce(&mut [i32]) -> R) -> R {
    SCRATCH_I32.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0; len]),
    })
}
