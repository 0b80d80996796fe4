//go:build !linux

package tcpopt

import (
	"net"
	"time"
)

// setUserTimeout does nothing: TCP_USER_TIMEOUT is a Linux option, and pgsidecar's deployments
// are Linux; other systems (a developer's laptop) run without it.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
