package auth

import (
	"sync"

	"github.com/xdg-go/scram"
)

// Credentials keeps the SCRAM-SHA-256 credentials derived from plain-text passwords, so that a
// login costs the same whether its user exists or not: deriving them (4096 rounds of PBKDF2)
// takes about 700 us, which would tell an attacker which users exist, and would let a flood of
// startup packets keep the proxy busy. Prepare derives them when the configuration is loaded.
// A Credentials is safe for concurrent use; the zero value is empty and usable.
type Credentials struct {
	mu     sync.Mutex
	byUser map[string]derived
}

// derived is a user's credentials and the password they were derived from.
type derived struct {
	secret string
	cred   scram.StoredCredentials
}

// Prepare derives, now, the credentials of every plain-text password in users (user name to
// secret; SCRAM verifiers and MD5 secrets need none), and forgets those of users no longer
// there.
func (c *Credentials) Prepare(users map[string]string) error {
	next := make(map[string]derived, len(users))
	for user, secret := range users {
		if isSCRAMVerifier(secret) || isMD5Secret(secret) {
			continue
		}
		if d, ok := c.lookup(user); ok && d.secret == secret {
			next[user] = d
			continue
		}
		cred, err := deriveCredentials(secret, userSalt(user))
		if err != nil {
			return err
		}
		next[user] = derived{secret: secret, cred: cred}
	}
	c.mu.Lock()
	c.byUser = next
	c.mu.Unlock()
	return nil
}

func (c *Credentials) lookup(user string) (derived, bool) {
	if c == nil {
		return derived{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.byUser[user]
	return d, ok
}

// scramFor returns user's credentials for plain-text password secret: the prepared ones, or,
// for a secret not prepared, derived now.
func (c *Credentials) scramFor(user, secret string) (scram.StoredCredentials, error) {
	if d, ok := c.lookup(user); ok && d.secret == secret {
		return d.cred, nil
	}
	return deriveCredentials(secret, userSalt(user))
}
