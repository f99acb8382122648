package e2e

import (
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// TestRoundTripFile copies a random 256 MiB image into a volume of a
// file:// pool with qemu-img convert, reads it back with nbdcopy, then reads
// it again from a new serve whose cache starts empty (as on another host).
func TestRoundTripFile(t *testing.T) {
	vol := volURL(filePool(t), "rt")
	createVolume(t, vol, "256M")
	roundTrip(t, vol, 256<<20)
}

// TestRoundTripS3 is TestRoundTripFile on a real S3 server (versitygw) with
// a 64 MiB volume created by serve --create.
func TestRoundTripS3(t *testing.T) {
	srv := s3server.Start(t) // sets the AWS environment serve inherits
	vol := volURL(srv.URL, "rt")
	roundTrip(t, vol, 64<<20, "--create", "--size", "64M")
}

func roundTrip(t *testing.T, vol string, size int, serveArgs ...string) {
	src, sum := randomImage(t, t.TempDir(), size)
	s := startServe(t, append([]string{vol}, serveArgs...)...)
	uri := s.URI("rt")
	mustRun(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	if got := fileSHA(t, copyOut(t, uri)); got != sum {
		t.Fatal("image read back with nbdcopy differs from the one written with qemu-img convert")
	}
	// qemu-img compare reads through qemu's NBD client.
	mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)

	s.StopAndDropCache()
	if strings.Contains(s.Stderr(), "level=ERROR") {
		t.Errorf("serve logged errors:\n%s", s.Stderr())
	}

	s2 := startServe(t, vol)
	if got := fileSHA(t, copyOut(t, s2.URI("rt"))); got != sum {
		t.Fatal("after restarting serve with an empty cache, the volume differs from the image written")
	}
	s2.StopOK()

	// urldisk info agrees on the size.
	info := mustRun(t, "urldisk", "info", vol)
	if !strings.Contains(info, "size:") || !strings.Contains(info, "block size:  4096") {
		t.Errorf("urldisk info:\n%s", info)
	}
}
