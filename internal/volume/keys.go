package volume

import (
	"context"
	"errors"
	"fmt"

	"github.com/urldisk/urldisk/internal/format"
)

// KeySource returns the user's key-encryption key (a key file, an
// environment variable, a command's output). The pool asks it only when
// an encrypted volume is created, opened, cloned or rekeyed, at most once
// per pool (a key command is not run again for every volume), so a pool
// of unencrypted volumes never needs a key.
type KeySource func(ctx context.Context) (*Key, error)

// Key is a key-encryption key: the user's secret that wraps the data key
// of every encrypted volume of a lineage. Callers above volume name it by
// this alias so that they never reach into the on-disk format.
type Key = format.KEK

// ParseKey parses a key-encryption key as a user supplies it: 32 raw
// bytes, 64 hex digits or base64 of 32 bytes, surrounding whitespace
// ignored. Errors never contain the material.
func ParseKey(b []byte) (*Key, error) { return format.ParseKEK(b) }

// kek returns the pool's KEK: ErrNoKey if no source was given.
func (p *Pool) kek(ctx context.Context) (*format.KEK, error) {
	if p.keys == nil {
		return nil, format.ErrNoKey
	}
	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	if p.key == nil {
		k, err := p.keys(ctx)
		if err != nil {
			return nil, fmt.Errorf("load key: %w", err)
		}
		if k == nil {
			return nil, format.ErrNoKey
		}
		p.key = k
	}
	return p.key, nil
}

// dataKey unwraps the data key of volume d: nil for an unencrypted
// volume; ErrNoKey or a *format.WrongKeyError (naming both fingerprints)
// when the pool's key cannot open it. Called before a volume serves any
// byte, so a wrong key fails the attach instead of every read.
func (p *Pool) dataKey(ctx context.Context, d *format.VolumeDesc) (*format.DataKey, error) {
	if d.Encryption == nil {
		return nil, nil
	}
	kek, err := p.kek(ctx)
	if errors.Is(err, format.ErrNoKey) {
		return nil, fmt.Errorf("volume %s: %w (pass --key-file, --key-command or $URLDISK_KEY; the volume's key has fingerprint %s)", d.Name, format.ErrNoKey, d.Encryption.KeyFingerprint)
	}
	if err != nil {
		return nil, err
	}
	dk, err := d.Encryption.Unwrap(kek)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", d.Name, err)
	}
	return dk, nil
}

// Rekey wraps the data key of the volume called name by newKEK instead of
// the pool's key, which must open it. It rewrites only the descriptor: no
// record changes, O(1) in the disk size. Clones carry their own wrapped
// copy of the lineage's data key and keep it: rekey each clone that the
// old key must stop opening.
//
// The store has no compare-and-swap, so the descriptor is overwritten and
// then read back: a concurrent rekey that won is reported as an error
// (both wrap the same data key, so no data is ever lost to the race; the
// descriptor just ends up under one of the two keys).
func (p *Pool) Rekey(ctx context.Context, name string, newKEK *format.KEK) (*format.VolumeDesc, error) {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	if d.Encryption == nil {
		return nil, fmt.Errorf("rekey %s: %w: the volume is not encrypted", name, ErrInvalid)
	}
	if _, err := p.dataKey(ctx, d); err != nil {
		return nil, fmt.Errorf("rekey %s: %w", name, err)
	}
	old, _ := p.kek(ctx) // dataKey succeeded, so it is there
	enc, err := d.Encryption.Rewrap(old, newKEK)
	if err != nil {
		return nil, fmt.Errorf("rekey %s: %w", name, err)
	}
	nd := *d
	nd.Encryption = enc
	b, err := format.EncodeDoc(format.KindVolume, &nd)
	if err != nil {
		return nil, err
	}
	if err := p.store.Put(ctx, format.VolumeKey(d.ID), b); err != nil {
		return nil, fmt.Errorf("rekey %s: write descriptor: %w", name, err)
	}
	got, err := p.descriptor(ctx, d.ID)
	if err != nil {
		return nil, fmt.Errorf("rekey %s: read back descriptor: %w", name, err)
	}
	if got.Encryption == nil || *got.Encryption != *enc {
		return nil, fmt.Errorf("rekey %s: a concurrent rekey overwrote the descriptor (now under key %s)", name, fingerprintOf(got))
	}
	return got, nil
}

func fingerprintOf(d *format.VolumeDesc) string {
	if d.Encryption == nil {
		return "none"
	}
	return d.Encryption.KeyFingerprint
}
