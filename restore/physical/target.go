package physical

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openTarget readies dir for a restore: created when missing, else an
// empty real directory (never a symlink), mode 0700. The returned Root is
// the very directory checked, even if someone swaps the path meanwhile.
// fromRepository marks a path the backup named (--tablespace-original): as
// root it must already exist, empty and owned by the server's user, so a
// backup cannot make drctl create or take over a system directory.
func openTarget(dir string, owner *Owner, fromRepository bool) (*os.Root, bool, error) {
	created := false
	li, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if fromRepository && os.Geteuid() == 0 {
			return nil, false, fmt.Errorf("%s, named by the backup, does not exist: create it empty and owned by the server's user, or map the tablespace with --tablespace-map", dir)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, false, err
		}
		created = true
	case err != nil:
		return nil, false, err
	case li.Mode()&fs.ModeSymlink != 0:
		return nil, false, fmt.Errorf("%s is a symlink: restore into a real directory", dir)
	case !li.IsDir():
		return nil, false, fmt.Errorf("%s is not a directory", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, false, err
	}
	fail := func(err error) (*os.Root, bool, error) {
		root.Close()
		return nil, false, err
	}
	fi, err := root.Stat(".")
	if err != nil {
		return fail(err)
	}
	if li, err := os.Lstat(dir); err != nil || !os.SameFile(fi, li) {
		return fail(fmt.Errorf("%s changed while it was being opened: refusing", dir))
	}
	d, err := root.Open(".")
	if err != nil {
		return fail(err)
	}
	names, err := d.Readdirnames(1)
	d.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return fail(err)
	}
	if len(names) > 0 {
		return fail(fmt.Errorf("%s is not empty: restore into a new or empty directory", dir))
	}
	if fromRepository && !created && os.Geteuid() == 0 {
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st == nil || owner == nil || int(st.Uid) != owner.UID {
			return fail(fmt.Errorf("%s, named by the backup, is not owned by the server's user: give it to that user, or map the tablespace with --tablespace-map", dir))
		}
	}
	if err := root.Chmod(".", 0o700); err != nil {
		return fail(err)
	}
	return root, created, nil
}

// clearTarget removes everything a failed restore wrote into root.
func clearTarget(root *os.Root) {
	d, err := root.Open(".")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		root.RemoveAll(name)
	}
}

// chownTree gives everything below root to o, through root: symlinks are
// changed themselves (never followed), and nothing outside is reached.
func chownTree(root *os.Root, o Owner) error {
	return fs.WalkDir(root.FS(), ".", func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return root.Lchown(p, o.UID, o.GID)
	})
}

// syncFS flushes the whole filesystem holding root once, instead of an
// fsync per file.
func syncFS(root *os.Root) error {
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
