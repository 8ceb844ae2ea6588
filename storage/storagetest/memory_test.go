package storagetest_test

import (
	"testing"

	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/storagetest"
)

func TestMemoryConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return storagetest.NewMemory() }, storagetest.Options{LargeSize: 12 << 20})
}
