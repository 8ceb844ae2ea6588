package daemon

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics, /healthz (live while the scheduler runs) and
// /readyz (once the repository has answered).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Metrics.Registry, promhttp.HandlerOpts{}))
	probe := func(ok func() bool, what string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if !ok() {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte("not " + what + "\n"))
				return
			}
			w.Write([]byte(what + "\n"))
		}
	}
	mux.Handle("GET /healthz", probe(d.Healthy, "live"))
	mux.Handle("GET /readyz", probe(d.Ready, "ready"))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("drctl daemon: /metrics /healthz /readyz\n"))
	})
	return mux
}
