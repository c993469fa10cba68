//! The allocator the dispatcher runs on: jemalloc for the whole process
//! (librdkafka included: on Linux with glibc, jemalloc's symbols replace
//! malloc's; elsewhere the system allocator stays, as jemalloc would be
//! prefixed there). Under glibc's malloc a replica holding a
//! 1,000,000-delivery spilled backlog kept an RSS of about 250 MB for a
//! heap that never exceeded about 50 MB (freed memory stayed in per-thread
//! arenas), and jemalloc gives back what it no longer uses. See
//! docs/benchmarks.md.
//!
//! [`use_jemalloc!`](crate::use_jemalloc) installs it, with its options, in
//! the crate that invokes it: the `dispatcher` binary, the tests whose
//! memory figures must be the binary's, and the `fanout-vs-bare`
//! benchmark. That crate depends on `tikv-jemallocator` itself; the
//! library does not name it, so that linking the library alone (every
//! other test) leaves malloc alone.

/// jemalloc's start-up options (`MALLOC_CONF` in the environment still
/// adds to them). Freed pages go back to the system after 20 ms rather
/// than jemalloc's ten seconds: spilling a burst churns through tens of
/// megabytes a second, and what ten seconds of it held back made the RSS
/// peak of `loadtest run slow-mix --backlog 1000000` about 250 MB (one
/// second: 186 MB). Not at once either: returning every freed run
/// immediately (`dirty_decay_ms:0`) cost about 7 % of the `baseline`
/// drain's CPU in `madvise` calls and page faults on re-use; 20 ms saved
/// as much of it as 100 ms did, and keeps the pages a burst frees for the
/// shortest time. See docs/benchmarks.md.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
impl MallocConf {
    pub const DISPATCHER: MallocConf = MallocConf(c"dirty_decay_ms:20,muzzy_decay_ms:0".as_ptr());
}

// SAFETY: it points to a static, immutable, NUL-terminated byte string,
// which jemalloc reads once, at its initialisation.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
unsafe impl Sync for MallocConf {}

/// Install jemalloc with the dispatcher's options as this crate's global
/// allocator (Linux with glibc; elsewhere nothing changes).
#[macro_export]
macro_rules! use_jemalloc {
    () => {
        #[cfg(all(target_os = "linux", not(target_env = "musl")))]
        #[global_allocator]
        static ALLOCATOR: ::tikv_jemallocator::Jemalloc = ::tikv_jemallocator::Jemalloc;

        #[cfg(all(target_os = "linux", not(target_env = "musl")))]
        #[export_name = "malloc_conf"]
        static MALLOC_CONF: $crate::alloc::MallocConf = $crate::alloc::MallocConf::DISPATCHER;
    };
}
