package wal

import (
	"os"
	"syscall"
)

// mapFile maps f's first size bytes read-only. The pages come straight
// from the page cache: reading 16 MiB into fresh memory costs a new process
// more (the kernel zeroes every page first) than hashing it does.
func mapFile(f *os.File, size int64) ([]byte, func(), error) {
	if size == 0 {
		return nil, func() {}, nil
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		return readFile(f, size)
	}
	return data, func() { syscall.Munmap(data) }, nil
}
