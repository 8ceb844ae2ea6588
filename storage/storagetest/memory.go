package storagetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/drctl/drctl/storage"
)

// Memory is an in-memory store for tests that need thousands of stores
// (fuzzing) or none of a real backend's behaviour. It passes the suite.
type Memory struct {
	mu   sync.Mutex
	objs map[string][]byte
	mod  map[string]time.Time
	// Now, when set, is the store's clock (tests with a fake clock).
	Now func() time.Time
}

// NewMemory returns an empty store.
func NewMemory() *Memory { return &Memory{objs: map[string][]byte{}, mod: map[string]time.Time{}} }

func (m *Memory) String() string { return "memory://" }

func (m *Memory) put(ctx context.Context, key string, r io.Reader, exclusive bool) error {
	if err := storage.ValidKey(key); err != nil {
		return err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.objs[key]; ok && exclusive {
		return fmt.Errorf("put %s: %w", key, storage.ErrExists)
	}
	m.objs[key], m.mod[key] = data, m.now()
	return nil
}

// Put stores r under key once r is read whole.
func (m *Memory) Put(ctx context.Context, key string, r io.Reader) error {
	return m.put(ctx, key, r, false)
}

// PutIfAbsent is Put that refuses a taken key.
func (m *Memory) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return m.put(ctx, key, r, true)
}

// Get returns the object's bytes.
func (m *Memory) Get(_ context.Context, key string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, ok := m.objs[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotExist)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// Stat returns the object's size and time.
func (m *Memory) Stat(_ context.Context, key string) (storage.ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, ok := m.objs[key]
	if !ok {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotExist)
	}
	return storage.ObjectInfo{Key: key, Size: int64(len(data)), ModTime: m.mod[key]}, nil
}

// List returns the objects below prefix, sorted.
func (m *Memory) List(_ context.Context, prefix string) ([]storage.ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []storage.ObjectInfo
	for k, data := range m.objs {
		if strings.HasPrefix(k, prefix) {
			out = append(out, storage.ObjectInfo{Key: k, Size: int64(len(data)), ModTime: m.mod[k]})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// ListDirs names the directories directly under prefix.
func (m *Memory) ListDirs(_ context.Context, prefix string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for k := range m.objs {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			if name, _, deeper := strings.Cut(rest, "/"); deeper && !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// Delete removes the object.
func (m *Memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objs, key)
	delete(m.mod, key)
	return nil
}

func (m *Memory) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}
