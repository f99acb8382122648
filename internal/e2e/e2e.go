// Package e2e holds end-to-end tests of the urldisk binary: TestMain builds
// cmd/urldisk once, and each test runs `urldisk serve` as a subprocess and
// drives it with real NBD clients from Debian packages (nbdinfo, nbdcopy,
// qemu-img, qemu-io, fio's nbd engine, nbdfuse + losetup + ext4).
//
// The package has no non-test code. Its tests need those tools installed
// (scripts/install-test-deps.sh does it) and root for losetup and mount; a
// missing tool fails the test, naming the package to install: these tests
// never skip.
package e2e
