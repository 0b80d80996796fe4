package health_test

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/health"
)

func ExampleServer() {
	reg := prometheus.NewRegistry() // private, owned by the caller
	hs := health.NewServer(health.Options{
		Addr:     "127.0.0.1:0",
		Gatherer: reg,
		Ready:    func(context.Context) error { return nil },
	})
	if err := hs.Start(); err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = hs.Shutdown(context.Background()) }()
	hs.SetStarted()

	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + hs.Addr().String() + "/readyz")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output: 200 ok
}
