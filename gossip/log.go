package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// logBridge turns serf's and memberlist's log lines ("[WARN] memberlist:
// Was able to connect…") into slog records at the matching level, so that
// one --log-level and one --log-format govern every line the agent writes.
type logBridge struct {
	logger *slog.Logger
	// onConflict, when set, hears the address of another node that claims
	// this node's name: serf says so only in its log.
	onConflict func(addr string)
}

func newStdLogger(l *slog.Logger, onConflict func(string)) *log.Logger {
	return log.New(&logBridge{logger: l, onConflict: onConflict}, "", 0)
}

// conflictLine is how serf announces that this node's name is taken.
const conflictLine = "Node name conflicts with another node at "

func (b *logBridge) Write(p []byte) (int, error) {
	for line := range bytes.SplitSeq(bytes.TrimRight(p, "\n"), []byte("\n")) {
		// Most lines are serf's and memberlist's debug chatter: one the
		// logger would drop costs no parse, unless it names a conflict.
		if !b.logger.Enabled(context.Background(), lineLevel(line)) && !bytes.Contains(line, []byte(conflictLine)) {
			continue
		}
		level, component, msg := parseLibraryLine(string(line))
		if i := strings.Index(msg, conflictLine); i >= 0 && b.onConflict != nil {
			addr, _, _ := strings.Cut(msg[i+len(conflictLine):], ". ")
			b.onConflict(addr)
		}
		b.logger.Log(context.Background(), level, msg, "component", component)
	}
	return len(p), nil
}

// lineLevel is the level of a library line, as parseLibraryLine reads it.
func lineLevel(line []byte) slog.Level {
	if len(line) > 0 && line[0] == '[' {
		if end := bytes.IndexByte(line, ']'); end > 0 {
			return libraryLevel(string(line[1:end]))
		}
	}
	return slog.LevelInfo
}

// libraryLevel maps serf's and memberlist's level names to slog's.
func libraryLevel(name string) slog.Level {
	switch name {
	case "TRACE", "DEBUG":
		return slog.LevelDebug
	case "WARN", "WARNING":
		return slog.LevelWarn
	case "ERR", "ERROR":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// parseLibraryLine splits "[LEVEL] component: message". Lines without a level
// prefix are logged at info, as serf treats them.
func parseLibraryLine(line string) (slog.Level, string, string) {
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			level = libraryLevel(line[1:end])
			line = strings.TrimSpace(line[end+1:])
		}
	}
	component := ""
	if i := strings.Index(line, ": "); i > 0 && !strings.ContainsAny(line[:i], " \t") {
		component, line = line[:i], line[i+2:]
	}
	return level, component, line
}
