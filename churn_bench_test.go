package main

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/agent/agent/rpc"
)

// pushPullBytes forces a push/pull from a to b (a join is one) and returns
// the size of the state a sent, as memberlist reports it
// (memberlist_size_local on a's /metrics).
func pushPullBytes(b *testing.B, a, to *testAgent) float64 {
	b.Helper()
	if _, errOut, code := runCLI(b, "join", to.gossip, "--rpc-addr", a.rpc); code != 0 {
		b.Fatalf("join: %s", errOut)
	}
	resp, err := http.Get("http://" + a.http + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memberlist_size_local "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	b.Fatal("no memberlist_size_local on /metrics")
	return 0
}

// BenchmarkChurn500 runs 500 spawn/stop cycles (5 at a time) on 3 servers
// with a 5 s --interpreter-reap, then waits for the reap, and reports the
// member count and the size of a push/pull before and after: churn must
// leave no residue.
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
		bytesAfter := pushPullBytes(b, agents[0], agents[1])
		b.ReportMetric(float64(cycles), "cycles")
		b.ReportMetric(float64(len(failures)), "failed_cycles")
		b.ReportMetric(churn.Seconds(), "churn_s")
		b.ReportMetric(reaped.Seconds(), "reap_wait_s")
		b.ReportMetric(float64(membersBefore), "members_before")
		b.ReportMetric(float64(len(membersOf(b, agents[0]))), "members_after")
		b.ReportMetric(bytesBefore, "pushpull_bytes_before")
		b.ReportMetric(bytesAfter, "pushpull_bytes_after")
	}
}
