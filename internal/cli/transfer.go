package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volume"
)

const transferBlock = 4 << 20

// newProgress returns a byte progress bar on stderr when it is a terminal,
// else a silent one.
func newProgress(cmd *cobra.Command, total int64, what string) *progressbar.ProgressBar {
	if !isTerminal(os.Stderr) {
		return progressbar.DefaultBytesSilent(total, what)
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWriter(cmd.ErrOrStderr()),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionThrottle(100e6),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionFullWidth(),
	)
}

// dataRanges returns the data (non-hole) ranges of f, or one range covering
// it all where SEEK_DATA is unsupported.
func dataRanges(f *os.File, size int64) [][2]int64 {
	var out [][2]int64
	for off := int64(0); off < size; {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // only a hole remains
			}
			return [][2]int64{{0, size}}
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			return [][2]int64{{0, size}}
		}
		out = append(out, [2]int64{d, min(h, size)})
		off = h
	}
	return out
}

func newImportCommand(g *globals) *cobra.Command {
	var sizeFlag string
	cmd := &cobra.Command{
		Use:   "import FILE URL",
		Short: "Copy a raw disk image into a volume (created if missing; holes and zeros stay unstored)",
		Args:  exactArgs(2, "a raw image file and a volume URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("import: %s is not a regular file", args[0])
			}
			fileSize := fi.Size()
			p, name, err := openVolumeURL(ctx, g.log, args[1], true)
			if err != nil {
				return err
			}
			defer p.Store().Close()
			existed := true
			d, err := p.Resolve(ctx, name)
			if errors.Is(err, volume.ErrNotFound) {
				existed = false
				size := uint64(fileSize+4095) &^ 4095
				if sizeFlag != "" {
					if size, err = units.ParseSize(sizeFlag); err != nil {
						return fmt.Errorf("--size: %w", err)
					}
				}
				if size < uint64(fileSize) {
					return fmt.Errorf("import: --size %s is smaller than %s (%d bytes)", sizeFlag, args[0], fileSize)
				}
				if size == 0 {
					return fmt.Errorf("import: %s is empty", args[0])
				}
				if d, err = p.Create(ctx, name, volume.CreateOptions{Size: size}); err != nil {
					return err
				}
			} else if err != nil {
				return err
			}
			if d.Size < uint64(fileSize) {
				return fmt.Errorf("import: %s (%d bytes) does not fit volume %s (%d bytes)", args[0], fileSize, name, d.Size)
			}
			v, err := p.Open(ctx, name, volume.Options{Logger: g.log})
			if err != nil {
				return err
			}
			bar := newProgress(cmd, fileSize, "import")
			err = importFile(ctx, f, fileSize, v, existed, bar)
			if cerr := v.Close(context.WithoutCancel(ctx)); err == nil {
				err = cerr
			}
			bar.Finish()
			if err != nil {
				return fmt.Errorf("import %s: %w", args[0], err)
			}
			printf(cmd.OutOrStdout(), "imported %s (%s) into %s\n", args[0], units.FormatSize(uint64(fileSize)), name)
			return nil
		},
	}
	cmd.Flags().StringVar(&sizeFlag, "size", "", "size of the volume to create (default: the file's size rounded up to 4 KiB)")
	return cmd
}

func importFile(ctx context.Context, f *os.File, size int64, v *volume.Volume, zeroHoles bool, bar *progressbar.ProgressBar) error {
	buf := make([]byte, transferBlock)
	var done int64
	zero := func(from, to int64) error {
		if zeroHoles && to > from {
			return v.WriteZeroes(ctx, from, to-from)
		}
		return nil
	}
	for _, r := range dataRanges(f, size) {
		if err := zero(done, r[0]); err != nil {
			return err
		}
		for off := r[0]; off < r[1]; {
			n := min(int64(len(buf)), r[1]-off)
			if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				return err
			}
			if err := writeNonZero(ctx, v, buf[:n], off, zeroHoles); err != nil {
				return err
			}
			off += n
			bar.Set64(off)
		}
		done = r[1]
	}
	if err := zero(done, v.Size()); err != nil {
		return err
	}
	return v.Flush(ctx)
}

// writeNonZero writes the runs of p that are not all zeros (in 64 KiB
// granules); zero runs are skipped, or written as zero extents if zeroHoles.
func writeNonZero(ctx context.Context, v *volume.Volume, p []byte, off int64, zeroHoles bool) error {
	const granule = 64 << 10
	for i := 0; i < len(p); {
		j := i
		zero := allZero(p[i:min(i+granule, len(p))])
		for j < len(p) && allZero(p[j:min(j+granule, len(p))]) == zero {
			j = min(j+granule, len(p))
		}
		var err error
		switch {
		case !zero:
			err = v.WriteAt(ctx, p[i:j], off+int64(i))
		case zeroHoles:
			err = v.WriteZeroes(ctx, off+int64(i), int64(j-i))
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

func newExportCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "export URL FILE",
		Short: "Copy a volume into a raw image file (sparse: unwritten ranges stay holes)",
		Args:  exactArgs(2, "a volume URL and a file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, name, err := openVolumeURL(ctx, g.log, args[0], false)
			if err != nil {
				return err
			}
			defer p.Store().Close()
			// A private cache makes readahead useful for this one pass. It
			// is only an optimisation: if it cannot be made (read-only or
			// full $TMPDIR), export reads everything from the store.
			vopts := volume.Options{ReadOnly: true, Logger: g.log}
			c, cdir, err := openExportCache(g.log)
			if err != nil {
				g.log.Warn("export cache unusable; reading every block from the object store", "err", err)
			} else {
				defer os.RemoveAll(cdir)
				defer c.Close()
				vopts.Cache = c
			}
			v, err := p.Open(ctx, name, vopts)
			if err != nil {
				return err
			}
			defer v.Close(ctx)
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			out, err := os.OpenFile(args[1], flags, 0o644)
			if err != nil {
				if errors.Is(err, os.ErrExist) {
					return fmt.Errorf("export: %s exists (use --force to overwrite)", args[1])
				}
				return fmt.Errorf("export: %w", err)
			}
			bar := newProgress(cmd, v.Size(), "export")
			err = exportVolume(ctx, v, out, bar)
			if serr := out.Sync(); err == nil {
				err = serr
			}
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			bar.Finish()
			if err != nil {
				os.Remove(args[1])
				return fmt.Errorf("export %s: %w", name, err)
			}
			printf(cmd.OutOrStdout(), "exported %s (%s) to %s\n", name, units.FormatSize(uint64(v.Size())), filepath.Clean(args[1]))
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite FILE if it exists")
	return cmd
}

func exportVolume(ctx context.Context, v *volume.Volume, out *os.File, bar *progressbar.ProgressBar) error {
	size := v.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for off := int64(0); off < size; off += transferBlock {
		g.Go(func() error {
			buf := make([]byte, min(transferBlock, size-off))
			if err := v.ReadAt(gctx, buf, off); err != nil {
				return err
			}
			if !allZero(buf) {
				if _, err := out.WriteAt(buf, off); err != nil {
					return err
				}
			}
			bar.Add64(int64(len(buf)))
			return nil
		})
	}
	return g.Wait()
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// openExportCache opens a private cache in a new temporary directory for one
// export pass; the caller closes it and removes dir.
func openExportCache(log *slog.Logger) (c *cache.Cache, dir string, err error) {
	dir, err = os.MkdirTemp("", "urldisk-export-")
	if err != nil {
		return nil, "", fmt.Errorf("create export cache dir: %w", err)
	}
	c, err = cache.Open(dir, 256<<20, cache.Options{Logger: log})
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("open export cache: %w", err)
	}
	return c, dir, nil
}
