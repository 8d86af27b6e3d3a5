package simulation

import (
	"reflect"
	"testing"
)

func TestLargeAnonymousFindsTheBigPrivateWritableMappingsOnly(t *testing.T) {
	maps := []byte(`00400000-00599000 r-xp 00000000 fd:01 1234                       /usr/bin/agent
00599000-005cf000 rw-p 00199000 fd:01 1234                       /usr/bin/agent
6c1ec000000-6c1eec00000 ---p 00000000 00:00 0 
6c1eec00000-6c1fb800000 rw-p 00000000 00:00 0 
7f2ba0d00000-7f2ba2e00000 rw-p 00000000 00:00 0 
7f2ba3000000-7f2ba7000000 rw-p 00000000 00:00 0                  [anon: Go: heap]
7f2ba8000000-7f2bac000000 rw-s 00000000 00:05 99                 /dev/zero (deleted)
7f2bb0000000-7f2bb4000000 rw-p 00000000 00:00 0                  [heap]
7f2bb8000000-7f2bbc000000 rw-p 00000000 fd:01 77                 /var/lib/data.bin
7fff08c98000-7fff08cb9000 rw-p 00000000 00:00 0                          [stack]
not a mapping line
zz-7f rw-p 00000000 00:00 0
`)
	got := largeAnonymous(maps, 64<<20)
	want := []mapping{
		{0x6c1eec00000, 0x6c1fb800000}, // 236 MiB, unnamed
		{0x7f2ba3000000, 0x7f2ba7000000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("largeAnonymous = %#x, want %#x", got, want)
	}
	if got := largeAnonymous(maps, 1<<40); len(got) != 0 {
		t.Fatalf("nothing is 1 TiB, got %#x", got)
	}
}
