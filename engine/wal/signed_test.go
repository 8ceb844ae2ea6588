package wal_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/sshsig"
	"github.com/drctl/drctl/engine/wal"
	"github.com/drctl/drctl/storage/storagetest"
)

func testSigner(t *testing.T) (*sshsig.Signer, *sshsig.AllowedSigners) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := sshsig.ParseSigner(pem.EncodeToMemory(block))
	if err != nil {
		t.Fatal(err)
	}
	allowed, err := sshsig.ParseAllowedSigners([]byte("w@test " + signer.PublicKey() + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return signer, allowed
}

// wal-receive's copy of an unfinished segment and a ".partial" file a
// promotion archives are signed apart; each fetch checks its own.
func TestSignedPartialSegments(t *testing.T) {
	st := storagetest.NewMemory()
	signer, allowed := testSigner(t)
	a := &wal.Archive{Store: st, Keys: &codec.Keys{}, AllowUnencrypted: true, Signer: signer, Verifier: allowed, SegmentSize: 1 << 20}
	const seg = "000000010000000000000007"
	dir := t.TempDir()
	// A promotion's leftover, archived by wal-push.
	leftover := filepath.Join(dir, seg+".partial")
	os.WriteFile(leftover, bytes.Repeat([]byte("L"), 1<<20), 0o600)
	if _, err := a.Push(t.Context(), leftover); err != nil {
		t.Fatal(err)
	}
	// wal-receive streams the same segment, twice flushed.
	for _, n := range []int{1000, 5000} {
		if err := a.PutPartial(t.Context(), seg, bytes.Repeat([]byte("S"), n)); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(dir, "fetched")
	if err := a.Fetch(t.Context(), seg, dest); err != nil {
		t.Fatalf("fetch of the streamed copy: %v", err)
	}
	if got, _ := os.ReadFile(dest); len(got) != 1<<20 || got[4999] != 'S' || got[5000] != 0 {
		t.Fatalf("streamed copy served wrong: %d bytes", len(got))
	}
	if err := a.Fetch(t.Context(), seg+".partial", dest); err != nil {
		t.Fatalf("fetch of the promotion's .partial: %v", err)
	}
	// Only the newest streamed copy's signature is kept.
	objs, _ := st.List(t.Context(), wal.Prefix+seg+".stream.")
	if len(objs) != 1 {
		t.Fatalf("stream signatures: %v", objs)
	}
	// A streamed copy whose signature is gone is refused.
	for _, o := range mustList(t, st, wal.Prefix+seg+".stream.") {
		st.Delete(t.Context(), o)
	}
	if err := a.Fetch(t.Context(), seg, dest); !errors.Is(err, catalog.ErrUnsigned) {
		t.Fatalf("fetch of an unsigned streamed copy: %v", err)
	}
}

func mustList(t *testing.T, st *storagetest.Memory, prefix string) []string {
	objs, err := st.List(t.Context(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key)
	}
	return keys
}
