/* Counts heap allocations of a process, to check that a training step allocates nothing large
 * once the first step has sized the arenas. Preload it and compare two runs that differ only in
 * their number of steps; the difference divided by the extra steps is the count per step:
 *   LD_PRELOAD=build/libfivefold_alloc_count.so ./build/fivefold bench --bench_steps 2 ...
 *   LD_PRELOAD=build/libfivefold_alloc_count.so ./build/fivefold bench --bench_steps 4 ...
 * It prints "alloc_count: small N large M" (large: 64 KiB and up) at exit, on stderr. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);

static atomic_long small_count, large_count;

static void count(size_t bytes) {
  if (bytes >= 65536)
    atomic_fetch_add(&large_count, 1);
  else
    atomic_fetch_add(&small_count, 1);
}

void* malloc(size_t n) {
  count(n);
  return __libc_malloc(n);
}
void* calloc(size_t n, size_t size) {
  count(n * size);
  return __libc_calloc(n, size);
}
void* realloc(void* p, size_t n) {
  count(n);
  return __libc_realloc(p, n);
}

__attribute__((destructor)) static void report(void) {
  fprintf(stderr, "alloc_count: small %ld large %ld\n", (long)atomic_load(&small_count), (long)atomic_load(&large_count));
}
