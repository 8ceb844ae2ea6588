package catalog_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/storage/storagetest"
)

// A manifest is whatever bytes someone with write access put there: Load
// refuses what is not a valid manifest of that id, and never panics.
func FuzzLoadManifest(f *testing.F) {
	const id = "20261126T141438Z-3fa9c1"
	f.Add([]byte(`{"format_version":1,"id":"` + id + `","kind":"logical","database":"shop","encryption":{"method":"age"},"objects":[{"key":"backups/` + id + `/dump.pgc.zst.age","role":"dump","size":10,"sha256":"` + strings.Repeat("ab", 32) + `"}]}`))
	f.Add([]byte(`{"format_version":1,"id":"` + id + `","kind":"physical","physical":{"start_lsn":"0/2000028"},"encryption":{"method":"none"},"objects":[{"key":"backups/` + id + `/../../etc/passwd","role":"tar","size":1,"sha256":"` + strings.Repeat("0", 64) + `","tablespace_oid":"16384","tablespace_path":"/etc"}]}`))
	f.Add([]byte(`{"format_version":99}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st := storagetest.NewMemory()
		st.Put(context.Background(), catalog.ManifestKey(id), bytes.NewReader(data))
		m, err := catalog.Load(context.Background(), st, id, nil)
		if err != nil {
			return
		}
		if m.ID != id || len(m.Objects) == 0 || m.FormatVersion != catalog.FormatVersion {
			t.Fatalf("accepted %+v", m)
		}
		for _, o := range m.Objects {
			if !strings.HasPrefix(o.Key, "backups/"+id+"/") || strings.Contains(o.Key, "..") || strings.Count(o.Key, "/") != 2 {
				t.Fatalf("accepted an object outside the backup: %q", o.Key)
			}
		}
		if m.Kind == catalog.KindPhysical && m.Physical == nil {
			t.Fatal("accepted a physical backup without its physical section")
		}
	})
}
