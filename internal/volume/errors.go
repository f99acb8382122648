package volume

import "errors"

var (
	// ErrNoPool: the URL holds no urldisk pool (run `urldisk pool init`).
	ErrNoPool = errors.New("no urldisk pool at this URL")
	// ErrNotFound: no volume of that name in the pool.
	ErrNotFound = errors.New("volume not found")
	// ErrExists: a volume of that name already exists.
	ErrExists = errors.New("volume already exists")
	// ErrNoConditionalCreate: the pool's store does not honour
	// create-if-absent, so a single writer cannot be guaranteed.
	ErrNoConditionalCreate = errors.New("object store does not support conditional create; read-write attach refused")
	// ErrInvalid: bad arguments (size, block size, name).
	ErrInvalid = errors.New("invalid argument")
)
