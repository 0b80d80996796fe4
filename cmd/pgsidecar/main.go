// Command pgsidecar is a PostgreSQL connection pooler meant to run next to an application.
//
//	pgsidecar [flags]              run the proxy
//	pgsidecar config check [flags] validate the configuration and exit
//	pgsidecar config print [flags] print the effective configuration, secrets redacted
//
// With no DATABASE_URL (and no routes) in the local profile, it starts a disposable PostgreSQL
// cluster and proxies to it, for trying it out.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Reload on SIGHUP is not implemented yet; until it is, SIGHUP must not kill a sidecar.
	signal.Ignore(syscall.SIGHUP)
	os.Exit(run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr, nil))
}
