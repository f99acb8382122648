package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volref"
)

// StorageClass parameters the driver accepts. Keys under the CO's own
// prefix ("csi.storage.k8s.io/") are the sidecars' business and ignored.
const (
	// ParamPool is the pool URL (required), without credentials.
	ParamPool = "pool"
	// ParamCacheSize bounds the node's read cache of the volume
	// (units.ParseSize syntax; default 1G).
	ParamCacheSize = "cacheSize"

	coParamPrefix = "csi.storage.k8s.io/"
)

// Secret keys: static S3 credentials of the pool.
const (
	SecretAccessKeyID     = "accessKeyID"
	SecretSecretAccessKey = "secretAccessKey"
	SecretSessionToken    = "sessionToken"
)

const defaultCacheSize = "1G"

// params are a StorageClass's parameters, checked.
type params struct {
	pool      string // canonical pool URL
	cacheSize string // as given, checked by units.ParseSize
}

// parseParams checks a StorageClass's parameters: unknown keys are refused
// by name, so a typo does not silently give a default.
func parseParams(m map[string]string) (params, error) {
	p := params{cacheSize: defaultCacheSize}
	var unknown []string
	for k, v := range m {
		switch {
		case k == ParamPool:
			c, err := objstore.CanonicalURL(v)
			if err != nil {
				return params{}, status.Errorf(codes.InvalidArgument, "parameter %s: %v", ParamPool, err)
			}
			p.pool = c
		case k == ParamCacheSize:
			if _, err := units.ParseSize(v); err != nil {
				return params{}, status.Errorf(codes.InvalidArgument, "parameter %s: %v", ParamCacheSize, err)
			}
			p.cacheSize = v
		case strings.HasPrefix(k, coParamPrefix):
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return params{}, status.Errorf(codes.InvalidArgument, "unknown parameters %q (known: %s, %s)", unknown, ParamPool, ParamCacheSize)
	}
	if p.pool == "" {
		return params{}, status.Errorf(codes.InvalidArgument, "parameter %s (the pool URL) is required", ParamPool)
	}
	return p, nil
}

// credentials returns the S3 credentials in secrets for an s3:// pool
// (nil for other schemes, which take theirs from the driver's
// environment). Errors name the missing key, never a value.
func credentials(pool string, secrets map[string]string) (*objstore.S3Credentials, error) {
	if !strings.HasPrefix(pool, "s3://") {
		return nil, nil
	}
	c := &objstore.S3Credentials{
		AccessKeyID:     secrets[SecretAccessKeyID],
		SecretAccessKey: secrets[SecretSecretAccessKey],
		SessionToken:    secrets[SecretSessionToken],
	}
	var missing []string
	if c.AccessKeyID == "" {
		missing = append(missing, SecretAccessKeyID)
	}
	if c.SecretAccessKey == "" {
		missing = append(missing, SecretSecretAccessKey)
	}
	if len(missing) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "pool %s needs S3 credentials in the request's secrets: missing %s", objstore.Redact(pool), strings.Join(missing, ", "))
	}
	return c, nil
}

// volumeName maps a CO volume or snapshot name to a urldisk volume name or
// checkpoint label: itself when valid, else a stable hash of it (so
// CreateVolume stays idempotent by name).
func volumeName(coName string, valid func(string) error) string {
	if valid(coName) == nil {
		return coName
	}
	sum := sha256.Sum256([]byte(coName))
	return "csi-" + hex.EncodeToString(sum[:16])
}

// volumeID is the CSI id of volume name in pool: its canonical URL.
func volumeID(pool, name string) string {
	return volref.Ref{Pool: pool, Name: name}.URL()
}

// snapshotID is the CSI id of checkpoint label of volume name in pool.
func snapshotID(pool, name, label string) string {
	base, query, hasQuery := strings.Cut(pool, "?")
	s := base + "/" + name + "@" + label
	if hasQuery {
		s += "?" + query
	}
	return s
}

// errNoSuchID: an id this driver never made; for the CO the volume or
// snapshot does not exist.
var errNoSuchID = errors.New("not an id of this driver")

// parseVolumeID parses a volume id; errNoSuchID if it is not one.
func parseVolumeID(id string) (volref.Ref, error) {
	r, err := volref.ParseHead(id)
	if err != nil {
		return volref.Ref{}, fmt.Errorf("volume id %q: %w", objstore.Redact(id), errNoSuchID)
	}
	return r, nil
}

// parseSnapshotID parses a snapshot id; errNoSuchID if it is not one.
func parseSnapshotID(id string) (volref.Ref, error) {
	r, err := volref.Parse(id)
	if err != nil || r.Point.Label == "" {
		return volref.Ref{}, fmt.Errorf("snapshot id %q: %w", objstore.Redact(id), errNoSuchID)
	}
	return r, nil
}

// samePool refuses an id of another pool than the StorageClass's: it
// does not exist as far as this StorageClass is concerned.
func samePool(what string, r volref.Ref, pool string) error {
	if r.Pool != pool {
		return status.Errorf(codes.NotFound, "%s %s is in pool %s, not in this StorageClass's pool %s", what, r, objstore.Redact(r.Pool), objstore.Redact(pool))
	}
	return nil
}
