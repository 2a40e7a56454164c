//! A small thread pool for the forward pass: persistent workers that spin briefly between
//! jobs (a decode step runs about a hundred parallel sections of tens to hundreds of
//! microseconds each, too short to wake sleeping threads every time) and sleep when idle.
//!
//! A job is a number of chunks (ranges of output rows, attention heads, tokens) that the
//! threads take from a shared counter, so a thread that the OS deschedules (another program
//! on its core) holds up at most the one chunk it has taken, and a worker that has not joined
//! a job when the caller has finished every chunk is not waited for at all. Which thread
//! computes a chunk never changes its result, so outputs do not depend on the thread count.
//!
//! When the machine is so busy that waiting for descheduled workers costs more than the
//! caller would spend doing their chunks itself, the pool notices (it compares each window of
//! jobs with an estimate of the single-threaded time) and runs jobs on the calling thread
//! alone for a while, backing off exponentially before trying the workers again: with one
//! core taken by another program, generation is never slower than with one thread.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest an idle worker spins before it sleeps. Each worker adapts its own spin (see
/// [`Spin`]): it grows when jobs come close together and halves when the worker had to sleep
/// anyway, so between the back-to-back jobs of a large model's decode step workers stay
/// awake, while with long serial gaps (a small model) they stop burning a core that another
/// thread or program needs.
const SPIN: Duration = Duration::from_micros(200);
/// Below this, a worker does not spin at all.
const MIN_SPIN: Duration = Duration::from_micros(4);
/// Chunks per thread that [`ThreadPool::for_chunks`] aims for: enough that a descheduled
/// thread's one chunk is a small part of a job, few enough that taking one costs nothing.
const CHUNKS_PER_THREAD: usize = 8;
/// The least work worth a chunk, in multiply-adds (about 10 µs): handing smaller pieces to
/// other cores costs more in cache-line transfers and wake-ups than it saves, so small
/// matrices (a 7M-parameter model's) run on the calling thread.
const MIN_CHUNK_WORK: usize = 1 << 18;

type Job = dyn Fn(usize) + Sync;

/// `state` packs the job generation (high 32 bits), a closed flag and the number of workers
/// inside the job: one atomic word, so a worker joins a job only if it is still open and the
/// caller closes it only when nobody is inside.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

fn generation(state: u64) -> u64 {
    state >> 32
}

/// An atomic on a cache line of its own (the chunk counter is hammered by every thread).
#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    state: Padded<AtomicU64>,
    next_chunk: Padded<AtomicUsize>,
    /// The current job and its chunk count. Written by `run_chunks` before it opens the job,
    /// read by workers that joined it, and not touched again until the job is closed.
    job: UnsafeCell<Option<(*const Job, usize)>>,
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`; the caller notifies only when some are.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written while no worker can read it (see the protocol above); the job
// itself is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// Whether recent jobs gained from the workers, and if not, how long to do without them.
struct Adaptive {
    /// Sums over the current window of parallel jobs: wall time, and the caller's estimate of
    /// the time it would have taken alone (its own chunks' time scaled to all chunks).
    wall: Duration,
    alone: Duration,
    jobs: u32,
    /// Jobs in the current window held up by a descheduled worker.
    stalls: u32,
    /// Until when jobs run on the calling thread only, and the next such period's length.
    solo_until: Option<Instant>,
    backoff: Duration,
}

const WINDOW: Duration = Duration::from_millis(20);
/// How much longer than its chunks' own cost one job may take before the pool concludes a
/// worker was descheduled (an OS time slice is milliseconds; chunks are microseconds).
const STALL: Duration = Duration::from_millis(1);
/// Stalled jobs within one window that show another program on the workers' cores.
const STALLS_FOR_SOLO: u32 = 2;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Adaptive {
    fn new() -> Adaptive {
        Adaptive {
            wall: Duration::ZERO,
            alone: Duration::ZERO,
            jobs: 0,
            stalls: 0,
            solo_until: None,
            backoff: MIN_BACKOFF,
        }
    }

    fn solo(&mut self, now: Instant) -> bool {
        match self.solo_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.solo_until = None;
                false
            }
            None => false,
        }
    }

    /// Records one parallel job. A second job in one window held up far beyond what its
    /// chunks cost (a worker descheduled holding one) switches to solo mode at once;
    /// otherwise, at the end of a window, if the workers made things slower (by more than 5 %,
    /// so noise does not flip it). One stall alone is not contention: a virtual CPU preempted
    /// by its host for a millisecond or two does that a few times a second on an idle VM, and
    /// answering each with 50 ms on one thread cost 2-thread decoding of the 2B-4T shape ~7 %.
    fn record(&mut self, now: Instant, wall: Duration, alone: Duration) {
        if wall > alone + STALL {
            self.stalls += 1;
            if self.stalls >= STALLS_FOR_SOLO {
                self.go_solo(now, wall, alone);
                return;
            }
        }
        self.wall += wall;
        self.alone += alone;
        self.jobs += 1;
        if self.wall < WINDOW {
            return;
        }
        if self.wall.as_secs_f64() > 1.05 * self.alone.as_secs_f64() {
            self.go_solo(now, self.wall, self.alone);
        } else {
            self.backoff = (self.backoff / 2).max(MIN_BACKOFF);
            self.reset_window();
        }
    }

    fn go_solo(&mut self, now: Instant, wall: Duration, alone: Duration) {
        self.solo_until = Some(now + self.backoff);
        log::debug!(
            "thread pool: workers slowed jobs down ({:.2} ms against {:.2} ms alone); running on one thread for {} ms",
            wall.as_secs_f64() * 1e3,
            alone.as_secs_f64() * 1e3,
            self.backoff.as_millis()
        );
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.reset_window();
    }

    fn reset_window(&mut self) {
        self.wall = Duration::ZERO;
        self.alone = Duration::ZERO;
        self.jobs = 0;
        self.stalls = 0;
    }
}

/// A pool of `n_threads - 1` workers; the calling thread takes part in every job.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// `run_chunks` is not reentrant: one job at a time (the lock also guards the statistics).
    busy: Mutex<Adaptive>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

impl ThreadPool {
    /// A pool running jobs on `n_threads` threads (at least 1). More threads than this
    /// process may run at once only make threads wait for each other: the count is capped at
    /// `ThreadPool::max_threads`, with a warning.
    pub fn new(n_threads: usize) -> ThreadPool {
        let max = ThreadPool::max_threads();
        if n_threads > max {
            log::warn!(
                "{n_threads} threads requested but this machine runs {max} at once: using {max}"
            );
        }
        let n_threads = n_threads.clamp(1, max);
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(CLOSED)),
            next_chunk: Padded(AtomicUsize::new(0)),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("bitnet-worker-{index}"))
                    .spawn(move || worker(&shared))
                    .expect("cannot spawn a worker thread")
            })
            .collect();
        ThreadPool {
            n_threads,
            shared,
            workers,
            busy: Mutex::new(Adaptive::new()),
        }
    }

    /// The default thread count: the physical cores this process may use (a second hardware
    /// thread of a core shares its load and SIMD units, which these kernels already fill).
    pub fn default_threads() -> usize {
        num_cpus::get_physical().clamp(1, ThreadPool::max_threads())
    }

    /// Logical CPUs available to this process (its affinity mask and cgroup quota).
    pub(crate) fn max_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub(crate) fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i)` for every chunk `i` in `0..n_chunks`, each exactly once, on whichever
    /// threads get to it, and returns when all are done.
    pub(crate) fn run_chunks(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_chunks == 0 {
            return;
        }
        let mut adaptive = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        if self.n_threads == 1 || n_chunks == 1 || adaptive.solo(start) {
            (0..n_chunks).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: the previous job is closed, so no worker reads `job`; the pointer's lifetime
        // is erased, but this function does not return before the job is closed again, after
        // which no worker can touch it.
        unsafe {
            let f: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *s.job.get() = Some((f, n_chunks));
        }
        s.next_chunk.0.store(0, Ordering::Relaxed);
        let g = generation(s.state.0.load(Ordering::Relaxed)) + 1;
        // Opens the job (generation g, nobody inside). SeqCst pairs with the sleepers count:
        // either a worker going to sleep sees the new generation, or we see it asleep.
        s.state.0.store(g << 32, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }

        let mut mine = 0usize;
        let mut own_time = Duration::ZERO;
        let result = catch_unwind(AssertUnwindSafe(|| loop {
            let i = s.next_chunk.0.fetch_add(1, Ordering::Relaxed);
            if i >= n_chunks {
                break;
            }
            let t = Instant::now();
            f(i);
            own_time += t.elapsed();
            mine += 1;
        }));

        // Close the job once no worker is inside; a worker that has not joined yet never will.
        let mut spins = 0u32;
        loop {
            let state = s.state.0.load(Ordering::Acquire);
            if state & ACTIVE == 0 {
                if s.state
                    .0
                    .compare_exchange_weak(
                        state,
                        state | CLOSED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // A worker holding a chunk was descheduled: give its core back to it in case it
                // shares ours.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: the job is closed and empty: no worker can read it any more.
        unsafe {
            *s.job.get() = None;
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a bitnet worker thread panicked");
        }
        let now = Instant::now();
        if mine > 0 {
            let alone = own_time.mul_f64(n_chunks as f64 / mine as f64);
            adaptive.record(now, now - start, alone);
        }
    }

    /// Splits `0..n` into chunks of whole `granule`s (about [`CHUNKS_PER_THREAD`] per thread,
    /// none smaller than [`MIN_CHUNK_WORK`] at `item_work` multiply-adds per item) and runs
    /// `f(range)` for each, as [`ThreadPool::run_chunks`] does.
    pub(crate) fn for_chunks(
        &self,
        n: usize,
        granule: usize,
        item_work: usize,
        f: &(dyn Fn(Range<usize>) + Sync),
    ) {
        let len = self.chunk_len(n, granule, item_work);
        self.run_chunks(n.div_ceil(len), &|i| f(i * len..((i + 1) * len).min(n)));
    }

    /// The chunk length [`ThreadPool::for_chunks`] uses: a multiple of `granule`, at least
    /// one granule.
    pub(crate) fn chunk_len(&self, n: usize, granule: usize, item_work: usize) -> usize {
        let granule = granule.max(1);
        let units = n.div_ceil(granule);
        let unit_work = (granule * item_work).max(1);
        let worth = (units * unit_work / MIN_CHUNK_WORK).max(1);
        let chunks = (self.n_threads * CHUNKS_PER_THREAD)
            .min(worth)
            .min(units.max(1));
        units.div_ceil(chunks.max(1)).max(1) * granule
    }
}

/// How long an idle worker spins before it sleeps.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spin(Duration);

impl Spin {
    /// Whether to spin at all.
    fn spins(self) -> bool {
        self.0 >= MIN_SPIN
    }

    /// The worker spun for its whole spin and found nothing: spin less next time.
    fn slept(&mut self) {
        self.0 /= 2;
    }

    /// The worker joined a job that came `gap` after it went idle. Within [`SPIN`] of it,
    /// spinning pays (or would have, had the worker not gone to sleep): spin long enough to
    /// catch such a gap next time. Judged by the gap, not by whether the worker was still
    /// spinning: a worker whose spin had fallen under [`MIN_SPIN`] (the long gaps of a model's
    /// loading halve it to nothing) never spins, so it would never see a job come while it
    /// did, and would sleep and be woken by a system call around every job of every later
    /// decode step (one run on the 2B-4T shape: 97 thousand `futex` calls, 10 % slower).
    fn joined(&mut self, gap: Duration) {
        if gap <= SPIN {
            self.0 = (self.0 * 2).max(gap * 2).clamp(MIN_SPIN, SPIN);
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = generation(s.state.0.load(Ordering::Acquire));
    let mut spin = Spin(SPIN);
    let mut idle_since = Instant::now();
    let mut spin_until = idle_since + spin.0;
    let mut spins = 0u32;
    loop {
        let state = s.state.0.load(Ordering::Acquire);
        if generation(state) == seen || state & CLOSED != 0 {
            // Nothing to join: spin for a while, then sleep.
            seen = generation(state);
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            // Reading the clock is not free: look at it every 256 spins only.
            spins = spins.wrapping_add(1);
            if spin.spins() && (!spins.is_multiple_of(256) || Instant::now() < spin_until) {
                std::hint::spin_loop();
                continue;
            }
            spin.slept();
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            {
                let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                let now = s.state.0.load(Ordering::SeqCst);
                if (generation(now) == seen || now & CLOSED != 0) && !s.stop.load(Ordering::Acquire)
                {
                    let _ = s
                        .wake
                        .wait_timeout(guard, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            spin_until = Instant::now() + spin.0;
            continue;
        }
        // An open job we have not joined: join it unless it closes (or another worker joins)
        // first, in which case look again.
        if s.state
            .0
            .compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        seen = generation(state);
        spin.joined(idle_since.elapsed());
        // SAFETY: set before the job was opened, cleared only after it is closed, which
        // cannot happen while this worker is counted inside.
        if let Some((job, n_chunks)) = unsafe { *s.job.get() } {
            // SAFETY: the job outlives this use (see `run_chunks`).
            let job = unsafe { &*job };
            loop {
                let i = s.next_chunk.0.fetch_add(1, Ordering::Relaxed);
                if i >= n_chunks {
                    break;
                }
                if catch_unwind(AssertUnwindSafe(|| job(i))).is_err() {
                    s.panicked.store(true, Ordering::Release);
                }
            }
        }
        s.state.0.fetch_sub(1, Ordering::AcqRel);
        idle_since = Instant::now();
        spin_until = idle_since + spin.0;
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
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
pub(crate) struct SharedOut<'a, T> {
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
    pub(crate) unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `n` threads even on a machine with fewer CPUs (the cap would hide bugs).
    fn pool(n: usize) -> ThreadPool {
        let mut p = ThreadPool::new(1);
        let shared = Arc::clone(&p.shared);
        p.workers = (1..n)
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || worker(&shared))
            })
            .collect();
        p.n_threads = n;
        p
    }

    #[test]
    fn chunks_cover_everything_once() {
        for threads in 1..6 {
            let pool = pool(threads);
            for n in [0, 1, 5, 64, 1000, 1003] {
                for granule in [1, 4, 16] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    for _ in 0..3 {
                        pool.for_chunks(n, granule, MIN_CHUNK_WORK, &|r| {
                            assert!(r.start.is_multiple_of(granule));
                            for i in r {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 3));
                }
            }
        }
    }

    #[test]
    fn spin_comes_back_after_long_gaps() {
        let mut spin = Spin(SPIN);
        // A model's loading: parallel sections far apart; the worker sleeps through each gap.
        for _ in 0..40 {
            spin.slept();
            spin.joined(Duration::from_millis(3));
        }
        assert!(!spin.spins(), "{spin:?}");
        // Decoding: jobs a few microseconds apart. One is enough to spin again, and a gap the
        // spin would have missed lengthens it past that gap.
        spin.joined(Duration::from_micros(3));
        assert!(spin.spins(), "{spin:?}");
        spin.slept();
        spin.joined(Duration::from_micros(30));
        assert!(spin.0 >= Duration::from_micros(60), "{spin:?}");
        for _ in 0..10 {
            spin.joined(Duration::from_micros(1));
        }
        assert_eq!(spin, Spin(SPIN));
        // A gap longer than any spin (an idle server) leaves it as the sleeps made it.
        spin.slept();
        spin.joined(Duration::from_millis(50));
        assert_eq!(spin, Spin(SPIN / 2));
    }

    #[test]
    fn small_work_is_one_chunk() {
        let pool = pool(4);
        assert_eq!(pool.chunk_len(256, 16, 256), 256);
        assert_eq!(pool.chunk_len(3840, 16, 2560), 128);
        assert_eq!(pool.chunk_len(100, 1, 0), 100);
    }

    #[test]
    fn many_short_jobs_with_more_threads_than_cpus() {
        // Workers joining late, or not at all, must never lose or repeat a chunk.
        let pool = pool(6);
        let total = AtomicUsize::new(0);
        for job in 0..20_000usize {
            let n = job % 7 + 1;
            pool.run_chunks(n, &|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
        }
        let expected: usize = (0..20_000usize)
            .map(|j| (1..=j % 7 + 1).sum::<usize>())
            .sum();
        assert_eq!(total.load(Ordering::Relaxed), expected);
    }

    #[test]
    fn panics_propagate_and_the_pool_survives() {
        let pool = pool(3);
        for bad in 0..8 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run_chunks(8, &|i| {
                    if i == bad {
                        panic!("boom");
                    }
                })
            }));
            assert!(r.is_err());
        }
        let count = AtomicUsize::new(0);
        pool.run_chunks(100, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn adaptive_goes_solo_only_when_workers_cost_time() {
        let mut a = Adaptive::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Workers helping: 2 ms a job against 3.6 ms alone.
        for _ in 0..20 {
            a.record(t0, ms(2), ms(3) + ms(3) / 5);
        }
        assert!(!a.solo(t0));
        // Workers descheduled: one window (20 ms) of jobs 5 % slower than alone.
        for _ in 0..5 {
            a.record(t0, ms(4) + ms(4) / 5, ms(4));
        }
        assert!(a.solo(t0 + ms(1)));
        assert!(!a.solo(t0 + MIN_BACKOFF + ms(1)));
        // One job stalled by a descheduled worker, then helping jobs: not contention.
        let t1 = t0 + MIN_BACKOFF + ms(1);
        a.record(t1, ms(5), ms(3));
        assert!(!a.solo(t1));
        for _ in 0..20 {
            a.record(t1, ms(2), ms(3) + ms(3) / 5);
        }
        assert!(!a.solo(t1));
        a.record(t1, ms(5), ms(3));
        assert!(!a.solo(t1));
        // A second stall in the same window: solo at once (for the shortest back-off: the
        // window of helping jobs before halved it again).
        a.record(t1, ms(5), ms(3));
        assert!(a.solo(t1 + ms(1)));
        assert!(!a.solo(t1 + MIN_BACKOFF + ms(1)));
        // Two more stalls in a row: solo for twice as long.
        let t2 = t1 + MIN_BACKOFF + ms(2);
        a.record(t2, ms(5), ms(3));
        assert!(!a.solo(t2));
        a.record(t2, ms(5), ms(3));
        assert!(a.solo(t2 + MIN_BACKOFF + ms(1)));
        assert!(!a.solo(t2 + 2 * MIN_BACKOFF + ms(1)));
    }
}

thread_local! {
    static SCRATCH_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_I32: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable f32 buffer of `len` elements (contents unspecified:
/// `f` must write before it reads). Hot loops use it instead of allocating, which for large
/// buffers would map and fault in fresh pages on every call.
pub(crate) fn with_scratch_f32<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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
pub(crate) fn with_scratch_i32<R>(len: usize, f: impl FnOnce(&mut [i32]) -> R) -> R {
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
