package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/codec"
	"github.com/drctl/drctl/engine/pgarchive"
	"github.com/drctl/drctl/engine/pgdsn"
	"github.com/drctl/drctl/engine/pgtools"
	"github.com/drctl/drctl/engine/sshsig"
	"github.com/drctl/drctl/storage"
	"github.com/drctl/drctl/storage/backends"
)

// fileConfig is the YAML configuration file; every key mirrors a flag.
type fileConfig struct {
	Repo           string `yaml:"repo,omitempty"`
	DSN            string `yaml:"dsn,omitempty"`
	RecipientsFile string `yaml:"recipients_file,omitempty"`
	IdentityFile   string `yaml:"identity_file,omitempty"`
	// Identity is an age identity given inline, for restore_command
	// configurations that drctl restore writes.
	Identity string `yaml:"identity,omitempty"`
	LogLevel string `yaml:"log_level,omitempty"`
	// SigningKeyFile signs what writers commit; AllowedSignersFile (or
	// AllowedSigners inline, as restore writes for restore_command) makes
	// readers refuse what no allowed signer signed.
	SigningKeyFile     string `yaml:"signing_key_file,omitempty"`
	AllowedSignersFile string `yaml:"allowed_signers_file,omitempty"`
	AllowedSigners     string `yaml:"allowed_signers,omitempty"`
	// Env sets environment variables (AWS_*, DRCTL_S3_*) for drctl,
	// overriding inherited ones: archive_command and restore_command run
	// with the server's environment, not the user's.
	Env map[string]string `yaml:"env,omitempty"`
	// The daemon's settings (drctl daemon), checked by engine/daemon with
	// their lines; other commands ignore them.
	Listen  yaml.Node `yaml:"listen,omitempty"`
	Refresh yaml.Node `yaml:"refresh,omitempty"`
	Jobs    yaml.Node `yaml:"jobs,omitempty"`
	Notify  yaml.Node `yaml:"notify,omitempty"`
	// The recovery objectives (drctl policy, drill, gate), checked by
	// policy with their lines.
	Processes yaml.Node `yaml:"processes,omitempty"`
	// Drill chooses drctl drill's sandbox, and sets up the kubernetes one.
	Drill drillConfig `yaml:"drill,omitempty"`
}

// globalFlags are the settings shared by every command.
type globalFlags struct {
	configFile     string
	repo           string
	dsn            string
	recipientsFile string
	identityFile   string
	logLevel       string
	signingKey     string
	allowedSigners string
}

// settings is the resolved configuration: flags, then environment, then file.
type settings struct {
	Repo           string
	DSN            string
	RecipientsFile string
	IdentityFile   string
	Identity       string
	// Signatures: the key writers sign with, and the signers readers
	// accept (a file, or the inline text of a recovery configuration).
	SigningKeyFile     string
	AllowedSignersFile string
	AllowedSigners     string
	Logger             *slog.Logger
	debug              bool
	drill              drillConfig
	// fileEnv is the config file's env: block; it wins over the inherited
	// environment (see getenv).
	fileEnv map[string]string
}

// getenv looks up a variable of drctl's own settings (DRCTL_*, AWS_*): the
// config file's env: block first, then the inherited environment. Only
// cmd reads the environment; the packages below take options.
func (s *settings) getenv(key string) string {
	if v, ok := s.fileEnv[key]; ok {
		return v
	}
	return os.Getenv(key)
}

// environ is the inherited environment with the config file's env: block
// applied, for the child processes drctl starts.
func (s *settings) environ() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, over := s.fileEnv[k]; !over {
			out = append(out, kv)
		}
	}
	for k, v := range s.fileEnv {
		out = append(out, k+"="+v)
	}
	return out
}

// storeOptions are the repository settings from the environment and the
// config file's env: block (the AWS SDK's variable names).
func (s *settings) storeOptions() (backends.Options, error) {
	e := s.getenv
	o := backends.Options{SpoolDir: first(e("DRCTL_SPOOL_DIR"), os.Getenv("TMPDIR"))}
	if fi, err := os.Stat("/var/tmp"); o.SpoolDir == "" && err == nil && fi.IsDir() {
		o.SpoolDir = "/var/tmp" // on disk on most systems, where /tmp is often memory
	}
	switch v := e("DRCTL_S3_CHECKSUMS"); v {
	case "", "on":
	case "off":
		o.DisableChecksums = true
	default:
		return o, fmt.Errorf("DRCTL_S3_CHECKSUMS=%q: want on or off", v)
	}
	c := &o.S3Client
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"DRCTL_S3_FORCE_PATH_STYLE", &c.ForcePathStyle}, {"AWS_EC2_METADATA_DISABLED", &c.DisableIMDS}} {
		if v := e(b.name); v != "" {
			parsed, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("%s=%q: want true or false", b.name, v)
			}
			*b.dst = parsed
		}
	}
	if v := e("AWS_MAX_ATTEMPTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return o, fmt.Errorf("AWS_MAX_ATTEMPTS=%q: want a positive number", v)
		}
		c.MaxAttempts = n
	}
	c.Region = first(e("AWS_REGION"), e("AWS_DEFAULT_REGION"))
	c.Profile = first(e("AWS_PROFILE"), e("AWS_DEFAULT_PROFILE"))
	c.Endpoint = first(e("AWS_ENDPOINT_URL_S3"), e("AWS_ENDPOINT_URL"))
	c.CABundle = e("AWS_CA_BUNDLE")
	c.AccessKeyID, c.SecretAccessKey, c.SessionToken = e("AWS_ACCESS_KEY_ID"), e("AWS_SECRET_ACCESS_KEY"), e("AWS_SESSION_TOKEN")
	if v := e("AWS_CONFIG_FILE"); v != "" {
		c.ConfigFiles = []string{v}
	}
	if v := e("AWS_SHARED_CREDENTIALS_FILE"); v != "" {
		c.CredentialsFiles = []string{v}
	}
	c.RoleARN, c.WebIdentityTokenFile, c.RoleSessionName = e("AWS_ROLE_ARN"), e("AWS_WEB_IDENTITY_TOKEN_FILE"), e("AWS_ROLE_SESSION_NAME")
	// Proxies from the config file; the inherited ones the SDK reads itself.
	for _, p := range []struct {
		dst   *string
		names []string
	}{{&c.HTTPProxy, []string{"HTTP_PROXY", "http_proxy"}}, {&c.HTTPSProxy, []string{"HTTPS_PROXY", "https_proxy"}}, {&c.NoProxy, []string{"NO_PROXY", "no_proxy"}}} {
		for _, n := range p.names {
			if v, ok := s.fileEnv[n]; ok && *p.dst == "" {
				*p.dst = v
			}
		}
	}
	if c.HTTPProxy != "" || c.HTTPSProxy != "" || c.NoProxy != "" {
		// One set wins whole: fill what the file left out from the inherited.
		c.HTTPProxy = first(c.HTTPProxy, os.Getenv("HTTP_PROXY"), os.Getenv("http_proxy"))
		c.HTTPSProxy = first(c.HTTPSProxy, os.Getenv("HTTPS_PROXY"), os.Getenv("https_proxy"))
		c.NoProxy = first(c.NoProxy, os.Getenv("NO_PROXY"), os.Getenv("no_proxy"))
	}
	if s.debug {
		c.Logger = s.Logger
	}
	return o, nil
}

// codecOptions: the zstd level, and DRCTL_ZSTD_WORKERS compression
// workers (default: the number of cores).
func (s *settings) codecOptions(level int) (codec.Options, error) {
	o := codec.Options{Level: level}
	if v := s.getenv("DRCTL_ZSTD_WORKERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return o, fmt.Errorf("DRCTL_ZSTD_WORKERS=%q: want a positive number", v)
		}
		o.Concurrency = n
	}
	return o, nil
}

// signer loads the signing key; nil when none is configured.
func (s *settings) signer() (catalog.Signer, error) {
	if s.SigningKeyFile == "" {
		return nil, nil
	}
	signer, err := sshsig.LoadSigner(s.SigningKeyFile)
	if err != nil {
		return nil, err
	}
	return signer, nil
}

// verifier loads the allowed signers; nil when none are configured, and
// then nothing is checked (verify says the backups are unsigned).
func (s *settings) verifier() (catalog.Verifier, error) {
	switch {
	case s.AllowedSignersFile != "":
		a, err := sshsig.LoadAllowedSigners(s.AllowedSignersFile)
		if err != nil {
			return nil, err
		}
		return a, nil
	case s.AllowedSigners != "":
		a, err := sshsig.ParseAllowedSigners([]byte(s.AllowedSigners))
		if err != nil {
			return nil, fmt.Errorf("config: allowed_signers: %w", err)
		}
		return a, nil
	}
	return nil, nil
}

// program finds a PostgreSQL program, in DRCTL_PG_BINDIR when set.
func (s *settings) program(name string) (string, error) {
	return pgtools.Find(name, s.getenv("DRCTL_PG_BINDIR"))
}

func (g *globalFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&g.configFile, "config", "", "YAML configuration file (env DRCTL_CONFIG)")
	f.StringVar(&g.repo, "repo", "", "repository URL: file:///path or s3://bucket/prefix (env DRCTL_REPO)")
	f.StringVar(&g.recipientsFile, "recipients-file", "", "age recipients file, one public key a line (env DRCTL_AGE_RECIPIENTS_FILE)")
	f.StringVar(&g.identityFile, "identity-file", "", "age identity file as age-keygen writes it (env DRCTL_AGE_IDENTITY_FILE)")
	f.StringVar(&g.logLevel, "log-level", "", "debug, info, warn or error (env DRCTL_LOG_LEVEL; default warn)")
	f.StringVar(&g.signingKey, "signing-key", "", "Ed25519 OpenSSH private key (ssh-keygen -t ed25519) that signs backups and WAL (env DRCTL_SIGNING_KEY_FILE)")
	f.StringVar(&g.allowedSigners, "allowed-signers", "", "ssh-keygen allowed_signers file: refuse backups and WAL not signed by one of them (env DRCTL_ALLOWED_SIGNERS_FILE)")
}

func (g *globalFlags) resolve(cmd *cobra.Command, stderr io.Writer) (*settings, error) {
	var fc fileConfig
	path := first(g.configFile, os.Getenv("DRCTL_CONFIG"))
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if fc, err = parseFileConfig(data); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	// Flags, then the environment (the file's env: block over the
	// inherited one), then the file's keys.
	s := &settings{fileEnv: fc.Env, drill: fc.Drill}
	e := s.getenv
	s.Repo = first(g.repo, e("DRCTL_REPO"), fc.Repo)
	s.DSN = first(g.dsn, e("DRCTL_DSN"), fc.DSN)
	s.RecipientsFile = first(g.recipientsFile, e("DRCTL_AGE_RECIPIENTS_FILE"), fc.RecipientsFile)
	s.IdentityFile = first(g.identityFile, e("DRCTL_AGE_IDENTITY_FILE"), fc.IdentityFile)
	s.SigningKeyFile = first(g.signingKey, e("DRCTL_SIGNING_KEY_FILE"), fc.SigningKeyFile)
	s.AllowedSignersFile = first(g.allowedSigners, e("DRCTL_ALLOWED_SIGNERS_FILE"), fc.AllowedSignersFile)
	if s.AllowedSignersFile == "" {
		s.AllowedSigners = fc.AllowedSigners
	}
	if s.IdentityFile == "" {
		s.Identity = fc.Identity
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(first(g.logLevel, e("DRCTL_LOG_LEVEL"), fc.LogLevel, "warn"))); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	s.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	s.debug = level <= slog.LevelDebug
	for k := range fc.Env {
		if !knownEnv[k] && !strings.HasPrefix(k, "DRCTL_S3_") {
			s.Logger.Warn("config env: drctl does not use this variable; it is ignored", "name", k)
		}
	}
	return s, nil
}

// knownEnv are the variables drctl reads (its own and the AWS SDK's it
// passes on); others in a config file's env: block are reported.
var knownEnv = map[string]bool{}

func init() {
	for _, k := range []string{"DRCTL_REPO", "DRCTL_DSN", "DRCTL_AGE_RECIPIENTS_FILE", "DRCTL_AGE_IDENTITY_FILE", "DRCTL_SIGNING_KEY_FILE",
		"DRCTL_ALLOWED_SIGNERS_FILE", "DRCTL_LOG_LEVEL", "DRCTL_SPOOL_DIR", "DRCTL_ZSTD_WORKERS", "DRCTL_PG_BINDIR",
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
		"AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS", "AWS_CONFIG_FILE",
		"AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
		"AWS_ROLE_SESSION_NAME", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"} {
		knownEnv[k] = true
	}
}

// parseFileConfig reads the YAML configuration: unknown keys are errors
// (a typo must not silently drop a setting).
func parseFileConfig(data []byte) (fileConfig, error) {
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && err != io.EOF {
		return fileConfig{}, err
	}
	for k := range fc.Env {
		if !strings.HasPrefix(k, "AWS_") && !strings.HasPrefix(k, "DRCTL_") && !proxyVar(k) {
			return fileConfig{}, fmt.Errorf("env: %s: only AWS_*, DRCTL_* and proxy settings go here", k)
		}
	}
	return fc, nil
}

func proxyVar(k string) bool {
	switch strings.ToUpper(k) {
	case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY":
		return true
	}
	return false
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func (s *settings) openStore(ctx context.Context) (storage.Store, error) {
	o, err := s.storeOptions()
	if err != nil {
		return nil, err
	}
	return backends.Open(ctx, s.Repo, o)
}

// open resolves the settings and opens the repository.
func (g *globalFlags) open(cmd *cobra.Command, stderr io.Writer) (*settings, storage.Store, error) {
	s, err := g.resolve(cmd, stderr)
	if err != nil {
		return nil, nil, err
	}
	st, err := s.openStore(cmd.Context())
	if err != nil {
		return nil, nil, err
	}
	return s, st, nil
}

// dsn parses the connection string; an empty one means libpq's PG* variables.
func (s *settings) parseDSN(raw string) (*pgdsn.DSN, error) {
	return pgdsn.Parse(raw)
}

// encryptKeys loads the recipients, if any are configured.
func (s *settings) encryptKeys() (*codec.Keys, error) {
	if s.RecipientsFile == "" {
		return &codec.Keys{}, nil
	}
	r, strs, err := codec.LoadRecipients(s.RecipientsFile)
	if err != nil {
		return nil, err
	}
	return &codec.Keys{Recipients: r, RecipientStrings: strs}, nil
}

// decryptKeys loads the identities, if configured; restore paths report a
// missing identity only when a backup turns out to be encrypted.
func (s *settings) decryptKeys() (*codec.Keys, error) {
	if s.IdentityFile == "" && s.Identity != "" {
		ids, err := codec.ParseIdentities(strings.NewReader(s.Identity))
		if err != nil {
			return nil, fmt.Errorf("config: identity: %w", err)
		}
		return &codec.Keys{Identities: ids}, nil
	}
	if s.IdentityFile == "" {
		return &codec.Keys{}, nil
	}
	ids, err := codec.LoadIdentities(s.IdentityFile)
	if err != nil {
		return nil, err
	}
	return &codec.Keys{Identities: ids}, nil
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	// Errors quote what came from the repository and from pg_restore (a
	// dump's SQL): no control characters reach the terminal or the log.
	return pgarchive.Printable(strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " "))
}

// writer is what a command that writes to the repository from a database
// needs.
type writer struct {
	*settings
	dsn    *pgdsn.DSN
	keys   *codec.Keys
	store  storage.Store
	signer catalog.Signer
}

// openWriter resolves the settings, the database, the recipients (refusing
// none unless allowUnencrypted) and opens the repository, in that order:
// bad input is reported before anything is contacted.
func (g *globalFlags) openWriter(cmd *cobra.Command, stderr io.Writer, allowUnencrypted bool) (*writer, error) {
	s, err := g.resolve(cmd, stderr)
	if err != nil {
		return nil, err
	}
	dsn, err := s.parseDSN(s.DSN)
	if err != nil {
		return nil, err
	}
	keys, err := s.encryptKeys()
	if err != nil {
		return nil, err
	}
	if !keys.Encrypted() && !allowUnencrypted {
		return nil, codec.ErrNoRecipients
	}
	signer, err := s.signer()
	if err != nil {
		return nil, err
	}
	st, err := s.openStore(cmd.Context())
	if err != nil {
		return nil, err
	}
	if c, ok := st.(storage.StaleCleaner); ok {
		// Leftovers of killed writers (temp files, unfinished multipart
		// uploads) whose lease expired. Never visible; this frees space.
		reaper := catalog.NewReaper(st, time.Now())
		if n, err := c.RemoveStaleTemp(cmd.Context(), func(key string, since time.Time) bool {
			return reaper.LeftoverDead(cmd.Context(), key, since)
		}); err != nil {
			s.Logger.Warn("could not clean up leftovers of killed backups", "error", err)
		} else if n > 0 {
			s.Logger.Info("cleaned up leftovers of killed backups", "count", n)
		}
	}
	return &writer{settings: s, dsn: dsn, keys: keys, store: st, signer: signer}, nil
}

// backupFlags are the options every backup command shares.
type backupFlags struct {
	asJSON, noEncryption bool
	labels               []string
}

func (b *backupFlags) register(cmd *cobra.Command, g *globalFlags, dsnHelp string) {
	f := cmd.Flags()
	f.StringVar(&g.dsn, "dsn", "", dsnHelp)
	f.StringArrayVar(&b.labels, "label", nil, "key=value label recorded with the backup (repeatable)")
	f.BoolVar(&b.asJSON, "json", false, "print the result as JSON")
	f.BoolVar(&b.noEncryption, "no-encryption", false, "store the backup unencrypted when no recipients are configured")
}
