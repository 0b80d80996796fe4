package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The client TLS certificate is reloaded when its files change (a cert-manager renewal, a
// Secret update), without a restart: new handshakes get the new certificate, connections
// already open keep theirs.

// certCheckInterval is how often the certificate files are looked at.
const certCheckInterval = time.Second

// certReloader serves the current certificate and reloads it when its files change.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	cert              atomic.Pointer[tls.Certificate]
	// stamp identifies the files' versions the current certificate was loaded from.
	stamp string
	wg    sync.WaitGroup
}

// newCertReloader loads the certificate of certFile and keyFile.
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// filesStamp identifies the current versions of the files (size and modification time).
func (r *certReloader) filesStamp() (string, error) {
	var stamp string
	for _, f := range []string{r.certFile, r.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		stamp += fmt.Sprintf("%d/%d;", st.Size(), st.ModTime().UnixNano())
	}
	return stamp, nil
}

func (r *certReloader) load() error {
	stamp, err := r.filesStamp()
	if err != nil {
		return fmt.Errorf("load tls certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load tls certificate: %w", err)
	}
	r.cert.Store(&cert)
	r.stamp = stamp
	return nil
}

// getCertificate is the tls.Config's GetCertificate.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// watch reloads the certificate when its files change, until ctx is done. A file being
// rewritten may be read half written: a failed load keeps the old certificate and is tried
// again at the next check.
func (r *certReloader) watch(ctx context.Context) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(certCheckInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			stamp, err := r.filesStamp()
			if err != nil || stamp == r.stamp {
				continue
			}
			if err := r.load(); err != nil {
				r.log.Warn("tls certificate files changed but could not be loaded; keeping the old certificate", "err", err)
				continue
			}
			r.log.Info("tls certificate reloaded", "cert_file", r.certFile)
		}
	}()
}

// stop waits for watch to end (its context is done).
func (r *certReloader) stop() { r.wg.Wait() }
