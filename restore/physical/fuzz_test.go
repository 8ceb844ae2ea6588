package physical_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pipeline"
	"github.com/drctl/drctl/restore/physical"
	"github.com/drctl/drctl/storage/storagetest"
)

// Tar headers come from the repository: whatever the tar holds, a restore
// writes nothing outside its target directory, and never panics.
func FuzzTarFromRepository(f *testing.F) {
	seed := func(entries ...*tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range entries {
			tw.WriteHeader(h)
			if h.Typeflag == tar.TypeReg {
				tw.Write(make([]byte, h.Size))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	f.Add(seed(&tar.Header{Name: "PG_VERSION", Typeflag: tar.TypeReg, Size: 3, Mode: 0o600}))
	f.Add(seed(&tar.Header{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "../out"}, &tar.Header{Name: "a/x", Typeflag: tar.TypeReg, Size: 1}))
	f.Add(seed(&tar.Header{Name: "d/", Typeflag: tar.TypeDir}, &tar.Header{Name: "d/l", Typeflag: tar.TypeSymlink, Linkname: ".."}, &tar.Header{Name: "d/l/l2", Typeflag: tar.TypeSymlink, Linkname: "../../x"}))
	f.Add(seed(&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}))
	f.Add(seed(&tar.Header{Name: "tablespace_map", Typeflag: tar.TypeReg, Size: 12}))
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		st := storagetest.NewMemory()
		id := catalog.NewID(time.Now())
		up, err := pipeline.Start(ctx, st, catalog.ObjectKey(id, "base.tar.zst"), &codec.Keys{}, codec.Options{Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		up.Write(data)
		obj, err := up.Finish(ctx, catalog.RoleTar)
		if err != nil {
			t.Fatal(err)
		}
		m := &catalog.Manifest{FormatVersion: 1, ID: id, Kind: catalog.KindPhysical, Encryption: catalog.Encryption{Method: "none"},
			Objects: []catalog.Object{obj}, Physical: &catalog.Physical{WALSegmentSize: 16 << 20}}
		root := t.TempDir()
		outside := filepath.Join(root, "outside")
		os.Mkdir(outside, 0o755)
		physical.Restore(ctx, physical.Options{Store: st, Manifest: m, Keys: &codec.Keys{}, Dir: filepath.Join(root, "data"), RestoreCommand: "false"})
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			rel, _ := filepath.Rel(root, p)
			if err == nil && rel != "." && rel != "outside" && rel != "data" && !strings.HasPrefix(rel, "data/") {
				t.Fatalf("the restore wrote %s outside its target", rel)
			}
			return nil
		})
	})
}
