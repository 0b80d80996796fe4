//go:build !linux

package tcpopt

import "net"

// ApplyToListener sets nothing here: each accepted connection gets all of o (Accepted.Apply).
func (o Options) ApplyToListener(*net.TCPListener) (Accepted, error) { return Accepted{o: o}, nil }
