package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volume"
)

type createOptions struct {
	size      string
	blockSize string
	encrypt   bool
	compress  string
}

// Block sizes the volume format accepts (format.VolumeDesc.Validate).
const (
	minBlockSize = 512
	maxBlockSize = 1 << 20
)

// validate parses the flags into the volume to create.
func (o *createOptions) validate() (volume.CreateOptions, error) {
	if o.size == "" {
		return volume.CreateOptions{}, fmt.Errorf("create: --size is required (e.g. --size 10G)")
	}
	size, err := units.ParseSize(o.size)
	if err != nil {
		return volume.CreateOptions{}, fmt.Errorf("--size: %w", err)
	}
	// Parsed here rather than as a uint32 flag: units (4K) work, and 0 is
	// refused instead of meaning the default.
	bs, err := units.ParsePowerOfTwo(o.blockSize, minBlockSize, maxBlockSize)
	if err != nil {
		return volume.CreateOptions{}, fmt.Errorf("--block-size: %w", err)
	}
	switch o.compress {
	case "", "none", "lz4":
	default:
		return volume.CreateOptions{}, fmt.Errorf("--compress: %q is not a compression (want lz4 or none)", o.compress)
	}
	return volume.CreateOptions{Size: size, BlockSize: uint32(bs), Compression: o.compress}, nil
}

// runCreate creates the volume rawURL names (initialising its pool if
// needed).
func runCreate(ctx context.Context, g *globals, out io.Writer, rawURL string, co volume.CreateOptions) error {
	p, name, err := openVolumeURL(ctx, g, rawURL, true)
	if err != nil {
		return err
	}
	defer p.Close()
	d, err := p.Create(ctx, name, co)
	if err != nil {
		return err
	}
	printf(out, "created %s: %s (%d bytes), id %s\n", d.Name, units.FormatSize(d.Size), d.Size, d.ID)
	if d.Encryption != nil {
		printf(out, "encrypted: data key wrapped by key %s\n", d.Encryption.KeyFingerprint)
	}
	if d.Compression != "" {
		printf(out, "compressed: %s per 64 KiB frame\n", d.Compression)
	}
	return nil
}

func newCreateCommand(g *globals) *cobra.Command {
	o := &createOptions{}
	cmd := command("create URL --size SIZE", "Create an empty volume (the pool is initialised if needed)",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			co, err := o.validate()
			if err != nil {
				return err
			}
			co.Encrypt = o.encrypt
			return runCreate(ctx, g, out, args[0], co)
		})
	cmd.Flags().StringVar(&o.size, "size", "", "volume size, e.g. 10G, 512M (a multiple of the block size)")
	cmd.Flags().StringVar(&o.blockSize, "block-size", "4K", "block size: a power of two from 512 to 1M, e.g. 512, 4K, 64K")
	cmd.Flags().BoolVar(&o.encrypt, "encrypt", false, "seal every record with a random data key wrapped by the key from --key-file, --key-command or $URLDISK_KEY (clones inherit it)")
	cmd.Flags().StringVar(&o.compress, "compress", "none", "compress every 64 KiB frame: lz4 or none; --compress alone is lz4 (clones inherit it)")
	cmd.Flags().Lookup("compress").NoOptDefVal = "lz4"
	return cmd
}

func newLsCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := command("ls POOL", "List the volumes in a pool",
		exactArgs(1, "a pool URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return withPool(ctx, g, args[0], func(p *volume.Pool) error {
				vols, err := p.List(ctx)
				if err != nil {
					return err
				}
				return printListing(out, asJSON, vols, "NAME\tSIZE\tID\tCREATED\tPARENT", func(d *volume.Desc) string {
					parent := "-"
					if d.Parent != nil {
						parent = fmt.Sprintf("%s@%d", d.Parent.ID, d.Parent.Seq)
					}
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", d.Name, units.FormatSize(d.Size), d.ID, d.Created.Format(time.RFC3339), parent)
				})
			})
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newInfoCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := command("info URL", "Describe a volume: size, used bytes, records, epoch, writer, snapshots",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				in, err := p.Info(ctx, name)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(out, in)
				}
				printInfo(out, args[0], in)
				return nil
			})
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printInfo prints in, the volume at rawURL (shown redacted), for people.
func printInfo(w io.Writer, rawURL string, in *volume.Info) {
	printf(w, "volume:      %s\n", objstore.Redact(rawURL))
	printf(w, "id:          %s\n", in.ID)
	printf(w, "size:        %s (%d bytes)\n", units.FormatSize(in.Size), in.Size)
	printf(w, "block size:  %d\n", in.BlockSize)
	printf(w, "created:     %s\n", in.Created.Format(time.RFC3339))
	for i, a := range in.Lineage {
		what := "parent:     "
		if i > 0 {
			what = "  ancestor: "
		}
		name := a.Name
		if a.Gone {
			name = "(deleted)"
		}
		printf(w, "%s %s (%s) at seq %d\n", what, name, a.ID, a.Seq)
	}
	printf(w, "used:        %s mapped in %d extents\n", units.FormatSize(in.UsedBytes), in.Extents)
	printf(w, "records:     %d (%s stored, %s logical), seq %d..%d\n", in.Records, units.FormatSize(uint64(in.StoredBytes)), units.FormatSize(uint64(in.LogicalBytes)), in.FirstSeq, in.HeadSeq)
	if in.Encrypted {
		printf(w, "encryption:  xchacha20poly1305, data key wrapped by key %s\n", in.KeyFingerprint)
	} else {
		printf(w, "encryption:  off\n")
	}
	if in.Compression != "" {
		printf(w, "compression: %s\n", in.Compression)
	} else {
		printf(w, "compression: off\n")
	}
	printf(w, "epoch:       %d\n", in.Epoch)
	printf(w, "writer:      %s\n", describeWriter(in.Writer))
	printf(w, "snapshots:   %d (newest at seq %d)\n", in.Snapshots, in.SnapSeq)
	if !in.LastWrite.IsZero() {
		printf(w, "last record: %s\n", in.LastWrite.Format(time.RFC3339Nano))
	}
}

func newRmCommand(g *globals) *cobra.Command {
	return command("rm URL", "Remove a volume: its name at once, its objects at the next gc after the grace period",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				if err := p.Remove(ctx, name); err != nil {
					return err
				}
				printf(out, "removed %s; `urldisk gc` frees its objects after the grace period (records clones use stay)\n", name)
				return nil
			})
		})
}

// describeWriter says who holds the volume's epoch: the writer if it may
// still run, "none (last: ...)" once its process on this host has exited
// (an import, a stopped serve: the log records no detach).
func describeWriter(wi *volume.WriterInfo) string {
	if wi == nil {
		return "none yet"
	}
	s := wi.ID
	if wi.Host != "" {
		s = fmt.Sprintf("%s (host %s, pid %d, attached %s)", wi.ID, wi.Host, wi.PID, wi.Attached.Format(time.RFC3339))
	}
	switch {
	case wi.Running == nil:
		return s
	case *wi.Running:
		return s + ", running"
	default:
		return "none (last: " + s + ", exited)"
	}
}
