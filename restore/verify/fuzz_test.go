package verify

import "testing"

// The server's backup_manifest comes from the repository: malformed ones
// are refused, never a panic.
func FuzzServerManifest(f *testing.F) {
	f.Add([]byte(`{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-11-26 14:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "a1b2c3d4" },
{ "Encoded-Path": "706173737764", "Size": 1 }
],
"Manifest-Checksum": "0000000000000000000000000000000000000000000000000000000000000000"}
`))
	f.Add([]byte(`{"PostgreSQL-Backup-Manifest-Version": 2, "Files": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		parseServerManifest(data)
	})
}
