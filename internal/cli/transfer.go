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

// newProgress returns a byte progress bar writing to w when stderr is a
// terminal, else a silent one.
func newProgress(w io.Writer, total int64, what string) *progressbar.ProgressBar {
	if !isTerminal(os.Stderr) {
		return progressbar.DefaultBytesSilent(total, what)
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWriter(w),
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

// importOptions are import's arguments and flags.
type importOptions struct {
	file string // raw image to read
	url  string // volume URL (created if missing)
	size string // --size of a volume to create; "" for the file's size
	// sizeBytes is size parsed by validate (0: unset).
	sizeBytes uint64
}

// validate parses the flags before anything is opened, so a bad --size is
// refused whether or not the volume exists.
func (o *importOptions) validate() error {
	if o.size == "" {
		return nil
	}
	n, err := units.ParseSize(o.size)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("--size: a volume cannot be empty")
	}
	o.sizeBytes = n
	return nil
}

func newImportCommand(g *globals) *cobra.Command {
	o := &importOptions{}
	var cmd *cobra.Command // run reads its stderr, for the progress bar
	cmd = command("import FILE URL", "Copy a raw disk image into a volume (created if missing; holes and zeros stay unstored)",
		exactArgs(2, "a raw image file and a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			o.file, o.url = args[0], args[1]
			if err := o.validate(); err != nil {
				return err
			}
			return runImport(ctx, g, o, out, cmd.ErrOrStderr())
		})
	cmd.Flags().StringVar(&o.size, "size", "", "size of the volume to create (default: the file's size rounded up to 4 KiB)")
	return cmd
}

// runImport copies the raw image o.file into volume o.url, creating the
// volume if it is missing. Into an existing volume, the image's holes and
// zeros are written as zeros (the volume may hold older data there).
func runImport(ctx context.Context, g *globals, o *importOptions, stdout, stderr io.Writer) error {
	log := g.log
	f, err := os.Open(o.file)
	if err != nil {
		return fmt.Errorf("open import file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat import file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("import: %s is not a regular file", o.file)
	}
	fileSize := fi.Size()
	p, name, err := openVolumeURL(ctx, g, o.url, true)
	if err != nil {
		return err
	}
	defer p.Close()
	existed, err := importTarget(ctx, p, name, o, fileSize)
	if err != nil {
		return err
	}
	v, err := p.Open(ctx, name, volume.Options{Logger: oneShotLogger(log)})
	if err != nil {
		return err
	}
	bar := newProgress(stderr, fileSize, "import")
	err = importFile(ctx, f, fileSize, v, existed, bar)
	if cerr := v.Close(context.WithoutCancel(ctx)); err == nil {
		err = cerr
	}
	bar.Finish()
	if err != nil {
		return fmt.Errorf("import %s: %w", o.file, err)
	}
	printf(stdout, "imported %s (%s) into %s\n", o.file, units.FormatSize(uint64(fileSize)), name)
	return nil
}

// importTarget makes sure volume name can take fileSize bytes, creating it
// (o.sizeBytes, or the file's size rounded up to 4 KiB) if it is missing;
// it reports whether it existed.
func importTarget(ctx context.Context, p *volume.Pool, name string, o *importOptions, fileSize int64) (existed bool, err error) {
	size, err := p.HeadSize(ctx, name) // grown volumes: not the descriptor's size
	if err == nil {
		if size < uint64(fileSize) {
			return true, fmt.Errorf("import: %s (%d bytes) does not fit volume %s (%d bytes)", o.file, fileSize, name, size)
		}
		return true, nil
	}
	if !errors.Is(err, volume.ErrNotFound) {
		return false, err
	}
	size = uint64(fileSize+4095) &^ 4095
	if o.sizeBytes != 0 {
		size = o.sizeBytes
	}
	switch {
	case size < uint64(fileSize):
		return false, fmt.Errorf("import: --size %s is smaller than %s (%d bytes)", o.size, o.file, fileSize)
	case size == 0:
		return false, fmt.Errorf("import: %s is empty", o.file)
	}
	_, err = p.Create(ctx, name, volume.CreateOptions{Size: size})
	return false, err
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
	return nonZeroRuns(p, 64<<10, func(i, j int, zero bool) error {
		switch {
		case !zero:
			return v.WriteAt(ctx, p[i:j], off+int64(i))
		case zeroHoles:
			return v.WriteZeroes(ctx, off+int64(i), int64(j-i))
		}
		return nil
	})
}

// nonZeroRuns calls fn for each maximal run p[i:j] of granules that are all
// zero or all not, in order; the last granule may be short.
func nonZeroRuns(p []byte, granule int, fn func(i, j int, zero bool) error) error {
	for i := 0; i < len(p); {
		j := i
		zero := allZero(p[i:min(i+granule, len(p))])
		for j < len(p) && allZero(p[j:min(j+granule, len(p))]) == zero {
			j = min(j+granule, len(p))
		}
		if err := fn(i, j, zero); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// exportOptions are export's arguments and flags.
type exportOptions struct {
	url   string // volume URL, optionally URL@POINT
	file  string // output raw image
	force bool   // overwrite file if it exists
}

func newExportCommand(g *globals) *cobra.Command {
	var o exportOptions
	var cmd *cobra.Command // run reads its stderr, for the progress bar
	cmd = command("export URL FILE", "Copy a volume into a raw image file (sparse: only written ranges are allocated)",
		exactArgs(2, "a volume URL and a file"), func(ctx context.Context, out io.Writer, args []string) error {
			o.url, o.file = args[0], args[1]
			return runExport(ctx, g, o, out, cmd.ErrOrStderr())
		})
	cmd.Flags().BoolVar(&o.force, "force", false, "overwrite FILE if it exists")
	return cmd
}

// runExport copies volume o.url into the raw image o.file. The file is
// created first, so the commonest mistake (it exists) is reported before a
// pool is opened or a cache made; on any failure it is removed again.
func runExport(ctx context.Context, g *globals, o exportOptions, stdout, stderr io.Writer) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if o.force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	out, err := os.OpenFile(o.file, flags, 0o644)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("export: %s exists (use --force to overwrite)", o.file)
	}
	if err != nil {
		return fmt.Errorf("create export file: %w", err)
	}
	name, size, err := exportURL(ctx, g, o.url, out, stderr)
	if serr := out.Sync(); err == nil && serr != nil {
		err = fmt.Errorf("sync %s: %w", o.file, serr)
	}
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", o.file, cerr)
	}
	if err != nil {
		os.Remove(o.file)
		return err
	}
	printf(stdout, "exported %s (%s) to %s\n", name, units.FormatSize(uint64(size)), filepath.Clean(o.file))
	return nil
}

// exportURL attaches volume rawURL read-only and copies it into out; it
// returns the volume's name and size.
func exportURL(ctx context.Context, g *globals, rawURL string, out *os.File, stderr io.Writer) (string, int64, error) {
	log := g.log
	p, name, err := openVolumeURL(ctx, g, rawURL, false)
	if err != nil {
		return "", 0, err
	}
	defer p.Close()
	// A private cache makes readahead useful for this one pass. It is only
	// an optimisation: if it cannot be made (read-only or full $TMPDIR),
	// export reads everything from the store.
	vopts := volume.Options{ReadOnly: true, Logger: oneShotLogger(log)}
	c, cdir, err := openExportCache(log)
	if err != nil {
		log.Warn("export cache unusable; reading every block from the object store", "err", err)
	} else {
		defer os.RemoveAll(cdir)
		defer c.Close()
		vopts.Cache = c
	}
	v, err := p.Open(ctx, name, vopts)
	if err != nil {
		return "", 0, err
	}
	defer v.Close(context.WithoutCancel(ctx))
	if err := exportVolume(ctx, v, out, stderr); err != nil {
		return "", 0, fmt.Errorf("export %s: %w", name, err)
	}
	return name, v.Size(), nil
}

// exportGranule is the unit in which export looks for zeros inside mapped
// data: a filesystem block, so a zero page written as data still becomes a
// hole.
const exportGranule = 4 << 10

// exportVolume writes v into out, a new or truncated file, as a sparse raw
// image: out is sized to the volume (all hole), then only the volume's mapped ranges are read and
// written, so unmapped space costs neither a read nor an allocated block.
// The progress bar counts mapped bytes, the work actually done.
func exportVolume(ctx context.Context, v *volume.Volume, out *os.File, stderr io.Writer) error {
	if err := out.Truncate(v.Size()); err != nil {
		return fmt.Errorf("size output: %w", err)
	}
	var ranges []volume.Range
	var total int64
	for r := range v.MappedRanges() {
		ranges = append(ranges, r)
		total += r.Len
	}
	bar := newProgress(stderr, total, "export")
	defer bar.Finish()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, r := range ranges {
		for off := r.Off; off < r.End(); off += transferBlock {
			n := min(transferBlock, r.End()-off)
			g.Go(func() error {
				buf := make([]byte, n)
				if err := v.ReadAt(gctx, buf, off); err != nil {
					return err
				}
				err := nonZeroRuns(buf, exportGranule, func(i, j int, zero bool) error {
					if zero {
						return nil
					}
					_, err := out.WriteAt(buf[i:j], off+int64(i))
					return err
				})
				bar.Add64(n)
				return err
			})
		}
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
