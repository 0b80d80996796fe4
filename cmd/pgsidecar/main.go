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
	// SIGHUP reloads the configuration; SIGTERM and SIGINT drain, and a second one exits at once.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(run(context.Background(), os.Args[1:], os.Environ(), os.Stdout, os.Stderr, nil, signals))
}
