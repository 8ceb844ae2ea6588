// Package sshsig signs and verifies with OpenSSH keys in the SSHSIG format
// (OpenSSH's PROTOCOL.sshsig), so that `ssh-keygen -Y verify` checks what
// drctl signed with stock tools, and `ssh-keygen -t ed25519` makes the key.
// Allowed signers are read from ssh-keygen's allowed_signers format.
package sshsig

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/drctl/drctl/catalog"
)

// Namespace is the SSHSIG namespace of every drctl signature: a drctl
// signature cannot be replayed as a git commit's or a file's signature.
const Namespace = "drctl"

const (
	magic      = "SSHSIG"
	version    = 1
	armorBegin = "-----BEGIN SSH SIGNATURE-----"
	armorEnd   = "-----END SSH SIGNATURE-----"
)

// ErrBadSignature marks a signature that does not verify, or whose key is
// not an allowed signer.
var ErrBadSignature = catalog.ErrBadSignature

// Signer signs with an Ed25519 private key.
type Signer struct {
	key ssh.Signer
}

// LoadSigner reads an unencrypted Ed25519 private key in OpenSSH format.
func LoadSigner(path string) (*Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return ParseSigner(data)
}

// ParseSigner parses an unencrypted Ed25519 private key in OpenSSH format.
func ParseSigner(pem []byte) (*Signer, error) {
	key, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, errors.New("signing key is protected by a passphrase: drctl signs unattended; make one with ssh-keygen -t ed25519 -N ''")
	}
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if key.PublicKey().Type() != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("signing key is %s: use an Ed25519 key (ssh-keygen -t ed25519)", key.PublicKey().Type())
	}
	return &Signer{key: key}, nil
}

// PublicKey is the signer's public key in authorized_keys form.
func (s *Signer) PublicKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.key.PublicKey())))
}

// Sign returns the armored SSHSIG signature of message.
func (s *Signer) Sign(message []byte) ([]byte, error) {
	sig, err := s.key.Sign(rand.Reader, signedData(Namespace, "sha512", message))
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	var blob bytes.Buffer
	blob.WriteString(magic)
	binary.Write(&blob, binary.BigEndian, uint32(version))
	writeString(&blob, s.key.PublicKey().Marshal())
	writeString(&blob, []byte(Namespace))
	writeString(&blob, nil) // reserved
	writeString(&blob, []byte("sha512"))
	writeString(&blob, ssh.Marshal(sig))
	return armor(blob.Bytes()), nil
}

func signedData(namespace, hashAlg string, message []byte) []byte {
	var digest []byte
	if hashAlg == "sha256" {
		d := sha256.Sum256(message)
		digest = d[:]
	} else {
		d := sha512.Sum512(message)
		digest = d[:]
	}
	var b bytes.Buffer
	b.WriteString(magic)
	writeString(&b, []byte(namespace))
	writeString(&b, nil)
	writeString(&b, []byte(hashAlg))
	writeString(&b, digest)
	return b.Bytes()
}

func writeString(b *bytes.Buffer, s []byte) {
	binary.Write(b, binary.BigEndian, uint32(len(s)))
	b.Write(s)
}

func armor(blob []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(blob)
	var b strings.Builder
	b.WriteString(armorBegin + "\n")
	for len(enc) > 70 {
		b.WriteString(enc[:70] + "\n")
		enc = enc[70:]
	}
	b.WriteString(enc + "\n" + armorEnd + "\n")
	return []byte(b.String())
}

// AllowedSigners is a parsed allowed_signers file.
type AllowedSigners struct {
	entries []allowed
}

type allowed struct {
	principals  string
	key         ssh.PublicKey
	namespaces  string    // an OpenSSH pattern list; empty: any
	validAfter  time.Time // zero: no bound
	validBefore time.Time
}

// LoadAllowedSigners reads an allowed_signers file (ssh-keygen(1), ALLOWED
// SIGNERS): "principals [options] keytype base64-key [comment]". Of the
// options, namespaces="..." is honoured; lines marked cert-authority are
// refused (drctl signs with plain keys).
func LoadAllowedSigners(path string) (*AllowedSigners, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("allowed signers: %w", err)
	}
	a, err := ParseAllowedSigners(data)
	if err != nil {
		return nil, fmt.Errorf("allowed signers %s: %w", path, err)
	}
	return a, nil
}

// ParseAllowedSigners parses the allowed_signers format.
func ParseAllowedSigners(data []byte) (*AllowedSigners, error) {
	a := &AllowedSigners{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		principals, rest, ok := cutField(line)
		if !ok {
			return nil, fmt.Errorf("line %d: want principals and a key", n)
		}
		e := allowed{principals: principals}
		key, _, options, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("line %d: bad public key: %w", n, err)
		}
		if key.Type() != ssh.KeyAlgoED25519 {
			return nil, fmt.Errorf("line %d: a %s key: drctl signs and verifies with Ed25519 keys only", n, key.Type())
		}
		e.key = key
		for _, opt := range options {
			name, value, _ := strings.Cut(opt, "=")
			value = strings.Trim(value, `"`)
			switch strings.ToLower(name) {
			case "namespaces":
				e.namespaces = value
			case "cert-authority":
				return nil, fmt.Errorf("line %d: cert-authority lines are not supported: list the signing key itself", n)
			case "valid-after", "valid-before":
				t, err := parseValidity(value)
				if err != nil {
					return nil, fmt.Errorf("line %d: %s: %w", n, name, err)
				}
				if strings.EqualFold(name, "valid-after") {
					e.validAfter = t
				} else {
					e.validBefore = t
				}
			default:
				return nil, fmt.Errorf("line %d: unknown option %q", n, name)
			}
		}
		a.entries = append(a.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(a.entries) == 0 {
		return nil, errors.New("no signer listed")
	}
	return a, nil
}

// cutField splits off the first whitespace-separated field, honouring
// double quotes (option values may hold spaces).
func cutField(s string) (string, string, bool) {
	inQuote := false
	for i, c := range s {
		switch {
		case c == '"':
			inQuote = !inQuote
		case !inQuote && (c == ' ' || c == '\t'):
			return s[:i], strings.TrimSpace(s[i:]), true
		}
	}
	return s, "", false
}

// Verify checks that signature (armored SSHSIG) signs message in drctl's
// namespace with the key of an allowed signer, and returns the signer's
// principals.
func (a *AllowedSigners) Verify(message, signature []byte) (string, error) {
	blob, err := unarmor(signature)
	if err != nil {
		return "", err
	}
	r := bytes.NewReader(blob)
	head := make([]byte, len(magic))
	var ver uint32
	if _, err := r.Read(head); err != nil || string(head) != magic {
		return "", fmt.Errorf("%w: not an SSHSIG signature", ErrBadSignature)
	}
	if err := binary.Read(r, binary.BigEndian, &ver); err != nil || ver != version {
		return "", fmt.Errorf("%w: unsupported SSHSIG version", ErrBadSignature)
	}
	var fields [5][]byte
	for i := range fields {
		if fields[i], err = readString(r); err != nil {
			return "", fmt.Errorf("%w: truncated SSHSIG", ErrBadSignature)
		}
	}
	if r.Len() != 0 {
		return "", fmt.Errorf("%w: trailing bytes after the signature", ErrBadSignature)
	}
	pubBytes, namespace, hashAlg, sigBytes := fields[0], string(fields[1]), string(fields[3]), fields[4]
	if namespace != Namespace {
		return "", fmt.Errorf("%w: namespace %q, want %q", ErrBadSignature, namespace, Namespace)
	}
	if hashAlg != "sha512" && hashAlg != "sha256" {
		return "", fmt.Errorf("%w: hash algorithm %q", ErrBadSignature, hashAlg)
	}
	pub, err := ssh.ParsePublicKey(pubBytes)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	var entry *allowed
	for i := range a.entries {
		e := &a.entries[i]
		if bytes.Equal(e.key.Marshal(), pub.Marshal()) && e.allows(namespace, time.Now()) {
			entry = e
			break
		}
	}
	if entry == nil {
		return "", fmt.Errorf("%w: signed by %s, which is not an allowed signer (for this namespace, now)", ErrBadSignature, ssh.FingerprintSHA256(pub))
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(sigBytes, &sig); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if sig.Format != ssh.KeyAlgoED25519 {
		return "", fmt.Errorf("%w: a %s signature", ErrBadSignature, sig.Format)
	}
	if err := pub.Verify(signedData(namespace, hashAlg, message), &sig); err != nil {
		return "", fmt.Errorf("%w: does not match the signed content", ErrBadSignature)
	}
	return entry.principals, nil
}

// allows reports whether the entry may sign in namespace now.
func (e *allowed) allows(namespace string, now time.Time) bool {
	if !e.validAfter.IsZero() && now.Before(e.validAfter) || !e.validBefore.IsZero() && !now.Before(e.validBefore) {
		return false
	}
	return e.namespaces == "" || matchPatternList(namespace, e.namespaces)
}

// matchPatternList is OpenSSH's match_pattern_list: comma-separated
// patterns with * and ?; a matching pattern negated with ! refuses.
func matchPatternList(s, list string) bool {
	matched := false
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		negated := strings.HasPrefix(p, "!")
		if negated {
			p = p[1:]
		}
		if ok, _ := path.Match(p, s); ok {
			if negated {
				return false
			}
			matched = true
		}
	}
	return matched
}

// parseValidity reads ssh-keygen's YYYYMMDD[HHMM[SS]][Z] (local time unless Z).
func parseValidity(v string) (time.Time, error) {
	loc := time.Local
	if strings.HasSuffix(v, "Z") || strings.HasSuffix(v, "z") {
		v, loc = v[:len(v)-1], time.UTC
	}
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(v) == len(layout) {
			if t, err := time.ParseInLocation(layout, v, loc); err == nil {
				return t, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%q is not YYYYMMDD[HHMM[SS]][Z]", v)
}

func readString(r *bytes.Reader) ([]byte, error) {
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	if int64(n) > int64(r.Len()) {
		return nil, errors.New("string runs past the end")
	}
	b := make([]byte, n)
	_, err := r.Read(b)
	return b, err
}

func unarmor(sig []byte) ([]byte, error) {
	s := strings.TrimSpace(string(sig))
	body, ok := strings.CutPrefix(s, armorBegin)
	if !ok {
		return nil, fmt.Errorf("%w: no %s line", ErrBadSignature, armorBegin)
	}
	body, ok = strings.CutSuffix(body, armorEnd)
	if !ok {
		return nil, fmt.Errorf("%w: no %s line", ErrBadSignature, armorEnd)
	}
	blob, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return blob, nil
}
