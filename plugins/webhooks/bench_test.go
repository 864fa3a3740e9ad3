package webhooks_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	"github.com/mqtthooks/mqtthooks/plugins/webhooks"
)

// BenchmarkConnectThroughWebhook: a CONNECT and its DISCONNECT through a
// Core whose auth_on_register is a local webhook endpoint (httptest, keep-
// alive), with the endpoint's answer cached (max-age) or called every time.
func BenchmarkConnectThroughWebhook(b *testing.B) {
	for _, tc := range []struct {
		name, cacheControl string
	}{{"no-cache", ""}, {"cache", "max-age=3600"}} {
		b.Run(tc.name, func(b *testing.B) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if tc.cacheControl != "" {
					w.Header().Set("Cache-Control", tc.cacheControl)
				}
				_, _ = io.WriteString(w, `{"result":"ok"}`)
			}))
			defer srv.Close()
			p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
				webhooks.HookAuthOnRegister: {{URL: srv.URL}}}})
			if err != nil {
				b.Fatal(err)
			}
			chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
			if err := chain.Register("webhooks", p); err != nil {
				b.Fatal(err)
			}
			core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = core.Shutdown(context.Background()) }()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				c := mqtthookstest.NewClient(core)
				// NewClient gives each a new peer port, as reconnecting clients have.
				c.Connect(ctx, mqtthookstest.V3("c1", "u", true))
				if !c.Accepted() {
					b.Fatal("refused")
				}
				_ = c.Disconnect(ctx, mqtthooks.CodeNormalDisconnection)
			}
		})
	}
}
