package testrig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/drctl/drctl/storage/s3store"
)

// VersityGWVersion is the pinned S3 server the Makefile installs.
const VersityGWVersion = "v1.8.0"

// S3 is a running versitygw server with one empty bucket.
type S3 struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Bucket    string
	Region    string
	Dir       string
	// CAFile is the PEM certificate of a TLS server (StartS3TLS), to trust
	// with AWS_CA_BUNDLE.
	CAFile string
	caPool *x509.CertPool
}

// VersityGW finds the server binary: DRCTL_VERSITYGW, the cache, or PATH.
func VersityGW() (string, bool) {
	if p := os.Getenv("DRCTL_VERSITYGW"); p != "" {
		return p, true
	}
	return cachedTool("versitygw")
}

// StartS3 starts versitygw (posix backend) in a temp dir and creates a bucket.
func StartS3(t testing.TB) *S3 { return startS3(t, false) }

// StartS3TLS is StartS3 serving HTTPS with a self-signed certificate for
// 127.0.0.1 (some clients, pgBackRest among them, speak only HTTPS).
func StartS3TLS(t testing.TB) *S3 { return startS3(t, true) }

func startS3(t testing.TB, useTLS bool) *S3 {
	t.Helper()
	bin, ok := VersityGW()
	if !ok {
		Missing(t, "versitygw %s not found (DRCTL_VERSITYGW, %s/bin or PATH)", VersityGWVersion, CacheDir())
	}
	dir := t.TempDir()
	for _, d := range []string{"data", "versions"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &S3{
		AccessKey: "drctltestaccess", SecretKey: "drctl-test-secret-key-0123456789",
		Bucket: "drctl-test", Region: "us-east-1", Dir: dir,
	}
	var p *process
	var err error
	scheme, tlsArgs := "http", []string(nil)
	if useTLS {
		// The certificate must be readable by other users (the PostgreSQL
		// server's archive_command): t.TempDir is not.
		certDir, err := os.MkdirTemp("", "drctl-s3-cert-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(certDir, 0o755)
		t.Cleanup(func() { os.RemoveAll(certDir) })
		certFile, keyFile := filepath.Join(certDir, "cert.pem"), filepath.Join(certDir, "key.pem")
		if s.caPool, err = selfSignedCert(certFile, keyFile); err != nil {
			t.Fatal(err)
		}
		s.CAFile = certFile
		scheme, tlsArgs = "https", []string{"--cert", certFile, "--key", keyFile}
	}
	logFile := filepath.Join(dir, "versitygw.log")
	for attempt := 0; attempt < 3; attempt++ { // a port taken between FreePort and bind
		port := FreePort(t)
		s.Endpoint = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
		args := append([]string{"--port", fmt.Sprintf("127.0.0.1:%d", port)}, tlsArgs...)
		args = append(args, "posix", "--versioning-dir", filepath.Join(dir, "versions"), filepath.Join(dir, "data"))
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
		if p, err = startProcess(cmd, logFile); err != nil {
			t.Fatalf("start versitygw: %v", err)
		}
		client := s.Client()
		err = waitFor(p, 20*time.Second, logFile, func() error {
			_, err := client.ListBuckets(context.Background(), &s3.ListBucketsInput{})
			return err
		})
		if err == nil {
			break
		}
		p.stop(syscall.SIGKILL, time.Second)
	}
	if err != nil {
		t.Fatalf("versitygw: %v", err)
	}
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
	if _, err := s.Client().CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: &s.Bucket}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	return s
}

// Client returns a path-style client with the root credentials.
func (s *S3) Client() *s3.Client {
	o := s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		UsePathStyle: true,
	}
	if s.caPool != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: s.caPool}
		o.HTTPClient = &http.Client{Transport: tr}
	}
	return s3.New(o)
}

// selfSignedCert writes a certificate and key for 127.0.0.1.
func selfSignedCert(certFile, keyFile string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "drctl test S3"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}

// ClientOptions reach this server without any environment variable.
func (s *S3) ClientOptions() s3store.ClientOptions {
	return s3store.ClientOptions{ForcePathStyle: true, MaxAttempts: 3, Region: s.Region, Endpoint: s.Endpoint,
		CABundle: s.CAFile, AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey, DisableIMDS: true}
}

// Env is the environment a drctl process needs to use this server.
func (s *S3) Env() []string {
	env := []string{}
	if s.CAFile != "" {
		env = append(env, "AWS_CA_BUNDLE="+s.CAFile)
	}
	return append(env,
		"AWS_ACCESS_KEY_ID="+s.AccessKey,
		"AWS_SECRET_ACCESS_KEY="+s.SecretKey,
		"AWS_REGION="+s.Region,
		"AWS_ENDPOINT_URL_S3="+s.Endpoint,
		"DRCTL_S3_FORCE_PATH_STYLE=true",
		// Nothing in a test may reach the instance metadata address.
		"AWS_EC2_METADATA_DISABLED=true",
	)
}

// SetEnv applies Env to this test process (not parallel-safe, like t.Setenv).
func (s *S3) SetEnv(t *testing.T) {
	for _, kv := range s.Env() {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				t.Setenv(kv[:i], kv[i+1:])
				break
			}
		}
	}
}

// RepoURL is the repository URL for a prefix in the bucket.
func (s *S3) RepoURL(prefix string) string {
	return "s3://" + s.Bucket + "/" + prefix
}
