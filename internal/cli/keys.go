package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/spf13/cobra"

	"github.com/urldisk/urldisk/internal/volume"
)

// keyEnv names the environment variable that may hold the key-encryption
// key (hex or base64).
const keyEnv = "URLDISK_KEY"

// keyFlags say where a key-encryption key comes from: a file, a command's
// standard output (a KMS or vault client), or an environment variable.
type keyFlags struct {
	file, command string
}

func (k *keyFlags) register(cmd *cobra.Command, persistent bool, prefix, what string) {
	fs := cmd.Flags()
	if persistent {
		fs = cmd.PersistentFlags()
	}
	fs.StringVar(&k.file, prefix+"key-file", "", what+": a file holding 32 raw bytes, 64 hex digits or base64")
	fs.StringVar(&k.command, prefix+"key-command", "", what+": a shell command that prints it (e.g. a KMS or vault client)")
}

// source returns the key source the flags (or, if env is set and no flag
// is, that environment variable) name; nil if none.
func (k *keyFlags) source(flagPrefix, env string) volume.KeySource {
	switch {
	case k.file != "" && k.command != "":
		return func(context.Context) (*volume.Key, error) {
			return nil, fmt.Errorf("--%skey-file and --%skey-command both given; pick one", flagPrefix, flagPrefix)
		}
	case k.file != "":
		return func(context.Context) (*volume.Key, error) {
			b, err := os.ReadFile(k.file)
			if err != nil {
				return nil, fmt.Errorf("--%skey-file: %w", flagPrefix, err)
			}
			kek, err := volume.ParseKey(b)
			clear(b)
			if err != nil {
				return nil, fmt.Errorf("--%skey-file %s: %w", flagPrefix, k.file, err)
			}
			return kek, nil
		}
	case k.command != "":
		return func(ctx context.Context) (*volume.Key, error) {
			var out bytes.Buffer
			c := exec.CommandContext(ctx, "/bin/sh", "-c", k.command)
			c.Stdout, c.Stderr = &out, os.Stderr
			// The command's output is the key: never put it in an error.
			if err := c.Run(); err != nil {
				return nil, fmt.Errorf("--%skey-command: run %q: %w", flagPrefix, k.command, err)
			}
			kek, err := volume.ParseKey(out.Bytes())
			clear(out.Bytes())
			if err != nil {
				return nil, fmt.Errorf("--%skey-command %q output: %w", flagPrefix, k.command, err)
			}
			return kek, nil
		}
	case env != "" && os.Getenv(env) != "":
		return func(context.Context) (*volume.Key, error) {
			kek, err := volume.ParseKey([]byte(os.Getenv(env)))
			if err != nil {
				return nil, fmt.Errorf("$%s: %w", env, err)
			}
			return kek, nil
		}
	}
	return nil
}

// keySource is the key of every pool the command opens: --key-file,
// --key-command or $URLDISK_KEY.
func (g *globals) keySource() volume.KeySource { return g.keys.source("", keyEnv) }

func newRekeyCommand(g *globals) *cobra.Command {
	var nk keyFlags
	cmd := command("rekey URL --new-key-file FILE", "Wrap an encrypted volume's data key by a new key (O(1): only the descriptor changes)",
		exactArgs(1, "a volume URL"), func(ctx context.Context, out io.Writer, args []string) error {
			src := nk.source("new-", "")
			if src == nil {
				return errNoNewKey
			}
			newKEK, err := src(ctx)
			if err != nil {
				return err
			}
			return withVolume(ctx, g, args[0], func(p *volume.Pool, name string) error {
				d, err := p.Rekey(ctx, name, newKEK)
				if err != nil {
					return err
				}
				printf(out, "rekeyed %s: data key now wrapped by key %s (the old key no longer opens it; clones keep their own wrapping: rekey them too)\n", d.Name, d.Encryption.KeyFingerprint)
				return nil
			})
		})
	cmd.Long = `rekey replaces the key-encryption key of an encrypted volume: the volume's
data key is unwrapped with the current key (--key-file, --key-command or
$URLDISK_KEY) and wrapped by the new one. No record is rewritten. Clones
carry their own wrapped copy of the lineage's data key and are not changed:
rekey each clone the old key must stop opening.`
	nk.register(cmd, false, "new-", "the new key")
	return cmd
}

// errNoNewKey: rekey was not told the new key.
var errNoNewKey = errors.New("rekey: give the new key with --new-key-file or --new-key-command")
