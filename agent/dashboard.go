package agent

import (
	"embed"
	"io/fs"
	"net/http"
)

// The dashboard is static files embedded in the binary: no build step, no
// files to install. It reads the HTTP API like any other client.
//
//go:embed web
var webFiles embed.FS

func dashboardHandler() http.Handler {
	sub, err := fs.Sub(webFiles, "web")
	if err != nil {
		panic(err) // the embedded tree always has web/
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
		files.ServeHTTP(w, r)
	})
}
