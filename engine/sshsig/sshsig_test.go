package sshsig_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drctl/drctl/engine/sshsig"
	"github.com/drctl/drctl/testrig"
)

func sshKeygen(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ssh-keygen")
	if err != nil {
		testrig.Missing(t, "ssh-keygen (Debian's openssh-client; make deps installs it)")
	}
	return p
}

func newKey(t *testing.T, dir, name string, extra ...string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	args := append([]string{"-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path}, extra...)
	if out, err := exec.Command(sshKeygen(t), args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	return path
}

// drctl's signatures verify with the stock ssh-keygen -Y verify, and
// ssh-keygen's verify with drctl: the format is OpenSSH's own.
func TestSignaturesInteroperateWithSSHKeygen(t *testing.T) {
	keygen := sshKeygen(t)
	dir := t.TempDir()
	key := newKey(t, dir, "backup-host")
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	allowedFile := filepath.Join(dir, "allowed_signers")
	os.WriteFile(allowedFile, []byte("# drctl writers\nbackup@prod namespaces=\"drctl\" "+string(pub)), 0o644)
	signer, err := sshsig.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	message := []byte(`{"format_version": 1, "id": "20261126T141438Z-3fa9c1"}` + "\n")
	sig, err := signer.Sign(message)
	if err != nil {
		t.Fatal(err)
	}
	msgFile, sigFile := filepath.Join(dir, "manifest.json"), filepath.Join(dir, "manifest.json.sig")
	os.WriteFile(msgFile, message, 0o644)
	os.WriteFile(sigFile, sig, 0o644)
	verify := func(msg string) error {
		cmd := exec.Command(keygen, "-Y", "verify", "-f", allowedFile, "-I", "backup@prod", "-n", "drctl", "-s", sigFile)
		cmd.Stdin = strings.NewReader(msg)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(string(out))
		}
		return nil
	}
	if err := verify(string(message)); err != nil {
		t.Fatalf("ssh-keygen -Y verify refused drctl's signature: %v", err)
	}
	if err := verify(string(message) + " "); err == nil {
		t.Fatal("ssh-keygen accepted a signature over other content")
	}

	allowed, err := sshsig.LoadAllowedSigners(allowedFile)
	if err != nil {
		t.Fatal(err)
	}
	if who, err := allowed.Verify(message, sig); err != nil || who != "backup@prod" {
		t.Fatalf("drctl refused its own signature: %q %v", who, err)
	}
	// ssh-keygen -Y sign's signature verifies in drctl; Ed25519 signatures
	// are deterministic, so it is byte for byte drctl's.
	os.Remove(sigFile)
	if out, err := exec.Command(keygen, "-Y", "sign", "-f", key, "-n", "drctl", msgFile).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, out)
	}
	stock, _ := os.ReadFile(sigFile)
	if !bytes.Equal(stock, sig) {
		t.Fatalf("ssh-keygen's signature differs from drctl's:\n%s\n%s", stock, sig)
	}
	if _, err := allowed.Verify(message, stock); err != nil {
		t.Fatalf("drctl refused ssh-keygen's signature: %v", err)
	}
	// Refused: other content, another namespace, a key not listed, garbage.
	if _, err := allowed.Verify(append(message, ' '), sig); !errors.Is(err, sshsig.ErrBadSignature) {
		t.Fatalf("tampered content: %v", err)
	}
	os.Remove(sigFile)
	if out, err := exec.Command(keygen, "-Y", "sign", "-f", key, "-n", "file", msgFile).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, out)
	}
	otherNS, _ := os.ReadFile(sigFile)
	if _, err := allowed.Verify(message, otherNS); !errors.Is(err, sshsig.ErrBadSignature) || !strings.Contains(err.Error(), "namespace") {
		t.Fatalf("a signature of another namespace: %v", err)
	}
	intruder, err := sshsig.LoadSigner(newKey(t, dir, "intruder"))
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := intruder.Sign(message)
	if _, err := allowed.Verify(message, forged); !errors.Is(err, sshsig.ErrBadSignature) || !strings.Contains(err.Error(), "not an allowed signer") {
		t.Fatalf("a key not listed: %v", err)
	}
	for _, junk := range []string{"", "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n", string(sig[:len(sig)/2])} {
		if _, err := allowed.Verify(message, []byte(junk)); !errors.Is(err, sshsig.ErrBadSignature) {
			t.Fatalf("junk %q: %v", junk, err)
		}
	}
}

func TestKeyAndSignersErrors(t *testing.T) {
	dir := t.TempDir()
	locked := newKey(t, dir, "locked")
	exec.Command(sshKeygen(t), "-q", "-p", "-N", "secret", "-f", locked).Run()
	if _, err := sshsig.LoadSigner(locked); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Fatalf("passphrase-protected key: %v", err)
	}
	rsa := filepath.Join(dir, "rsa")
	if out, err := exec.Command(sshKeygen(t), "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsa).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, err := sshsig.LoadSigner(rsa); err == nil || !strings.Contains(err.Error(), "Ed25519") {
		t.Fatalf("RSA key: %v", err)
	}
	for _, bad := range []string{"", "# only a comment\n", "someone\n", "someone ssh-ed25519 notbase64\n", "ca@x cert-authority ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEFpfDa6D6Kp0N0zq6ATZ7Gxr6YgC1FY5aV7d6z0tBmF\n"} {
		if _, err := sshsig.ParseAllowedSigners([]byte(bad)); err == nil {
			t.Fatalf("allowed signers %q accepted", bad)
		}
	}
}

// allowed_signers options are honoured as ssh-keygen does: validity
// periods, and namespace pattern lists with negation.
func TestAllowedSignersOptions(t *testing.T) {
	signer, err := sshsig.LoadSigner(newKey(t, t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := signer.Sign([]byte("m"))
	for opts, want := range map[string]bool{
		``:                                       true,
		`namespaces="drctl"`:                     true,
		`namespaces="dr*,git"`:                   true,
		`namespaces="git,file"`:                  false,
		`namespaces="!drctl,*"`:                  false,
		`valid-before="20200101"`:                false,
		`valid-after="29990101Z"`:                false,
		`valid-after="20200101000000Z"`:          true,
		`namespaces="*",valid-before="29990101"`: true,
	} {
		line := "p@x " + opts + " " + signer.PublicKey() + "\n"
		if opts == "" {
			line = "p@x " + signer.PublicKey() + "\n"
		}
		a, err := sshsig.ParseAllowedSigners([]byte(line))
		if err != nil {
			t.Fatalf("%s: %v", opts, err)
		}
		if _, err := a.Verify([]byte("m"), sig); (err == nil) != want {
			t.Errorf("options %s: verify error %v, want accepted=%v", opts, err, want)
		}
	}
}
