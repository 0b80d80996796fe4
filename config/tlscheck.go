package config

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// UnverifiedUpstreams names the upstreams that a production proxy reaches over the network
// without verifying the server: a host that is not loopback (nor a Unix socket) with an sslmode
// below verify-full, so that a machine in the middle could read the credentials and data. Only
// in the production profile; nil elsewhere. The names are "database_url" and "routes[i]", never
// a connection string.
func (c *Config) UnverifiedUpstreams() []string {
	if c.Profile != ProfileProduction {
		return nil
	}
	var names []string
	check := func(name, dsn string) {
		if dsn != "" && unverifiedDSN(dsn) {
			names = append(names, name)
		}
	}
	check("database_url", c.DatabaseURL)
	for i, r := range c.Routes {
		if r.DSN != "" {
			check(fmt.Sprintf("routes[%d]", i), r.DSN)
		}
	}
	return names
}

// unverifiedDSN reports whether dsn reaches a network host without sslmode=verify-full.
func unverifiedDSN(dsn string) bool {
	d, err := parseDSN(dsn)
	if err != nil {
		return false // refused by Validate
	}
	if mode, _ := d.get("sslmode"); mode == "verify-full" {
		return false
	}
	connString, _, err := SplitLoadBalanceHosts(dsn)
	if err != nil {
		return false
	}
	cc, err := pgconn.ParseConfig(connString)
	if err != nil {
		return false
	}
	hosts := []string{cc.Host}
	for _, fb := range cc.Fallbacks {
		hosts = append(hosts, fb.Host)
	}
	for _, h := range hosts {
		if !strings.HasPrefix(h, "/") && !isLoopbackHost(h) {
			return true
		}
	}
	return false
}
