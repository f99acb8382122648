// Package e2evm holds end-to-end tests that boot real Linux VMs (qemu,
// TCG or KVM) whose root filesystem is a urldisk volume served over NBD.
// The pieces (kernel, root filesystem, qemu command) are in
// internal/testutil/vmimage.
package e2evm
