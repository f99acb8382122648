// Package azureserver runs a real Azure Blob emulator (azurite) for tests of
// the azblob:// backend. scripts/install-test-deps.sh installs it with npm
// into $(go env GOPATH)/azurite, where Binary finds it:
//
//	npm install --prefix "$(go env GOPATH)/azurite" --no-audit --no-fund azurite@3.35.0
//
// A missing binary fails the test: tests that need it never skip.
package azureserver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// Version is the azurite the tests are run with.
const Version = "3.35.0"

// Account and Key are azurite's well-known development account (public,
// documented by Microsoft; not a secret).
const (
	Account = "devstoreaccount1"
	Key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Server is a running azurite blob service. Its fields are read-only.
type Server struct {
	// Endpoint is the blob service URL, "http://127.0.0.1:PORT/devstoreaccount1".
	Endpoint string

	client *azblob.Client

	names s3server.BucketNames
}

// Binary returns the path of azurite-blob: from PATH, else
// $GOPATH/azurite/node_modules/.bin (or ~/go/azurite/...). It fails t with
// the install hint if none is found.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("azurite-blob"); err == nil {
		return p
	}
	var dirs []string
	if d := os.Getenv("GOPATH"); d != "" {
		dirs = append(dirs, filepath.SplitList(d)[0])
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "azurite", "node_modules", ".bin", "azurite-blob")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("azurite-blob not found in PATH or under %v/azurite; azblob:// tests need the real emulator. Install it with scripts/install-test-deps.sh or:\n\tnpm install --prefix \"$(go env GOPATH)/azurite\" --no-audit --no-fund azurite@%s", dirs, Version)
	return ""
}

// Env returns the environment (KEY=value) a client process needs for the
// azblob:// backend to reach servers started here: the account's shared key.
func Env() []string {
	return []string{
		"AZURE_STORAGE_ACCOUNT=" + Account,
		"AZURE_STORAGE_KEY=" + Key,
		"AZURE_STORAGE_CONNECTION_STRING=",
	}
}

// Start starts azurite's blob service in memory on a free port, sets Env in
// the environment with t.Setenv (the test must not be parallel), and stops
// it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	for _, kv := range Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ep := startProcess(t, bin)
	svc := ep + "/" + Account
	cred, err := azblob.NewSharedKeyCredential(Account, Key)
	if err != nil {
		t.Fatal(err)
	}
	client, err := azblob.NewClientWithSharedKeyCredential(svc, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Server{Endpoint: svc, client: client}
}

func startProcess(t testing.TB, bin string) string {
	t.Helper()
	return s3server.RunServer(t, "azurite", func(port int) *exec.Cmd {
		// --skipApiVersionCheck: the SDK's API version is newer than this
		// azurite knows, and it would refuse every request.
		cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port),
			"--disableTelemetry", "--skipApiVersionCheck", "--inMemoryPersistence", "--silent")
		return cmd
	})
}

// NewBucket creates an empty container and returns its pool URL.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := s.names.Next()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.CreateContainer(ctx, name, nil); err != nil {
		t.Fatalf("azureserver: create container %s: %v", name, err)
	}
	return s.PoolURL(name, "")
}

// PoolURL returns the azblob:// pool URL of prefix (may be "") in container.
func (s *Server) PoolURL(container, prefix string) string {
	u := "azblob://" + container
	if prefix != "" {
		u += "/" + prefix
	}
	return u + "?endpoint=" + s.Endpoint
}
