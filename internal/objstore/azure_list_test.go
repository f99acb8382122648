package objstore_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/azureserver"
)

// TestAzureListAfterSendsStartFrom: ListAfter on azblob:// asks the service
// to start the listing at the key (startFrom), so that attaching a volume
// with a long log does not page through all of it on Azure; and it returns
// only the keys after that one whether or not the server honours the
// option (azurite 3.35 ignores it). The requests are seen by a recording
// proxy in front of a real azurite. Fails if no listing carries startFrom
// (as before: Azure listed from the prefix).
func TestAzureListAfterSendsStartFrom(t *testing.T) {
	srv := azureserver.Start(t)
	pool, err := url.Parse(srv.NewBucket(t))
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(srv.Endpoint) // http://127.0.0.1:PORT/devstoreaccount1
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var starts []string // startFrom of every list request ("" if none)
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query(); q.Get("comp") == "list" {
			mu.Lock()
			starts = append(starts, q.Get("startFrom"))
			mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	defer px.Close()

	s := open(t, &objstore.Opener{}, "azblob://"+pool.Host+"/pool?endpoint="+px.URL+target.Path)
	defer s.Close()
	for _, k := range []string{"log/0001", "log/0002", "log/0003", "log/0004", "log/0005"} {
		if err := s.PutIfAbsent(t.Context(), k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := objstore.ListAfter(t.Context(), s, "log/", "log/0003", func(oi objstore.ObjectInfo) error {
		got = append(got, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"log/0004", "log/0005"}; !slices.Equal(got, want) {
		t.Errorf("ListAfter(log/, log/0003) = %v, want %v", got, want)
	}
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(starts)
	}
	if st := seen(); !slices.Contains(st, "pool/log/0003") {
		t.Errorf("list requests' startFrom = %q, want one with pool/log/0003 (the store root's prefix and the key)", st)
	}
	// A plain List starts at the prefix.
	n := len(seen())
	if err := s.List(t.Context(), "log/", func(objstore.ObjectInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if st := seen()[n:]; len(st) == 0 || strings.Join(st, "") != "" {
		t.Errorf("List(log/) sent startFrom %q, want one request without", st)
	}
}
