package simulation

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// smapsFlags returns the VmFlags of the mapping that holds addr, from
// /proc/self/smaps.
func smapsFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasSuffix(f[0], ":") {
			if m := largeAnonymous([]byte(line), 0); len(m) == 1 {
				in = m[0].start <= addr && addr < m[0].end
			} else {
				in = false
			}
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.Fields(strings.TrimPrefix(line, "VmFlags:"))
		}
	}
	t.Fatalf("no anonymous mapping holds %#x in /proc/self/smaps", addr)
	return nil
}

// peakMiB is the process's peak resident memory since resetPeakRSS.
func peakMiB(t *testing.T) float64 {
	t.Helper()
	p := peakRSS()
	if p == nil {
		t.Fatal("no VmHWM in /proc/self/status")
	}
	return *p
}

// freshProcessEnv names the test that a process started by inFreshProcess
// runs.
const freshProcessEnv = "SIMULATION_TEST_FRESH_PROCESS"

// inFreshProcess runs the calling test again, alone, in a new process of
// this test binary, and reports whether this is that process: there the
// test goes on; here it has passed or failed with the new process. A
// test of the process's memory (VmHWM) needs one: a virtual run's child
// calls adviseHugePages first thing, with its heap fresh, while here the
// earlier tests have left their heap and goroutines behind.
func inFreshProcess(t *testing.T) bool {
	t.Helper()
	if os.Getenv(freshProcessEnv) == t.Name() {
		return true
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), freshProcessEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in a fresh process: %v\n%s", t.Name(), err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()+" ") {
		t.Fatalf("%s did not run and pass in a fresh process:\n%s", t.Name(), out)
	}
	return false
}

// heldFreeMiB is how much of the heap is free but not yet given back to
// the kernel (runtime/metrics).
func heldFreeMiB() float64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	return float64(s[0].Value.Uint64()) / (1 << 20)
}

// freeHeld allocates n objects of size bytes, writes to each, and lets
// the collector free them: their pages are left free in the heap, still
// held by the process, not given back to the kernel, as a run or a test
// that came before may leave them. The runtime zeroes, so writes, every
// page of an allocation that takes one of them.
func freeHeld(n, size int) {
	objects := make([][]byte, 0, n)
	for range n {
		o := make([]byte, size)
		o[0] = 1
		objects = append(objects, o)
	}
	runtime.KeepAlive(objects)
	runtime.GC()
}

func TestAdviseHugePagesAdvisesLargeMappingsAndReservesNoMemory(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil {
		t.Skipf("this kernel has no transparent huge pages (%v): madvise would refuse the advice", err)
	}
	if !inFreshProcess(t) {
		return
	}
	// Mappings large enough for huge pages, made before and after the
	// first scan, and one too small.
	before, err := syscall.Mmap(-1, 0, 4*hugeMapping, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(before)
	// MAP_NORESERVE keeps the kernel from merging it with a neighbour.
	small, err := syscall.Mmap(-1, 0, hugeMapping/2, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(small)

	freeHeld(320, 4<<20)
	if held := heldFreeMiB(); held < 1024 {
		t.Fatalf("the heap holds %.0f MiB free before the reserve, want more than the reserve's 1024", held)
	}
	resetPeakRSS()
	rss := peakMiB(t)
	const reserve = 1 << 30
	stop := adviseHugePages(reserve, 10*time.Millisecond)
	defer stop()
	// The reserve is address space: the heap grew by a GiB, the memory did
	// not, not even for a moment (a few chunks may take pages freed
	// meanwhile; measured 0 MiB, and 55 without giving the free heap back
	// first).
	if grew := peakMiB(t) - rss; grew > 4*(reserveChunk>>20) {
		t.Errorf("reserving %d MiB of heap took %.0f MiB of memory: the reserve must not be touched", reserve>>20, grew)
	}
	if flags := smapsFlags(t, uintptr(unsafe.Pointer(&before[0]))); !slices.Contains(flags, "hg") {
		t.Errorf("a %d MiB anonymous mapping has VmFlags %v after the first scan, want hg (huge pages advised)", len(before)>>20, flags)
	}
	if flags := smapsFlags(t, uintptr(unsafe.Pointer(&small[0]))); slices.Contains(flags, "hg") {
		t.Errorf("a %d KiB mapping, too small for a huge page, was advised: VmFlags %v", len(small)>>10, flags)
	}

	after, err := syscall.Mmap(-1, 0, hugeMapping, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(after)
	addr := uintptr(unsafe.Pointer(&after[0]))
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(smapsFlags(t, addr), "hg") {
		if time.Now().After(deadline) {
			t.Fatalf("a mapping made after the first scan was not advised within 10 s (the scan runs every 10 ms): VmFlags %v", smapsFlags(t, addr))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	stop() // a second stop is harmless
}

func TestTheReserveWritesOnlyTheChunksThatTakeFreePagesStillHeld(t *testing.T) {
	if !inFreshProcess(t) {
		return
	}
	// Free pages still held at the low end of the heap, with fresh
	// address space after them: what a page freed by another goroutine
	// after adviseHugePages gave the free heap back leaves.
	debug.FreeOSMemory()
	freeHeld(64, 64<<10)
	held := heldFreeMiB()
	if held < 2 {
		t.Fatalf("the heap holds %.1f MiB free, want the 4 MiB just freed", held)
	}
	resetPeakRSS()
	rss := peakMiB(t)
	const reserve = 1 << 30
	reserveHeap(reserve)
	// Each chunk that takes a held page is written, and no other.
	if grew, most := peakMiB(t)-rss, 4*float64(reserveChunk>>20)+held; grew > most {
		t.Errorf("reserving %d MiB of heap with %.1f MiB free still held took %.0f MiB of memory, want at most %.0f: only the chunks that take held pages may be written",
			reserve>>20, held, grew, most)
	}
}
