package simulation

import (
	"bytes"
	"strconv"
)

// mapping is an address range [start, end) of a process's memory.
type mapping struct{ start, end uintptr }

// largeAnonymous returns the private, writable mappings of at least min
// bytes that map no file, from a /proc/<pid>/maps listing: each line is
// "start-end perms offset dev inode [path]", and an anonymous mapping has
// inode 0 and no path (or, where the kernel names anonymous mappings, a
// path starting "[anon:"). Lines it cannot read are skipped.
func largeAnonymous(maps []byte, min uintptr) []mapping {
	var out []mapping
	for line := range bytes.Lines(maps) {
		f := bytes.Fields(line)
		if len(f) < 5 || string(f[1]) != "rw-p" || string(f[4]) != "0" {
			continue
		}
		if len(f) > 5 && !bytes.HasPrefix(f[5], []byte("[anon:")) {
			continue // [heap], [stack] and the like
		}
		lo, hi, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end < start || uintptr(end-start) < min {
			continue
		}
		out = append(out, mapping{uintptr(start), uintptr(end)})
	}
	return out
}
