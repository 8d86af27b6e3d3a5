package simulation

import (
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

// adviseHugePages asks the kernel, now and every interval until stop, to
// back this process's anonymous mappings of 2 MiB or more, the size of a
// huge page, with transparent huge pages (madvise MADV_HUGEPAGE): the Go
// heap, which grows in 64 MiB arenas, and the runtime's own structures
// beside it, as the kernel's "always" setting would.
//
// A 1,000-node run's heap is 3.4 GiB of small objects, memberlist's and
// serf's state for a million pairs of nodes, and the collector marks it by
// following pointers across all of it: with 4 KiB pages most of those
// steps miss the TLB as well as the cache, and the collector takes about a
// third of the run's CPU. Go's runtime asks for huge pages for some of its
// metadata only, so where the kernel's setting
// (/sys/kernel/mm/transparent_hugepage/enabled) is "madvise" the heap gets
// none. With them the 1,000-node partition's schedule took 9% less CPU
// for the same peak RSS (docs/scale.md). Under "always" this changes
// nothing, under "never" the kernel ignores it, and it never changes what
// the mesh does.
//
// The kernel gives a huge page to a fault only in a 2 MiB range with no
// page yet, and a run touches a new arena within milliseconds of mapping
// it, before any scan could advise it. So the heap is first grown by
// reserve bytes of address space with no memory behind it (reserveHeap),
// given back to the kernel, and advised while it is still empty: the run
// then allocates from it.
// reserve is the run's memory limit, which it does not outgrow; an arena
// mapped past it is advised within an interval, its pages already
// faulted in staying small. Where the kernel counts address space as
// memory (vm.overcommit_memory 2), nothing is reserved: there the
// reserve could fail a small run that would fit.
func adviseHugePages(reserve int64, interval time.Duration) (stop func()) {
	if reserve > 0 && !strictOvercommit() {
		debug.FreeOSMemory()
		reserveHeap(reserve)
		debug.FreeOSMemory()
	}
	advised := adviseMappings(nil)
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				advised = adviseMappings(advised)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-stopped
	}
}

// reserveHeap grows the heap by reserve bytes, and drops them for the next
// collection to free. The runtime zeroes, so writes, a large allocation
// made from free heap pages unless every one of them is back with the
// kernel (a page given back reads as zero): adviseHugePages gives the
// free heap back first, and the reserve is made in chunks, so that a page
// still held, or freed since by another goroutine, costs the one chunk
// that takes it. As one allocation, a single such page had the whole
// reserve written.
func reserveHeap(reserve int64) {
	chunks := make([][]byte, 0, reserve/reserveChunk+1)
	for left := reserve; left > 0; left -= reserveChunk {
		chunks = append(chunks, make([]byte, min(left, reserveChunk)))
	}
	runtime.KeepAlive(chunks)
}

// reserveChunk is the size of the allocations that make the reserve: two
// huge pages.
const reserveChunk = 4 << 20

// hugeMapping is the size from which an anonymous mapping is advised: a
// smaller one cannot hold a huge page.
const hugeMapping = 2 << 20

// adviseMappings advises each large anonymous mapping not in advised, and
// returns the mappings there are now. A mapping that grows or merges with
// a neighbour is a new one, advised again; the advice is idempotent.
func adviseMappings(advised map[mapping]bool) map[mapping]bool {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return advised
	}
	now := make(map[mapping]bool, len(advised))
	for _, m := range largeAnonymous(maps, hugeMapping) {
		now[m] = true
		if advised[m] {
			continue
		}
		// An error (EINVAL on a kernel without transparent huge pages, or a
		// mapping gone since the read) leaves the pages as they were.
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, m.start, m.end-m.start, syscall.MADV_HUGEPAGE)
	}
	return now
}

// strictOvercommit tells whether the kernel refuses address space beyond
// its commit limit (vm.overcommit_memory 2; proc(5)).
func strictOvercommit() bool {
	mode, err := os.ReadFile("/proc/sys/vm/overcommit_memory")
	return err == nil && strings.TrimSpace(string(mode)) == "2"
}
