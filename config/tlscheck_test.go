package config

import (
	"slices"
	"testing"
)

func TestUnverifiedUpstreams(t *testing.T) {
	c := Defaults(ProfileProduction)
	c.DatabaseURL = "postgres://app:pw@db.internal:5432/app?sslmode=require"
	c.Routes = []Route{
		{Database: "a", DSN: "host=db.internal sslmode=verify-full"},
		{Database: "b", DSN: "host=127.0.0.1 sslmode=disable"},
		{Database: "c", DSN: "host=/var/run/postgresql"},
		{Database: "d", DSN: "postgres://u@10.0.0.5,127.0.0.1/x"}, // default sslmode prefer
		{Database: "e"}, // database_url's, named once
	}
	got := c.UnverifiedUpstreams()
	if want := []string{"database_url", "routes[3]"}; !slices.Equal(got, want) {
		t.Errorf("UnverifiedUpstreams = %q, want %q", got, want)
	}
	c.Profile = ProfileLocal
	if got := c.UnverifiedUpstreams(); got != nil {
		t.Errorf("outside production: %q", got)
	}
}
