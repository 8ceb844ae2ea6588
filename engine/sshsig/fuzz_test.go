package sshsig

import (
	"crypto/ed25519"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Signatures and allowed-signers files are read from the repository and
// from the user: malformed ones are refused, never a panic, and nothing
// but a real signature by the listed key verifies.
func FuzzVerify(f *testing.F) {
	_, priv, _ := ed25519.GenerateKey(nil)
	key, _ := ssh.NewSignerFromKey(priv)
	s := &Signer{key: key}
	allowed, err := ParseAllowedSigners([]byte("x@y " + s.PublicKey() + "\n"))
	if err != nil {
		f.Fatal(err)
	}
	good, _ := s.Sign([]byte("message"))
	f.Add([]byte("message"), good)
	f.Add([]byte("other"), good)
	f.Add([]byte("message"), []byte("-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----\n"))
	f.Fuzz(func(t *testing.T, message, sig []byte) {
		if _, err := allowed.Verify(message, sig); err == nil && string(message) != "message" {
			t.Fatalf("a signature over %q verified", message)
		}
	})
}

func FuzzAllowedSigners(f *testing.F) {
	f.Add([]byte("backup@prod namespaces=\"drctl\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEFpfDa6D6Kp0N0zq6ATZ7Gxr6YgC1FY5aV7d6z0tBmF host\n"))
	f.Add([]byte("# comment\n\na,b ssh-ed25519 AAAA\n"))
	f.Add([]byte("x cert-authority,valid-after=\"20260101\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEFpfDa6D6Kp0N0zq6ATZ7Gxr6YgC1FY5aV7d6z0tBmF\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseAllowedSigners(data)
		if err == nil && len(a.entries) == 0 {
			t.Fatal("accepted a file listing no signer")
		}
	})
}
