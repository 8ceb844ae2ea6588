package physical

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/restore"
)

// ErrUnsafeEntry marks a tar entry that would write outside its target
// directory, or that a base backup never contains (devices, hard links).
var ErrUnsafeEntry = errors.New("unsafe tar entry")

func extractObject(ctx context.Context, opt Options, o catalog.Object, root *os.Root, progress restore.Progress, res *Result) error {
	stream, err := restore.OpenObject(ctx, opt.Store, opt.Manifest, o, opt.Keys, progress)
	if err != nil {
		return err
	}
	defer stream.Close()
	tr := tar.NewReader(stream)
	buf := make([]byte, 1<<20)
	links := map[string]string{} // symlinks written so far: name -> target
	if o.TablespaceOID == "" {
		// PostgreSQL makes pg_tblspc/<oid> a link to each tablespace when
		// recovery starts: nothing may lead through those either.
		for oid := range res.Tablespaces {
			links["pg_tblspc/"+oid] = ""
		}
	}
	unsafe := func(name, why string) error {
		return fmt.Errorf("%s: %w %q: %s; refusing to restore this backup", o.Key, ErrUnsafeEntry, name, why)
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o.Key, err)
		}
		name, why := entryName(hdr.Name)
		if why != "" {
			return unsafe(hdr.Name, why)
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if _, ok := links[p]; ok {
				return unsafe(hdr.Name, "it lies below the symlink "+p)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
		case tar.TypeReg:
			if err := mkParent(root, name); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(hdr.Mode)&0o700|0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			n, err := io.CopyBuffer(f, tr, buf)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", filepath.Join(root.Name(), name), err)
			}
			res.Files++
			res.Bytes += n
		case tar.TypeSymlink:
			if why := linkOutside(name, hdr.Linkname, links); why != "" {
				if opt.SkipExternalSymlinks {
					res.Warnings = append(res.Warnings, fmt.Sprintf("symlink %s -> %s not restored: it %s", name, hdr.Linkname, why))
					continue
				}
				return unsafe(hdr.Name, fmt.Sprintf("a symlink to %q, which %s (--skip-external-symlinks leaves such links out)", hdr.Linkname, why))
			}
			if err := mkParent(root, name); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			links[name] = hdr.Linkname
		case tar.TypeLink:
			return unsafe(hdr.Name, fmt.Sprintf("a hard link to %q (base backups hold none)", hdr.Linkname))
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return unsafe(hdr.Name, "a device file or FIFO (base backups hold none)")
		default:
			return unsafe(hdr.Name, fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
		}
	}
	// A symlink written early may lead through one written later: check
	// every one again against them all.
	names := make([]string, 0, len(links))
	for name, target := range links {
		if target != "" { // not the tablespace links to come
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		if why := linkOutside(name, links[name], links); why != "" {
			if !opt.SkipExternalSymlinks {
				return unsafe(name, fmt.Sprintf("a symlink to %q, which %s", links[name], why))
			}
			if err := root.Remove(name); err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			res.Warnings = append(res.Warnings, fmt.Sprintf("symlink %s -> %s not restored: it %s", name, links[name], why))
		}
	}
	// The tar's end-of-archive blocks may leave padding unread.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return err
	}
	return stream.Check()
}

func mkParent(root *os.Root, name string) error {
	if dir := path.Dir(name); dir != "." {
		return root.MkdirAll(dir, 0o700)
	}
	return nil
}

// linkOutside says why a symlink at name pointing to target could lead
// outside the directory, or "" when it cannot: the target is walked one
// component at a time from the link's directory; climbing above the top,
// an absolute target, or passing through another symlink (whose own target
// could lead anywhere) is refused. PostgreSQL follows these links later,
// so a purely textual check is not enough.
func linkOutside(name, target string, links map[string]string) string {
	if target == "" || strings.ContainsRune(target, 0) || path.IsAbs(target) {
		return "is absolute or empty"
	}
	var at []string
	if dir := path.Dir(name); dir != "." {
		at = strings.Split(dir, "/")
	}
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if len(at) == 0 {
				return "climbs out of the directory"
			}
			at = at[:len(at)-1]
		default:
			at = append(at, c)
			if p := strings.Join(at, "/"); p != name {
				if _, isLink := links[p]; isLink {
					return "leads through the symlink " + p
				}
			} else {
				return "points at itself"
			}
		}
	}
	return ""
}

// entryName cleans a tar entry's name to a relative slash path, or says why
// it is refused: absolute, climbing out with "..", empty, or with a NUL.
func entryName(name string) (string, string) {
	switch {
	case strings.ContainsRune(name, 0):
		return "", "the name holds a NUL byte"
	case strings.HasPrefix(name, "/"):
		return "", "an absolute name"
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == ".." {
			return "", "the name climbs out with \"..\""
		}
	}
	clean := path.Clean(name)
	if clean == "." || clean == "" {
		return "", "an empty name"
	}
	return clean, ""
}

func writeObject(ctx context.Context, opt Options, o catalog.Object, root *os.Root, name string, progress restore.Progress) error {
	stream, err := restore.OpenObject(ctx, opt.Store, opt.Manifest, o, opt.Keys, progress)
	if err != nil {
		return err
	}
	defer stream.Close()
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, stream)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return stream.Check()
}
