package cli

import (
	"fmt"
	"os"
	"strconv"
)

// socketModeValue is a --socket-mode flag: a unix socket's permission bits
// in octal.
type socketModeValue struct{ m *os.FileMode }

func (v *socketModeValue) String() string {
	if v.m == nil {
		return "0600"
	}
	return fmt.Sprintf("%04o", uint32(*v.m))
}

func (v *socketModeValue) Set(s string) error {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return fmt.Errorf("want octal permission bits such as 0600 or 0660, got %q", s)
	}
	if n&0o600 != 0o600 {
		return fmt.Errorf("mode %04o: the owner needs read and write (0600) on its own socket", n)
	}
	*v.m = os.FileMode(n)
	return nil
}

func (v *socketModeValue) Type() string { return "mode" }
