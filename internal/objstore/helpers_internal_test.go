package objstore

import (
	"context"
	"errors"
)

var bgCtx = context.Background()

func isExists(err error) bool { return errors.Is(err, ErrExists) }
