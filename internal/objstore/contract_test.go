package objstore_test

import (
	"net/url"
	"path/filepath"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/objstoretest"
	"github.com/urldisk/urldisk/internal/testutil/azureserver"
	"github.com/urldisk/urldisk/internal/testutil/gcsserver"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

func open(t *testing.T, o *objstore.Opener, rawURL string) objstore.Store {
	t.Helper()
	s, err := o.Open(t.Context(), rawURL)
	if err != nil {
		t.Fatalf("Open(%s): %v", objstore.Redact(rawURL), err)
	}
	return s
}

func TestContractMem(t *testing.T) {
	var o objstore.Opener
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		// A fresh name per subtest: each gets its own empty bucket.
		return open(t, &o, "mem://"+url.PathEscape(filepath.Base(t.Name())))
	})
}

func TestContractMemPrefixed(t *testing.T) {
	var o objstore.Opener
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &o, "mem://shared/"+filepath.Base(t.Name())+"/pool")
	})
}

func TestContractFile(t *testing.T) {
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, "file://"+filepath.Join(t.TempDir(), "pool"))
	})
}

func TestContractS3(t *testing.T) {
	srv := s3server.Start(t)
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.NewBucket(t))
	})
}

func TestContractS3Prefixed(t *testing.T) {
	srv := s3server.Start(t)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		// Many stores under prefixes of one bucket, as pools share buckets.
		return open(t, &objstore.Opener{}, srv.PoolURL(u.Host, "pools/"+filepath.Base(t.Name())))
	})
}

func TestContractMinIO(t *testing.T) {
	srv := s3server.StartMinIO(t)
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.NewBucket(t))
	})
}

func TestContractMinIOPrefixed(t *testing.T) {
	srv := s3server.StartMinIO(t)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.PoolURL(u.Host, "pools/"+filepath.Base(t.Name())))
	})
}

func TestContractGCS(t *testing.T) {
	srv := gcsserver.Start(t)
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.NewBucket(t))
	})
}

func TestContractGCSPrefixed(t *testing.T) {
	srv := gcsserver.Start(t)
	bucket := srv.NewBucket(t)
	u, err := url.Parse(bucket)
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.PoolURL(u.Host, "pools/"+filepath.Base(t.Name())))
	})
}

func TestContractAzure(t *testing.T) {
	srv := azureserver.Start(t)
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.NewBucket(t))
	})
}

func TestContractAzurePrefixed(t *testing.T) {
	srv := azureserver.Start(t)
	bucket := srv.NewBucket(t)
	u, err := url.Parse(bucket)
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.RunContractTests(t, func(t *testing.T) objstore.Store {
		return open(t, &objstore.Opener{}, srv.PoolURL(u.Host, "pools/"+filepath.Base(t.Name())))
	})
}
