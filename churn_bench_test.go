package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
)

// pushPullBytes measures one push/pull of a's full state: a joins to through
// a counting TCP relay on loopback (a join is a push/pull over TCP), and the
// bytes a sent are its state. memberlist's own memberlist_size_local gauge
// cannot serve: it reports bytes of the message header, not a size.
func pushPullBytes(b *testing.B, a, to *testAgent) float64 {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	sent := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sent <- -1
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", to.gossip)
		if err != nil {
			sent <- -1
			return
		}
		defer up.Close()
		go io.Copy(c, up)
		n, _ := io.Copy(up, c)
		sent <- n
	}()
	if _, errOut, code := runCLI(b, "join", ln.Addr().String(), "--rpc-addr", a.rpc); code != 0 {
		b.Fatalf("join through the relay: %s", errOut)
	}
	select {
	case n := <-sent:
		if n <= 0 {
			b.Fatal("the relay saw no push/pull")
		}
		return float64(n)
	case <-time.After(10 * time.Second):
		b.Fatal("the push/pull through the relay did not end")
		return 0
	}
}

// BenchmarkChurn500 runs 500 spawn/stop cycles (5 at a time) on 3 servers
// with a 5 s --interpreter-reap, then waits for the reap, and reports the
// member count and the size of a push/pull before, at the reap, and once
// memberlist has dropped the dead nodes' state too: churn must leave no
// residue.
func BenchmarkChurn500(b *testing.B) {
	const cycles, workers = 500, 5
	for range b.N {
		agents := benchServers(b, 3, "--interpreter-reap", "5s")
		membersBefore := len(membersOf(b, agents[0]))
		bytesBefore := pushPullBytes(b, agents[0], agents[1])
		start := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failures []string
		next := make(chan int)
		for w := range workers {
			cl := dialAgent(b, agents[w%3])
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range next {
					resp, err := cl.Spawn(rpc.SpawnRequest{Kind: "demo", Wait: true})
					if err == nil && resp.Code == "" {
						_, err = cl.StopInterpreter(resp.Name)
					} else if err == nil {
						err = fmt.Errorf("%s: %s", resp.Code, resp.Error)
					}
					if err != nil {
						mu.Lock()
						failures = append(failures, err.Error())
						mu.Unlock()
					}
				}
			}()
		}
		for i := range cycles {
			next <- i
		}
		close(next)
		wg.Wait()
		churn := time.Since(start)
		if len(failures) > cycles/50 {
			b.Fatalf("%d of %d cycles failed, e.g. %s", len(failures), cycles, failures[0])
		}
		waitFor(b, "every agent back to the 3 servers", 60*time.Second, func() bool {
			for _, a := range agents {
				if len(membersOf(b, a)) != membersBefore {
					return false
				}
			}
			return true
		})
		reaped := time.Since(start) - churn
		bytesReaped := pushPullBytes(b, agents[0], agents[1])
		// memberlist keeps the state of dead and left nodes for its
		// GossipToTheDeadTime (a minute in fast) after serf forgot them:
		// poll, bounded, until the push/pull is back near its size.
		var bytesAfter float64
		waitFor(b, "the push/pull back within 10% of its size", 3*time.Minute, func() bool {
			bytesAfter = pushPullBytes(b, agents[0], agents[1])
			if bytesAfter <= 1.1*bytesBefore {
				return true
			}
			time.Sleep(5 * time.Second) // a bounded poll of a minute-long timer, not of gossip
			return false
		})
		settled := time.Since(start) - churn
		dirs := 0
		waitFor(b, "the ended interpreters' directories removed", time.Minute, func() bool {
			dirs = 0
			for _, a := range agents {
				entries, _ := os.ReadDir(filepath.Join(a.dataDir, "interpreters"))
				dirs += len(entries)
			}
			return dirs == 0
		})
		b.ReportMetric(float64(cycles), "cycles")
		b.ReportMetric(float64(len(failures)), "failed_cycles")
		b.ReportMetric(churn.Seconds(), "churn_s")
		b.ReportMetric(reaped.Seconds(), "reap_wait_s")
		b.ReportMetric(float64(membersBefore), "members_before")
		b.ReportMetric(float64(len(membersOf(b, agents[0]))), "members_after")
		b.ReportMetric(bytesBefore, "pushpull_bytes_before")
		b.ReportMetric(bytesReaped, "pushpull_bytes_at_reap")
		b.ReportMetric(bytesAfter, "pushpull_bytes_after")
		b.ReportMetric(settled.Seconds(), "pushpull_settle_s")
		b.ReportMetric(float64(dirs), "dirs_after")
	}
}
