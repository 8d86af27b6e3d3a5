package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
)

// ParseLevel maps a --log-level or monitor level name to a slog level.
// serf's names (TRACE, ERR, WARN) are accepted too, so serf's CLI works.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "err", "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q is not known: use debug, info, warn or error", s)
}

// NewLogger builds the agent's logger: records at or above level go to out
// in the given format, and every record can also be streamed to monitors
// (agent monitor) through the returned LogStream.
func NewLogger(out io.Writer, level, format string) (*slog.Logger, *LogStream, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	stream := &LogStream{subs: map[uint64]logSub{}, leveled: true}
	stream.level.Set(lvl)
	opts := &slog.HandlerOptions{Level: &stream.level}
	var primary slog.Handler
	switch format {
	case "", "text":
		primary = slog.NewTextHandler(out, opts)
	case "json":
		primary = slog.NewJSONHandler(out, opts)
	default:
		return nil, nil, fmt.Errorf("log format %q is not known: use text or json", format)
	}
	stream.min.Store(int64(slog.LevelError + 1))
	mon := slog.NewTextHandler(stream, &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(&teeHandler{primary: primary, monitor: mon, stream: stream}), stream, nil
}

// teeHandler writes to the primary handler and, only while someone is
// monitoring, formats the record a second time for the monitors.
type teeHandler struct {
	primary slog.Handler
	monitor slog.Handler
	stream  *LogStream
}

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.primary.Enabled(ctx, l) || h.stream.wants(l)
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.primary.Enabled(ctx, r.Level) {
		err = h.primary.Handle(ctx, r)
	}
	if h.stream.wants(r.Level) {
		_ = h.monitor.Handle(ctx, r)
	}
	return err
}

func (h *teeHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &teeHandler{primary: h.primary.WithAttrs(a), monitor: h.monitor.WithAttrs(a), stream: h.stream}
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{primary: h.primary.WithGroup(name), monitor: h.monitor.WithGroup(name), stream: h.stream}
}

// LogStream hands formatted log lines to monitors, each with its own level.
// It is safe for concurrent use; a subscriber's function must not block.
type LogStream struct {
	mu   sync.Mutex
	subs map[uint64]logSub
	next uint64
	min  atomic.Int64 // lowest level any subscriber wants
	// level is the primary output's level, which a reload changes;
	// leveled says NewLogger made the logger that reads it.
	level   slog.LevelVar
	leveled bool
}

// SetLevel changes the level of the logger NewLogger made, and reports
// false when the stream belongs to no such logger.
func (s *LogStream) SetLevel(l slog.Level) bool {
	if !s.leveled {
		return false
	}
	s.level.Set(l)
	return true
}

type logSub struct {
	level slog.Level
	fn    func(string)
}

func (s *LogStream) wants(l slog.Level) bool { return int64(l) >= s.min.Load() }

// Subscribe calls fn with every line at or above level until cancel.
func (s *LogStream) Subscribe(level slog.Level, fn func(line string)) (cancel func()) {
	s.mu.Lock()
	id := s.next
	s.next++
	s.subs[id] = logSub{level: level, fn: fn}
	s.recomputeLocked()
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.recomputeLocked()
		s.mu.Unlock()
	}
}

func (s *LogStream) recomputeLocked() {
	min := slog.LevelError + 1
	for _, sub := range s.subs {
		if sub.level < min {
			min = sub.level
		}
	}
	s.min.Store(int64(min))
}

// Write receives one formatted record from the monitor handler.
func (s *LogStream) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	level := lineLevel(line)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.subs {
		if level >= sub.level {
			sub.fn(line)
		}
	}
	return len(p), nil
}

// lineLevel reads the level=... field that slog's text handler writes.
func lineLevel(line string) slog.Level {
	i := strings.Index(line, "level=")
	if i < 0 {
		return slog.LevelInfo
	}
	f := line[i+len("level="):]
	if j := strings.IndexByte(f, ' '); j >= 0 {
		f = f[:j]
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(f)); err != nil {
		return slog.LevelInfo
	}
	return l
}
